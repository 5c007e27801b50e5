"""Ingest gateway: external agents (real robots, any process outside the cluster) fetch the policy and send episodes.

An aiohttp server, run by its own event loop in a thread of the gateway object, in front of the replay client and
the weights client of one role. aiohttp parses HTTP, applies the header limits and keep-alive timeout, and serves
TLS (Python's ssl); what is ours is authentication, the limits below, validation and storing. Every request needs
``Authorization: Bearer <token>`` (tokens and scopes: ``actors/gateway_tokens.py``). Endpoints (docs/gateway.md):

- ``GET /v1/spec``: JSON: observation and action spaces, the newest policy version, the upload columns, limits.
- ``GET /v1/policy[?format=torchscript|onnx]``: the newest policy (``actors/policy_export.py``), with its SHA-256
  in the header ``X-Dynaray-Policy-SHA256``; scope ``download``.
- ``POST /v1/episodes``: one episode as an Arrow IPC stream, validated in full before anything is stored
  (``actors/gateway_upload.py``), then stamped (episode_id, step, writer_id, seq), inserted into ``real`` and
  flushed, so 200 means stored; scope ``upload``. Idempotent: an ``Idempotency-Key`` (default: the body's SHA-256)
  seen before is answered with the first answer and stores nothing again.

Never a crash, never a 500 on input: every refusal is a 4xx JSON ``{"error": ...}`` with a one-line reason; an
exception that still escapes a handler is a logged, counted 500 and the server goes on.

Limits: a whole-request deadline (``request_timeout_s``: headers and body, however slowly they trickle in), a cap on
open connections (``max_connections``; unauthenticated ones are closed first), uploads at once (globally and per
token), rows per second per token, body bytes, decoded bytes and rows per episode.

An agent's loop (``actors.gateway_client``; examples/gateway_robot.py)::

    policy, spec = fetch_policy(url, token)                  # torch.jit module + spec dict
    while running:
        episode = drive(robot, policy)                       # dict of numpy arrays, one row per step
        send_episode(url, token, episode, policy_version=spec["policy"]["version"])
        if fetch_spec(url, token)["policy"]["version"] != spec["policy"]["version"]:
            policy, spec = fetch_policy(url, token)

The system layer's side::

    gateway = IngestGateway(config, replay_client, WeightsClient(store, "policy"), make_policy, env_spec,
                            tokens=[env_token() or new_token()], metrics=GatewayMetrics)
    gateway.url()
    gateway.stats()                                          # a GatewayStats
    gateway.close()

Row stamps, by a ``replay.writers.RowStamper``: ``writer_id = replay.writers.new_writer_id("gateway", index)``
(fresh random incarnation bits each
time a gateway object is made, so a restarted gateway is a new writer: its ``seq`` restarts at 0 without the shards
taking its rows for duplicates, and its episode ids never repeat the old ones); ``episode_id =
replay.writers.episode_id(writer_id, n)`` for the n-th episode this gateway object stored; ``step`` 0, 1, ... within
the episode; ``seq`` numbers rows consecutively from 0. An episode's ids are fixed when its first insert is made:
a retry after a replay timeout inserts only the chunks that were not yet handed to the replay client.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from actors.config import GatewayConfig
from actors.metrics import GatewayRecorder
from actors.gateway_tokens import (
    TOKEN_ENV, Token, TokenError, TokenSet, env_token, new_token, read_token_file,
)
from actors.gateway_upload import (
    ARROW_STREAM_TYPE, OPTIONAL_COLUMNS, STAMPED_COLUMNS, UPLOAD_COLUMNS, EpisodeParser, Refused,
)
from actors.policy_export import SPEC_FILE, DeterministicActor, export_onnx, export_torchscript
from replay.client import ReplayTimeout
from replay.schema import SchemaError, arrow_schema, transition_columns, validate_chunk
from replay.writers import RowStamper

__all__ = [
    "API_PREFIX",
    "ARROW_STREAM_TYPE",
    "DeterministicActor",
    "GatewayStats",
    "IngestGateway",
    "OPTIONAL_COLUMNS",
    "POLICY_DIGEST_HEADER",
    "SPEC_FILE",
    "STAMPED_COLUMNS",
    "TOKEN_ENV",
    "Token",
    "TokenError",
    "UPLOAD_COLUMNS",
    "env_token",
    "export_onnx",
    "export_torchscript",
    "new_token",
    "read_token_file",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
"""Prefix of every endpoint; a later, incompatible API gets a new one."""
TABLE = "real"
"""The replay table uploads go to."""
POLICY_FORMATS = {"torchscript": ("application/octet-stream", "pt"), "onnx": ("application/onnx", "onnx")}
"""``GET /v1/policy?format=...``: content type and file extension of each format."""
POLICY_DIGEST_HEADER = "X-Dynaray-Policy-SHA256"
"""Header of a policy download holding the hex SHA-256 of its body (the client checks it before loading)."""
IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Header naming an upload so that a retry of it stores nothing again (at most 128 printable ASCII characters)."""
REPLAYED_HEADER = "Idempotent-Replayed"
"""Header (``true``) of an answer repeated for a retried upload."""
MAX_KEY_CHARS = 128
LINGER_S = 2.0
"""How long the unread body of a refused upload is drained before its connection is closed (so that the client
reads the answer instead of a connection reset)."""
RETRY_AFTER_S = 5
"""``Retry-After`` of 503 answers for no policy yet and replay timeouts."""
WATCHDOG_S = 0.2
"""How often open connections are checked against the request deadline."""
TOKEN_KEY = web.RequestKey("token", Token)
"""The request's authenticated token."""
BODY_READ_KEY = web.RequestKey("body_read", bool)
"""Whether the request's body was read in full (a refused request whose body was not is answered, drained for
:data:`LINGER_S`, and its connection closed)."""


def server_ssl_context(config: GatewayConfig) -> ssl.SSLContext:
    """The TLS context of ``config.tls_cert`` / ``tls_key`` (TLS 1.2 or newer).

    Raises:
        ValueError: a file is missing or not a matching PEM certificate chain and key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"gateway.tls_cert={config.tls_cert!r}, gateway.tls_key={config.tls_key!r}: cannot load "
                         f"them as a PEM certificate chain and its key ({exc})") from None
    return context


# ---------------------------------------------------------------------------------------------------------------
# per-token limits and idempotency records


class _RowBudget:
    """Rows per second per token id: a bucket of one second's rows that may go into debt by one upload.

    An upload is admitted while its token's bucket is not in debt; its rows are taken once it is validated (so an
    upload is never refused after it was read), and the bucket refills at ``rate`` rows per second.
    """

    def __init__(self, rate: float):
        self.rate = float(rate)
        self._level: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _now(self, token_id: str) -> float:
        level, at = self._level.get(token_id, (self.rate, time.monotonic()))
        now = time.monotonic()
        return min(self.rate, level + (now - at) * self.rate)

    def wait_s(self, token_id: str) -> float:
        """Seconds until the token may upload again (0: now)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            level = self._now(token_id)
        return 0.0 if level >= 0 else -level / self.rate

    def spend(self, token_id: str, rows: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            self._level[token_id] = (self._now(token_id) - rows, time.monotonic())


@dataclass
class _Upload:
    """What the gateway remembers of one upload (by token id and idempotency key)."""

    digest: str
    state: str = "storing"
    """``storing`` (a request is on it), ``partial`` (replay timed out: a retry resumes it), ``stored``."""
    result: dict | None = None
    episode_id: int | None = None
    first_seq: int = 0
    rows: int = 0
    submitted: int = 0
    """Insert chunks handed to the replay client (a retry goes on from there)."""


class _Uploads:
    """Idempotency records, least recently used forgotten first (never one a request is on)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._records: OrderedDict[tuple[str, str], _Upload] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, key: tuple[str, str], digest: str) -> _Upload:
        """The record for ``key``, now marked ``storing``; raises :class:`Refused` if it cannot go on."""
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                self._records.move_to_end(key)
                if record.digest != digest:
                    raise Refused(422, f"{IDEMPOTENCY_HEADER} {key[1]!r} was used before with another body; expected "
                                       f"one key per episode")
                if record.state == "storing":
                    raise Refused(409, f"an upload with {IDEMPOTENCY_HEADER} {key[1]!r} is in progress; retry once "
                                       f"it is answered", headers={"Retry-After": "1"})
                if record.state == "partial":
                    record.state = "storing"
                return record
            record = self._records[key] = _Upload(digest)
            while len(self._records) > self.capacity:
                oldest = next((k for k, r in self._records.items() if r.state != "storing"), None)
                if oldest is None:
                    break
                del self._records[oldest]
            return record

    def end(self, key: tuple[str, str], record: _Upload, state: str | None) -> None:
        """Leave ``record`` in ``state``; None forgets it (nothing of it was stored)."""
        with self._lock:
            if state is None:
                if self._records.get(key) is record:
                    del self._records[key]
            else:
                record.state = state

    def __len__(self) -> int:
        return len(self._records)


@dataclass(frozen=True)
class GatewayStats:
    """What :meth:`IngestGateway.stats` answers: counts since the gateway object was made."""

    requests: Mapping[int, int]
    """Requests answered, by HTTP status code."""
    requests_by_token: Mapping[str, Mapping[int, int]]
    """Requests answered, by token id (``-``: no valid token) and HTTP status code. Never a token itself."""
    episodes: int
    """Episodes stored."""
    rows: int
    """Rows stored."""
    bytes_received: int
    """Bytes of upload bodies read."""
    policy_downloads: int
    """Policies downloaded."""
    policy_exports: int
    """Policy archives exported (one per version and format downloaded)."""
    uploads_in_progress: int
    """Uploads being read, validated or stored now."""
    idempotent_replays: int
    """Retried uploads answered with their first answer (nothing stored again)."""
    connections: int
    """Connections open now."""
    connections_timed_out: int
    """Connections closed because their request was not in by ``request_timeout_s``."""
    connections_evicted: int
    """Connections closed to stay within ``max_connections``."""
    internal_errors: int
    """Answers 500 (a bug; each is logged with its traceback)."""
    policy_version: int | None
    """The newest policy version the gateway has seen (None: none published yet)."""
    writer_id: int
    """The writer id its rows carry."""
    address: tuple[str, int]
    """``(host, port)`` the server listens on."""
    token_ids: tuple[str, ...]
    """Ids of the tokens accepted now."""


# ---------------------------------------------------------------------------------------------------------------
# connections


class _Connection(RequestHandler):
    """aiohttp's HTTP protocol for one connection, plus what the gateway's limits need to know about it."""

    def __init__(self, gateway: "IngestGateway", *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self.phase_started = time.monotonic()
        """When this connection opened, or its last answer was sent: the request deadline counts from here."""
        self.authenticated = False
        self.in_request = False
        """A request's headers have arrived and its handler runs (the deadline is then the handler's)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.phase_started = time.monotonic()
        self.gateway._opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.gateway._connection_lost(self)
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or a failure outside our handlers): a JSON error, connection closed."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was sent already; closing the connection")
        if status >= 500:
            self.gateway._count("internal_errors")
            logger.error("ingest gateway: request from %s failed", request.remote, exc_info=exc)
            text = "internal error (logged by the gateway)"
        else:
            text = " ".join(str(message or exc or "bad request").split())[:300]
            logger.info("ingest gateway: unparsable request from %s -> %d: %s", request.remote, status, text)
        response = _json({"error": f"bad HTTP request: {text}" if status < 500 else text}, status=status)
        response.force_close()
        self.gateway._answered(status, "-")
        return response


# ---------------------------------------------------------------------------------------------------------------
# the gateway


class IngestGateway:
    """HTTP(S) endpoint for external agents: policy downloads and validated episode uploads into ``real``.

    Plain class (no Ray): the server runs in a background thread with its own event loop from construction until
    :meth:`close`. On Ray, ``system/`` makes it an actor and calls :meth:`url`, :meth:`stats` and :meth:`close`.

    Args:
        config: where to listen, TLS, the token file and the limits.
        replay: a ``ReplayClient`` (or anything with ``insert(table, chunk, writer_id)`` and ``flush()``).
        weights: a ``WeightsClient`` for ``"policy"`` (``poll()`` -> new state or None, ``.version``).
        make_policy: builds a ``learners.sac.Policy`` (``load_state(state)``, ``.actor``) for the export.
        spec: the env's ``actors.envs.EnvSpec`` (observation and action shapes, action bounds).
        index: this gateway's number (0 <= index < 4096), encoded in its rows' ``writer_id``.
        tokens: tokens accepted besides those of ``config.token_file`` (``env_token()``, ``new_token()``).
        metrics: makes the gateway's Prometheus recorder (``actors.metrics.GatewayRecorder``, the default, records
            nothing).

    Raises:
        TokenError: no token at all, or an unusable token file.
        ValueError: ``index`` out of range, or unusable TLS files.
        OSError: the address cannot be listened on (port taken, unknown host); the message names the setting.
    """

    def __init__(
        self,
        config: GatewayConfig,
        replay: Any,
        weights: Any,
        make_policy: Callable[[], Any],
        spec: Any,
        index: int = 0,
        tokens: Iterable[Token] = (),
        metrics: Callable[[int], GatewayRecorder] = GatewayRecorder,
    ):
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"gateway index={index!r}: expected an integer")
        self.config = config
        self.index = index
        self.tokens = TokenSet(tokens, config.token_file)
        self._stamper = RowStamper("gateway", index)
        self.writer_id = self._stamper.writer_id
        self._replay = replay
        self._weights = weights
        self._make_policy = make_policy
        self._policy: Any = None
        self.obs_shape = tuple(int(d) for d in spec.obs_shape)
        self.action_shape = tuple(int(d) for d in spec.action_shape)
        act_dim = math.prod(self.action_shape)
        self.action_low = np.broadcast_to(np.asarray(spec.action_low, dtype=np.float32).reshape(-1), (act_dim,))
        self.action_high = np.broadcast_to(np.asarray(spec.action_high, dtype=np.float32).reshape(-1), (act_dim,))
        self._columns = transition_columns(self.obs_shape, self.action_shape)
        self._specs = {c.name: c for c in self._columns}
        self._upload_columns = [c for c in self._columns if c.name not in STAMPED_COLUMNS]
        self._parser = EpisodeParser(self._columns, self.action_low, self.action_high, config.max_episode_rows,
                                     config.max_decoded_bytes, config.max_abs_value)

        self._weights_lock = threading.Lock()
        self._state: Any = None
        self._version: int | None = None
        self._export_lock = threading.Lock()
        self._exports: dict[str, tuple[int, bytes, str]] = {}
        self._store_lock = threading.Lock()
        self._uploads = _Uploads(config.max_idempotency_keys)
        self._budget = _RowBudget(config.max_rows_per_s)
        self._slots_lock = threading.Lock()
        self._slots: dict[str, int] = {}
        self._stats_lock = threading.Lock()
        self._requests: dict[int, int] = {}
        self._by_token: dict[str, dict[int, int]] = {}
        self._counters = {
            "episodes": 0,
            "rows": 0,
            "bytes_received": 0,
            "policy_downloads": 0,
            "policy_exports": 0,
            "uploads_in_progress": 0,
            "idempotent_replays": 0,
            "connections_timed_out": 0,
            "connections_evicted": 0,
            "internal_errors": 0,
        }
        self._metrics = metrics(index)  # Prometheus
        self._connections: dict[_Connection, None] = {}
        self._ssl = server_ssl_context(config) if config.tls else None
        self._work = concurrent.futures.ThreadPoolExecutor(config.max_concurrent_uploads + 2,
                                                          thread_name_prefix="gateway-work")

        self._closed = threading.Event()
        self._poll_weights()
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._address: tuple[str, int] = ("", 0)
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._serve_thread = threading.Thread(target=self._serve, args=(started,), name="gateway-http", daemon=True)
        self._serve_thread.start()
        try:
            started.result()
        except BaseException:
            self._serve_thread.join()
            self._work.shutdown(wait=False)
            raise
        self._poll_thread = threading.Thread(target=self._poll_loop, name="gateway-weights", daemon=True)
        self._poll_thread.start()
        logger.info("ingest gateway listening on %s (writer id %d, tokens %s)", self.url(), self.writer_id,
                    self.tokens.ids())

    # ------------------------------------------------------------------------------------------------ public

    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on (the port actually bound when ``config.port`` is 0)."""
        return self._address

    def url(self) -> str:
        """``http(s)://host:port`` of the server (IPv6 hosts in brackets)."""
        host, port = self.address()
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def spec(self) -> dict[str, Any]:
        """What ``GET /v1/spec`` answers (the policy version is the newest this gateway has seen)."""
        with self._weights_lock:
            version = self._version
        return self._spec(version)

    def stats(self) -> GatewayStats:
        """Requests answered by status code and by token id, episodes and rows stored, bytes of upload bodies read,
        policy downloads and exports, uploads in progress, idempotent replays, connections open, timed out and
        evicted, internal errors, the newest policy version seen."""
        with self._stats_lock:
            requests = dict(sorted(self._requests.items()))
            by_token = {k: dict(sorted(v.items())) for k, v in sorted(self._by_token.items())}
            counters = dict(self._counters)
        with self._weights_lock:
            version = self._version
        return GatewayStats(requests=requests, requests_by_token=by_token, **counters,
                            connections=len(self._connections), policy_version=version, writer_id=self.writer_id,
                            address=self.address(), token_ids=tuple(self.tokens.ids()))

    def close(self) -> None:
        """Stop serving (open connections are closed) and stop polling weights."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            logger.warning("ingest gateway: stopping the server: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._serve_thread.join(10)
        self._poll_thread.join()
        self._work.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "IngestGateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ server

    def _serve(self, started: concurrent.futures.Future) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:
            started.set_exception(exc)
            self._loop.close()
            return
        started.set_result(None)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _start(self) -> None:
        config = self.config
        sock = _listen(config.host, config.port)
        app = web.Application(middlewares=[self._middleware], client_max_size=config.max_body_bytes)
        app.router.add_get(f"{API_PREFIX}/spec", self._get_spec, allow_head=False)
        app.router.add_get(f"{API_PREFIX}/policy", self._get_policy, allow_head=False)
        app.router.add_post(f"{API_PREFIX}/episodes", self._post_episode, expect_handler=self._expect)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        host, port = sock.getsockname()[:2]
        self._address = (str(host), int(port))
        handler_options = {"keepalive_timeout": config.socket_timeout_s, "lingering_time": LINGER_S,
                           "access_log": None, "auto_decompress": False}
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, self._runner.server, loop=loop, **handler_options), sock=sock, ssl=self._ssl,
            ssl_handshake_timeout=config.request_timeout_s if self._ssl is not None else None,
        )
        self._watchdog = loop.create_task(self._watch())

    async def _stop(self) -> None:
        self._watchdog.cancel()
        self._server.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abort()
        await self._runner.cleanup()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """Errors of the event loop outside handlers (a failed TLS handshake, a reset): one log line."""
        exc = context.get("exception")
        logger.info("ingest gateway: %s%s", context.get("message", "connection error"),
                    f" ({type(exc).__name__}: {exc})" if exc else "")

    async def _watch(self) -> None:
        """Close connections whose request did not arrive within ``request_timeout_s`` (slow or silent clients)."""
        timeout = self.config.request_timeout_s
        while True:
            await asyncio.sleep(WATCHDOG_S)
            now = time.monotonic()
            for connection in list(self._connections):
                if not connection.in_request and now - connection.phase_started > timeout:
                    self._drop(connection, "connections_timed_out")

    def _drop(self, connection: _Connection, counter: str) -> None:
        self._connections.pop(connection, None)
        if connection.transport is not None:
            connection.transport.abort()
        self._count(counter)

    def _opened(self, connection: _Connection) -> None:
        """A new connection: over ``max_connections``, close the oldest unauthenticated one, else the oldest idle
        one, else the new one."""
        self._connections[connection] = None
        if len(self._connections) <= self.config.max_connections:
            return
        others = [c for c in self._connections if c is not connection and not c.in_request]
        victim = next((c for c in others if not c.authenticated), None) or next(iter(others), connection)
        self._drop(victim, "connections_evicted")

    def _connection_lost(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)

    # ---------------------------------------------------------------------------------------------- requests

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable]) -> Any:
        """Every request: token first (401/403), then the endpoint; every refusal and failure becomes JSON."""
        connection = request.protocol if isinstance(request.protocol, _Connection) else None
        if connection is not None:
            connection.in_request = True
        token_id = "-"
        try:
            token = self._authenticate(request)
            token_id = token.id
            if connection is not None:
                connection.authenticated = True
            request[TOKEN_KEY] = token
            response = await handler(request)
        except web.HTTPException as exc:
            response = self._refusal(request, self._from_aiohttp(request, exc))
        except Refused as err:
            response = self._refusal(request, err)
        except Exception:
            logger.exception("ingest gateway: %s %s failed", request.method, request.path)
            self._count("internal_errors")
            response = _json({"error": "internal error (logged by the gateway)"}, status=500)
            response.force_close()
        finally:
            if connection is not None:
                connection.in_request = False
                connection.phase_started = time.monotonic()
        self._answered(response.status, token_id)
        return response

    def _refusal(self, request: web.Request, err: Refused) -> web.Response:
        level = logging.WARNING if err.status >= 500 else logging.INFO
        logger.log(level, "ingest gateway: %s %s from %s -> %d: %s", request.method, request.path, request.remote,
                   err.status, err.message)
        response = _json(err.payload, status=err.status, headers=err.headers)
        if err.status in (401, 403) or not request.get(BODY_READ_KEY, request.method not in ("POST", "PUT")):
            response.force_close()  # the body was not read: drained for LINGER_S, then the connection closes
        return response

    def _from_aiohttp(self, request: web.Request, exc: web.HTTPException) -> Refused:
        if isinstance(exc, web.HTTPNotFound):
            endpoints = [f"{route.method} {route.resource.canonical}" for route in request.app.router.routes()]
            return Refused(404, f"no endpoint {request.path!r}; endpoints: {endpoints}")
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            status = 405 if request.method in _KNOWN_METHODS else 501
            return Refused(status, f"{request.method} is not allowed on {request.path}; allowed: {allowed}",
                           headers={"Allow": allowed})
        return Refused(exc.status, " ".join((exc.text or exc.reason).split()))

    def _authenticate(self, request: web.Request) -> Token:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="dynaray-gateway"'}
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Refused(401, "missing bearer token: send the header 'Authorization: Bearer <token>'",
                          headers=challenge)
        token = self.tokens.check(credentials.strip())
        if token is None:
            raise Refused(401, "wrong bearer token", headers=challenge)
        return token

    @staticmethod
    def _require_scope(request: web.Request, scope: str) -> Token:
        token = request[TOKEN_KEY]
        if scope not in token.scopes:
            raise Refused(403, f"token {token.id!r} has scopes {sorted(token.scopes)}; this endpoint needs {scope!r}")
        return token

    # ------------------------------------------------------------------------------------------ endpoints

    async def _get_spec(self, request: web.Request) -> web.Response:
        return _json(self.spec(), headers={"Cache-Control": "no-store"})

    async def _get_policy(self, request: web.Request) -> web.Response:
        self._require_scope(request, "download")
        fmt = request.query.get("format", "torchscript")
        if fmt not in POLICY_FORMATS:
            raise Refused(400, f"format={fmt!r}: expected one of {list(POLICY_FORMATS)}")
        loop = asyncio.get_running_loop()
        version, archive, digest = await loop.run_in_executor(self._work, self._policy_archive, fmt)
        self._count("policy_downloads")
        content_type, extension = POLICY_FORMATS[fmt]
        return web.Response(body=archive, content_type=content_type, headers={
            "X-Dynaray-Policy-Version": str(version),
            "X-Dynaray-Policy-Format": fmt,
            POLICY_DIGEST_HEADER: digest,
            "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:",
            "Content-Disposition": f'attachment; filename="policy-v{version}.{extension}"',
            "Cache-Control": "no-store",
        })

    async def _expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: an upload that will be refused (token, scope, length, limits) is answered
        before its body is sent."""
        try:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise Refused(417, f"Expect {request.headers.get('Expect')!r}: only '100-continue' is understood")
            token = self._authenticate(request)
            request[TOKEN_KEY] = token
            self._require_scope(request, "upload")
            self._declared_length(request)
            self._check_rate(token)
        except Refused as err:
            self._answered(err.status, request[TOKEN_KEY].id if TOKEN_KEY in request else "-")
            return self._refusal(request, err)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    async def _post_episode(self, request: web.Request) -> web.Response:
        token = self._require_scope(request, "upload")
        length = self._declared_length(request)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not (0 < len(key) <= MAX_KEY_CHARS and all("!" <= ch <= "~" for ch in key)):
            raise Refused(400, f"{IDEMPOTENCY_HEADER} must be 1-{MAX_KEY_CHARS} printable ASCII characters without "
                               f"spaces, got {len(key)} characters")
        self._check_rate(token)
        with self._take_slot(token):
            body = await self._read_body(request, length)
            request[BODY_READ_KEY] = True
            self._count("bytes_received", len(body))
            digest = hashlib.sha256(body).hexdigest()
            record_key = (token.id, key or f"sha256:{digest}")
            record = self._uploads.begin(record_key, digest)
            if record.state == "stored":
                self._count("idempotent_replays")
                return _json(record.result, headers={REPLAYED_HEADER: "true"})
            loop = asyncio.get_running_loop()
            state: str | None = None
            try:
                result = await loop.run_in_executor(self._work, self._validate_and_store, body, token, record)
                state = "stored"
            except Refused as err:
                state = "partial" if err.status == 503 and record.submitted else None
                raise
            except BaseException:
                state = "partial" if record.submitted else None
                raise
            finally:
                self._uploads.end(record_key, record, state)
        return _json(result)

    def _declared_length(self, request: web.Request) -> int:
        limit = self.config.max_body_bytes
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise Refused(415, f"Content-Encoding {encoding!r} is not accepted: send the Arrow stream as it is "
                               f"(Arrow's own LZ4/ZSTD buffer compression is fine)")
        if "Transfer-Encoding" in request.headers:
            raise Refused(411, f"Transfer-Encoding {request.headers['Transfer-Encoding']!r} is not accepted: send "
                               f"the body with a Content-Length header (at most {limit} bytes)", limit=limit)
        length = request.content_length
        if length is None:
            raise Refused(411, f"Content-Length header missing: expected the body's size (at most {limit} bytes)",
                          limit=limit)
        if length > limit:
            raise Refused(413, f"body of {length} bytes is over the limit of {limit} bytes (gateway.max_body_bytes): "
                               f"send shorter episodes or raise the limit", limit=limit)
        if length == 0:
            raise Refused(400, f"empty body: expected one episode as an Arrow IPC stream ({ARROW_STREAM_TYPE})")
        return length

    def _check_rate(self, token: Token) -> None:
        wait = self._budget.wait_s(token.id)
        if wait > 0:
            raise Refused(429, f"token {token.id!r} is over its upload rate of {self.config.max_rows_per_s:g} rows/s "
                               f"(gateway.max_rows_per_s); retry in {wait:.1f} s",
                          headers={"Retry-After": str(max(1, math.ceil(wait)))})

    def _take_slot(self, token: Token) -> "_Slot":
        config = self.config
        with self._slots_lock:
            if sum(self._slots.values()) >= config.max_concurrent_uploads:
                raise Refused(503, f"too many uploads at once (gateway.max_concurrent_uploads="
                                   f"{config.max_concurrent_uploads}); retry shortly", headers={"Retry-After": "1"})
            if self._slots.get(token.id, 0) >= config.max_uploads_per_token:
                raise Refused(503, f"token {token.id!r} has {config.max_uploads_per_token} uploads in progress "
                                   f"(gateway.max_uploads_per_token); retry once one is answered",
                              headers={"Retry-After": "1"})
            self._slots[token.id] = self._slots.get(token.id, 0) + 1
        self._count("uploads_in_progress")
        return _Slot(self, token.id)

    def _release_slot(self, token_id: str) -> None:
        with self._slots_lock:
            self._slots[token_id] -= 1
        self._count("uploads_in_progress", -1)

    async def _read_body(self, request: web.Request, length: int) -> bytes:
        """The body, which must arrive within the request deadline and without a pause over ``socket_timeout_s``."""
        config = self.config
        connection = request.protocol if isinstance(request.protocol, _Connection) else None
        started = connection.phase_started if connection is not None else time.monotonic()
        deadline = started + config.request_timeout_s
        body = bytearray()
        while len(body) < length:
            wait = min(deadline - time.monotonic(), config.socket_timeout_s)
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(request.content.read(min(1 << 20, length - len(body))), wait)
            except asyncio.TimeoutError:
                if wait < config.socket_timeout_s:
                    raise Refused(408, f"the body did not arrive within {config.request_timeout_s:g} s of the "
                                       f"request's start (gateway.request_timeout_s): {len(body)} of {length} "
                                       f"bytes") from None
                raise Refused(408, f"the body did not arrive: {len(body)} of {length} bytes, then nothing for "
                                   f"{wait:g} s (gateway.socket_timeout_s)") from None
            except Exception as exc:  # the client went away or sent a broken body
                raise Refused(400, f"body ended after {len(body)} of {length} bytes ({type(exc).__name__})") from None
            if not data:
                raise Refused(400, f"body ended after {len(body)} of {length} bytes (its Content-Length)")
            body += data
        return bytes(body)

    # ----------------------------------------------------------------------------------------------- storing

    def _validate_and_store(self, body: bytes, token: Token, record: _Upload) -> dict[str, Any]:
        """Worker thread: parse and check the body, take its rows from the token's budget, store it."""
        with self._weights_lock:
            newest = self._version
        episode = self._parser.parse(body, newest)
        del body
        if record.episode_id is None:
            self._budget.spend(token.id, len(episode["reward"]))
        return self._store(episode, record)

    def _store(self, episode: dict[str, np.ndarray], record: _Upload) -> dict[str, Any]:
        """Stamp the episode and insert it into ``real``, flushed: returns what was stored.

        A new episode gets the next episode id and seq numbers; a retried one (``record`` left ``partial`` by a
        replay timeout) is stamped again with its own and inserts only the chunks the replay client has not been
        given yet (the client still holds the others and stores them, deduplicated by the shards, with the next
        flush). A new episode none of whose chunks reached the replay client gives its ids back.
        """
        rows = len(episode["reward"])
        versions = episode.get("policy_version")
        if versions is None:
            versions = np.full(rows, -1, dtype=np.int64)
        upload = {name: episode[name] for name in UPLOAD_COLUMNS}
        with self._store_lock:
            try:  # the stamps are right by construction: check the rest before they are given out
                validate_chunk({**upload, "policy_version": versions.astype(np.int64)}, self._upload_columns)
            except SchemaError as exc:
                raise Refused(400, f"episode does not match table {TABLE!r}: {exc}") from None
            fresh = record.episode_id is None
            if fresh:
                chunk = self._stamper.episode(upload, policy_version=versions)
                record.episode_id, record.first_seq = int(chunk["episode_id"][0]), int(chunk["seq"][0])
            else:
                chunk = self._stamper.episode_again(upload, versions, record.episode_id, record.first_seq)
            episode_id, first_seq = record.episode_id, record.first_seq
            step = self.config.insert_chunk_rows
            try:
                for i, start in enumerate(range(0, rows, step)):
                    if i < record.submitted:
                        continue
                    self._replay.insert(TABLE, {k: v[start:start + step] for k, v in chunk.items()}, self.writer_id)
                    record.submitted = i + 1
                self._replay.flush()
            except BaseException as exc:
                if fresh and record.submitted == 0:  # nothing handed to replay: the ids go back
                    self._stamper.take_back(rows)
                    record.episode_id = None
                if not isinstance(exc, ReplayTimeout):
                    raise
                logger.warning("ingest gateway: replay did not acknowledge episode %d: %s", episode_id, exc)
                raise Refused(
                    503,
                    f"replay did not acknowledge episode {episode_id} in time; retry the same upload (same body, "
                    f"same {IDEMPOTENCY_HEADER}) to complete it without storing any row twice",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from None
        result = {
            "stored": True,
            "table": TABLE,
            "rows": rows,
            "episode_id": episode_id,
            "writer_id": self.writer_id,
            "first_seq": first_seq,
        }
        record.result = result
        self._count("episodes")
        self._count("rows", rows)
        return result

    # ----------------------------------------------------------------------------------------------- weights

    def _poll_loop(self) -> None:
        while not self._closed.wait(self.config.weights_poll_s):
            self._poll_weights()

    def _poll_weights(self) -> None:
        try:
            state = self._weights.poll()
        except Exception as exc:
            logger.warning("ingest gateway: polling policy weights failed (%s: %s)", type(exc).__name__, exc)
            return
        if state is not None:
            with self._weights_lock:
                self._state, self._version = state, int(self._weights.version)

    def _policy_archive(self, fmt: str) -> tuple[int, bytes, str]:
        """Worker thread: ``(version, archive, sha256 hex)`` of the newest policy in ``fmt``, exported once per
        version and format."""
        with self._weights_lock:
            state, version = self._state, self._version
        if state is None or version is None:
            raise Refused(
                503,
                "no policy published yet: the policy learner publishes its first weights once it has started "
                "learning; retry later (GET /v1/spec shows policy.version once there is one)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        with self._export_lock:
            cached = self._exports.get(fmt)
            if cached is None or cached[0] != version:
                if self._policy is None:
                    self._policy = self._make_policy()
                self._policy.load_state(state)
                export = export_onnx if fmt == "onnx" else export_torchscript
                archive = export(self._policy.actor, self._spec(version))
                cached = self._exports[fmt] = (version, archive, hashlib.sha256(archive).hexdigest())
                self._count("policy_exports")
            return cached

    # ------------------------------------------------------------------------------------------------ spec

    def _spec(self, version: int | None) -> dict[str, Any]:
        schema = arrow_schema(self._columns)
        obs_dim, act_dim = math.prod(self.obs_shape), math.prod(self.action_shape)
        config = self.config

        def column(name: str) -> dict[str, Any]:
            spec = self._specs[name]
            return {"name": name, "arrow_type": str(schema.field(name).type), "shape": list(spec.shape),
                    "dtype": spec.dtype}

        return {
            "api": API_PREFIX.strip("/"),
            "table": TABLE,
            "observation": {"shape": list(self.obs_shape), "dtype": "float32"},
            "action": {
                "shape": list(self.action_shape),
                "dtype": "float32",
                "low": self.action_low.tolist(),
                "high": self.action_high.tolist(),
            },
            "policy": {
                "version": version,
                "path": f"{API_PREFIX}/policy",
                "format": "torchscript",
                "formats": {name: {"query": f"?format={name}", "content_type": content_type}
                            for name, (content_type, _) in POLICY_FORMATS.items()},
                "digest_header": POLICY_DIGEST_HEADER,
                "input": f"obs float32 (B, {obs_dim}): observations flattened row-major",
                "output": f"action float32 (B, {act_dim}) in env units, within [low, high]",
                "deterministic": True,
            },
            "upload": {
                "path": f"{API_PREFIX}/episodes",
                "content_type": ARROW_STREAM_TYPE,
                "columns": [column(name) for name in UPLOAD_COLUMNS],
                "optional_columns": [{**column(name), "default": -1} for name in OPTIONAL_COLUMNS],
                "set_by_gateway": list(STAMPED_COLUMNS),
                "max_body_bytes": config.max_body_bytes,
                "max_decoded_bytes": config.max_decoded_bytes,
                "max_episode_rows": config.max_episode_rows,
                "max_abs_value": config.max_abs_value,
                "max_rows_per_s": config.max_rows_per_s,
                "idempotency_header": IDEMPOTENCY_HEADER,
                "rules": [
                    "one episode per request, at least one row, one row per step in order",
                    "vectors: fixed_size_list (or list) of float32 or float64, flattened row-major",
                    "floats finite, also as float32, and obs, next_obs, reward within +-max_abs_value",
                    "terminated or truncated true on the last row only, not both",
                    "action within [action.low, action.high]",
                    "policy_version from -1 to policy.version",
                    "a retry with the same Idempotency-Key (default: the body's SHA-256) stores nothing again",
                ],
            },
        }

    # ----------------------------------------------------------------------------------------------- stats

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self._counters[name] += amount
        self._metrics.count(name, amount)

    def _answered(self, status: int, token_id: str) -> None:
        with self._stats_lock:
            self._requests[status] = self._requests.get(status, 0) + 1
            by_token = self._by_token.setdefault(token_id, {})
            by_token[status] = by_token.get(status, 0) + 1
        self._metrics.answered(status, token_id)


class _Slot:
    """An upload slot of one token, given back when the upload is answered."""

    def __init__(self, gateway: IngestGateway, token_id: str):
        self.gateway, self.token_id = gateway, token_id

    def __enter__(self) -> "_Slot":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.gateway._release_slot(self.token_id)


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer (``application/json``, UTF-8 without a charset parameter, as RFC 8259 has it)."""
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type="application/json",
                        headers=headers)


_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def _listen(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on ``host:port``; OSError naming the settings when that fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"gateway.host={host!r}: cannot resolve it ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(f"gateway cannot listen on {host}:{port} ({exc}); check gateway.host and gateway.port "
                      f"(0 picks a free port)") from None
    sock.setblocking(False)
    return sock
