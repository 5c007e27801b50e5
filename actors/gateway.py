"""Ingest gateway: external agents (real robots, any process outside the cluster) fetch the policy and send episodes.

A small HTTP server (stdlib ``http.server``, one thread per connection) in front of the replay client and the
weights client of one role. Every request needs ``Authorization: Bearer <token>``. Endpoints (docs/gateway.md):

- ``GET /v1/spec``: JSON: observation and action spaces, the newest policy version, the upload columns, limits.
- ``GET /v1/policy``: the newest policy as TorchScript (obs float32 (B, O) -> action float32 (B, A) in env units,
  deterministic), with the spec as ``spec.json`` inside the archive; runs in plain torch (or libtorch), no dynaray.
- ``POST /v1/episodes``: one episode as an Arrow IPC stream (columns obs, action, reward, next_obs, terminated,
  truncated, optionally policy_version). Everything is validated before anything is stored; the gateway then
  stamps episode_id, step, writer_id and seq, inserts into ``real`` and flushes, so 200 means stored.

Errors are JSON ``{"error": ...}`` (plus ``"column"`` for a bad column, ``"limit"`` for an oversized body):
401 bad token, 400 bad body, 411 no Content-Length, 413 body over ``max_body_bytes``, 404/405 unknown path or
method, 503 no policy yet / replay not answering / too many uploads at once. The server keeps serving after each.
Plain HTTP only: put TLS in a reverse proxy (docs/gateway.md).

An agent's loop (``actors.gateway_client``; examples/gateway_robot.py)::

    policy, spec = fetch_policy(url, token)                  # torch.jit module + spec dict
    while running:
        episode = drive(robot, policy)                       # dict of numpy arrays, one row per step
        send_episode(url, token, episode, policy_version=spec["policy"]["version"])
        if fetch_spec(url, token)["policy"]["version"] != spec["policy"]["version"]:
            policy, spec = fetch_policy(url, token)

The system layer's side::

    config = dataclasses.replace(config, token=resolve_token(config))
    gateway = IngestGateway(config, replay_client, WeightsClient(store, "policy"), make_policy, env_spec)
    host, port = gateway.address()
    ...
    gateway.stats()                                          # a GatewayStats
    gateway.close()

Row stamps (one ``replay.writers.RowStamper``): ``writer_id = replay.writers.new_writer_id("gateway", index)``
(fresh random incarnation bits each time a gateway object is made, so a restarted gateway is a new writer: its
``seq`` restarts at 0 without the shards taking its rows for duplicates, and its episode ids never repeat the old
ones); ``episode_id = replay.writers.episode_id(writer_id, n)`` for the n-th episode this gateway object stored;
``step`` 0, 1, ... within the episode; ``seq`` numbers rows consecutively from 0.
"""

from __future__ import annotations

import copy
import hmac
import io
import json
import logging
import math
import os
import secrets
import socket
import socketserver
import threading
import time
import warnings
from dataclasses import dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from actors.metrics import GatewayRecorder
from replay.client import ReplayTimeout
from replay.schema import ColumnSpec, SchemaError, arrow_schema, transition_columns, validate_chunk
from replay.writers import RowStamper

__all__ = [
    "API_PREFIX",
    "ARROW_STREAM_TYPE",
    "DeterministicActor",
    "GatewayConfig",
    "IngestGateway",
    "OPTIONAL_COLUMNS",
    "SPEC_FILE",
    "STAMPED_COLUMNS",
    "TOKEN_ENV",
    "UPLOAD_COLUMNS",
    "resolve_token",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
"""Prefix of every endpoint; a later, incompatible API gets a new one."""
TOKEN_ENV = "DYNARAY_GATEWAY_TOKEN"
"""Environment variable read for the token when ``GatewayConfig.token`` is empty."""
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
"""Content type of an uploaded episode (the Arrow IPC streaming format)."""
SPEC_FILE = "spec.json"
"""Name of the spec inside the TorchScript archive (``torch.jit.load(..., _extra_files={SPEC_FILE: ""})``)."""
TABLE = "real"
"""The replay table uploads go to."""
UPLOAD_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
"""Columns every upload must have."""
OPTIONAL_COLUMNS = ("policy_version",)
"""Columns an upload may have: ``policy_version`` (the version the agent acted with; -1, the default, for none)."""
STAMPED_COLUMNS = ("episode_id", "step", "writer_id", "seq")
"""Columns the gateway sets; an upload that has them is refused."""
MIN_TOKEN_CHARS = 16
"""Shortest token accepted."""
LINGER_S = 2.0
"""How long a connection whose request body was refused unread is drained before it is closed (so that the client
reads the answer instead of a connection reset)."""
RETRY_AFTER_S = 5
"""``Retry-After`` of 503 answers."""
_ACTION_BOUND_SLACK = 1e-5
"""Relative slack on the action bounds (float32 rounding of a policy's tanh output scaled to the bounds)."""
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@dataclass(frozen=True)
class GatewayConfig:
    """The ingest gateway: where it listens, who may talk to it, and how much it accepts. ``metadata["check"]``
    declares a field's constraint (checked by ``system.config``; ``secret``: the value is never shown)."""

    enabled: bool = False
    """Start the gateway with the run."""
    host: str = field(default="127.0.0.1", metadata={
        "check": lambda host: None if host.strip() else "a host name or IP address such as '127.0.0.1'"})
    """Address to listen on. The default accepts local connections only; anything else serves plain HTTP on the
    network: put a TLS reverse proxy in front (docs/gateway.md)."""
    port: int = field(default=0, metadata={"check": "in [0, 65535]", "note": "0: pick a free port"})
    """TCP port; 0 picks a free one (read it from ``IngestGateway.address()``)."""
    token: str = field(default="", metadata={
        "check": lambda token: token_problem(token) if token else None, "secret": True})
    """Bearer token every request must carry (at least 16 printable ASCII characters, no spaces); empty: read
    ``DYNARAY_GATEWAY_TOKEN``, and when that is empty too the system layer generates one (:func:`resolve_token`)."""
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"check": ">= 1024"})
    """Largest upload body accepted; a larger one is refused with 413 before it is read."""
    max_concurrent_uploads: int = field(default=4, metadata={"check": ">= 1"})
    """Uploads read and validated at once (each holds its body in memory); more are refused with 503."""
    insert_chunk_rows: int = field(default=50, metadata={"check": ">= 1"})
    """Rows per replay insert when an episode is stored (the replay rate limiter refuses inserts of more than
    ``2 * replay.error_buffer_steps / replay.num_shards`` rows; the system config checks it)."""
    weights_poll_s: float = field(default=1.0, metadata={"check": "> 0"})
    """Seconds between non-blocking polls for newer policy weights."""
    socket_timeout_s: float = field(default=30.0, metadata={"check": "> 0"})
    """A connection that sends nothing for this long (an idle keep-alive, a stalled upload) is closed."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs reserved for the gateway actor (read by system/)."""


def _redacted(value: Any) -> str:
    return f"<{len(value)} characters>" if isinstance(value, str) else f"<{type(value).__name__}>"


def token_problem(token: str) -> str | None:
    """What is wrong with ``token`` as a bearer token ("at least 16 ..."), or None if it is fine."""
    if len(token) < MIN_TOKEN_CHARS or not all("!" <= ch <= "~" for ch in token):
        return f"at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces, got {len(token)} characters"
    return None


def resolve_token(config: GatewayConfig) -> str:
    """The token to use: ``config.token``, else ``$DYNARAY_GATEWAY_TOKEN``, else a fresh ``secrets.token_urlsafe(32)``.

    Raises:
        ValueError: the environment variable holds an unusable token (too short, spaces, non-ASCII).
    """
    if config.token:
        return config.token
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        problem = token_problem(token)
        if problem:
            raise ValueError(f"${TOKEN_ENV}={_redacted(token)}: expected {problem}")
        return token
    return secrets.token_urlsafe(32)


class DeterministicActor(nn.Module):
    """The exported policy: obs float32 (B, O) -> action float32 (B, A) in env units.

    The tanh-Gaussian actor's deterministic action: ``tanh(mean) * action_scale + action_bias``, which is what
    ``Policy.act(obs, deterministic=True)`` computes. Built from a ``learners.sac.TanhGaussianActor``.
    """

    def __init__(self, trunk: nn.Module, action_scale: Tensor, action_bias: Tensor, obs_dim: int, act_dim: int):
        super().__init__()
        self.trunk = trunk
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.register_buffer("action_scale", action_scale.detach().clone().float())
        self.register_buffer("action_bias", action_bias.detach().clone().float())

    @classmethod
    def from_actor(cls, actor: nn.Module) -> "DeterministicActor":
        """A CPU copy of ``actor``'s trunk and action scaling (``TanhGaussianActor``)."""
        trunk = copy.deepcopy(actor.trunk).cpu().eval().requires_grad_(False)
        return cls(trunk, actor.action_scale.cpu(), actor.action_bias.cpu(), int(actor.obs_dim), int(actor.act_dim))

    def forward(self, obs: Tensor) -> Tensor:
        if obs.dim() != 2 or obs.size(1) != self.obs_dim:
            raise ValueError(
                "obs has shape " + str(obs.shape) + ", expected (B, " + str(self.obs_dim) + ") float32"
            )
        mean = self.trunk(obs.to(torch.float32)).narrow(1, 0, self.act_dim)
        return torch.tanh(mean) * self.action_scale + self.action_bias


def export_torchscript(actor: nn.Module, spec: Mapping[str, Any]) -> bytes:
    """TorchScript archive of ``actor``'s deterministic policy, with ``spec`` as JSON inside it (:data:`SPEC_FILE`).

    ``torch.jit`` is deprecated in recent torch in favour of ``torch.export``, but TorchScript is what loads in
    libtorch (C++) and in old and new torch alike, which is what a robot needs; its deprecation warning is
    silenced here.
    """
    module = DeterministicActor.from_actor(actor)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, buffer, _extra_files={SPEC_FILE: json.dumps(spec, sort_keys=True)})
    return buffer.getvalue()


class _HttpError(Exception):
    """An answer other than 200: status, message, and extra JSON fields / headers."""

    def __init__(
        self,
        status: int,
        message: str,
        column: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.payload: dict[str, Any] = {"error": message, **extra}
        if column is not None:
            self.payload["column"] = column
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class GatewayStats:
    """What :meth:`IngestGateway.stats` answers: counts since the gateway object was made."""

    requests: Mapping[int, int]
    """Requests answered, by HTTP status code."""
    episodes: int
    """Episodes stored."""
    rows: int
    """Rows stored."""
    bytes_received: int
    """Bytes of upload bodies read."""
    policy_downloads: int
    """Policies downloaded."""
    policy_exports: int
    """Policy versions exported to TorchScript (one per version downloaded)."""
    uploads_in_progress: int
    """Uploads being read or stored now."""
    policy_version: int | None
    """The newest policy version the gateway has seen (None: none published yet)."""
    writer_id: int
    """The writer id its rows carry."""
    address: tuple[str, int]
    """``(host, port)`` the server listens on."""


def _bad_column(column: str, reason: str) -> _HttpError:
    return _HttpError(400, f"column {column!r}: {reason}", column=column)


class IngestGateway:
    """HTTP endpoint for external agents: policy downloads and validated episode uploads into ``real``.

    Plain class (no Ray): the server runs in background threads from construction until :meth:`close`. On Ray,
    ``system/`` makes it an actor and calls :meth:`address`, :meth:`stats` and :meth:`close` remotely.

    Args:
        config: where to listen and the limits; ``config.token`` (or ``$DYNARAY_GATEWAY_TOKEN``) must be set.
        replay: a ``ReplayClient`` (or anything with ``insert(table, chunk, writer_id)`` and ``flush()``).
        weights: a ``WeightsClient`` for ``"policy"`` (``poll()`` -> new state or None, ``.version``).
        make_policy: builds a ``learners.sac.Policy`` (``load_state(state)``, ``.actor``) for the export.
        spec: the env's ``actors.envs.EnvSpec`` (observation and action shapes, action bounds).
        index: this gateway's number (0 <= index < 4096), encoded in its rows' ``writer_id``.
        metrics: makes the gateway's Prometheus recorder (``actors.metrics.GatewayRecorder``, the default, records
            nothing).

    Raises:
        ValueError: no token configured, or ``index`` out of range.
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
        metrics: Callable[[int], GatewayRecorder] = GatewayRecorder,
    ):
        token = config.token or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise ValueError(
                f"gateway.token is empty and ${TOKEN_ENV} is not set: expected a token "
                f"(resolve_token(config) generates one)"
            )
        problem = token_problem(token)
        if problem:
            raise ValueError(f"${TOKEN_ENV}={_redacted(token)}: expected {problem}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"gateway index={index!r}: expected an integer")
        self.config = config
        self.index = index
        self._stamper = RowStamper("gateway", index)
        self.writer_id = self._stamper.writer_id
        self._token = token.encode()
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

        self._weights_lock = threading.Lock()
        self._state: Any = None
        self._version: int | None = None
        self._export_lock = threading.Lock()
        self._export: tuple[int, bytes] | None = None
        self._store_lock = threading.Lock()
        self._uploads = threading.BoundedSemaphore(config.max_concurrent_uploads)
        self._stats_lock = threading.Lock()
        self._requests: dict[int, int] = {}
        self._counters = {
            "episodes": 0,
            "rows": 0,
            "bytes_received": 0,
            "policy_downloads": 0,
            "policy_exports": 0,
            "uploads_in_progress": 0,
        }
        self._metrics = metrics(index)  # Prometheus
        self._routes: dict[str, dict[str, Callable[[_Handler], None]]] = {
            f"{API_PREFIX}/spec": {"GET": self._get_spec},
            f"{API_PREFIX}/policy": {"GET": self._get_policy},
            f"{API_PREFIX}/episodes": {"POST": self._post_episode},
        }

        self._closed = threading.Event()
        self._poll_weights()
        self._server = _Server(config.host, config.port, self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="gateway-http", daemon=True
        )
        self._poll_thread = threading.Thread(target=self._poll_loop, name="gateway-weights", daemon=True)
        self._serve_thread.start()
        self._poll_thread.start()
        host, port = self.address()
        if not _is_loopback(host):
            logger.warning(
                "ingest gateway serves plain HTTP on %s:%d, reachable from the network: put a TLS reverse proxy in "
                "front of it (docs/gateway.md)", host, port,
            )
        logger.info("ingest gateway listening on %s (writer id %d)", self.url(), self.writer_id)

    # ------------------------------------------------------------------------------------------------ public

    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on (the port actually bound when ``config.port`` is 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def url(self) -> str:
        """``http://host:port`` of the server (IPv6 hosts in brackets)."""
        host, port = self.address()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def spec(self) -> dict[str, Any]:
        """What ``GET /v1/spec`` answers (the policy version is the newest this gateway has seen)."""
        with self._weights_lock:
            version = self._version
        return self._spec(version)

    def stats(self) -> GatewayStats:
        """Requests answered by status code, episodes and rows stored, bytes of upload bodies read, policy downloads
        and exports (one per version), uploads in progress, the newest policy version seen."""
        with self._stats_lock:
            requests, counters = dict(sorted(self._requests.items())), dict(self._counters)
        with self._weights_lock:
            version = self._version
        return GatewayStats(requests=requests, **counters, policy_version=version, writer_id=self.writer_id,
                            address=self.address())

    def close(self) -> None:
        """Stop serving (requests in progress finish on their own threads) and stop polling weights."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._serve_thread.join()
        self._poll_thread.join()

    def __enter__(self) -> "IngestGateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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

    def _policy_archive(self) -> tuple[int, bytes]:
        with self._weights_lock:
            state, version = self._state, self._version
        if state is None or version is None:
            raise _HttpError(
                503,
                "no policy published yet: the policy learner publishes its first weights once it has started "
                "learning; retry later (GET /v1/spec shows policy.version once there is one)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        with self._export_lock:
            if self._export is None or self._export[0] != version:
                if self._policy is None:
                    self._policy = self._make_policy()
                self._policy.load_state(state)
                self._export = (version, export_torchscript(self._policy.actor, self._spec(version)))
                self._count("policy_exports")
            return self._export

    # ------------------------------------------------------------------------------------------------ spec

    def _spec(self, version: int | None) -> dict[str, Any]:
        schema = arrow_schema(self._columns)
        obs_dim, act_dim = math.prod(self.obs_shape), math.prod(self.action_shape)

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
                "max_body_bytes": self.config.max_body_bytes,
                "rules": [
                    "one episode per request, at least one row, one row per step in order",
                    "vectors: fixed_size_list (or list) of float32 or float64, flattened row-major",
                    "floats finite, also as float32",
                    "terminated or truncated true on the last row only, not both",
                    "action within [action.low, action.high]",
                    "policy_version from -1 to policy.version",
                ],
            },
        }

    # ---------------------------------------------------------------------------------------------- requests

    def _authenticate(self, request: "_Handler") -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="dynaray-gateway"'}
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _HttpError(401, "missing bearer token: send the header 'Authorization: Bearer <token>'",
                             headers=challenge)
        if not hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), self._token):
            raise _HttpError(401, "wrong bearer token", headers=challenge)

    def _route(self, request: "_Handler") -> Callable[["_Handler"], None]:
        """The endpoint of a request, after its token (and, for uploads, its declared length) is checked."""
        self._authenticate(request)
        path = urlsplit(request.path).path
        methods = self._routes.get(path)
        if methods is None:
            endpoints = [f"{m} {p}" for p, ms in self._routes.items() for m in ms]
            raise _HttpError(404, f"no endpoint {path!r}; endpoints: {endpoints}")
        handler = methods.get(request.command)
        if handler is None:
            allowed = ", ".join(methods)
            raise _HttpError(405, f"{request.command} is not allowed on {path}; allowed: {allowed}",
                             headers={"Allow": allowed})
        if request.command == "POST":
            request.body_length = self._declared_length(request)
        return handler

    def _declared_length(self, request: "_Handler") -> int:
        limit = self.config.max_body_bytes
        if "Transfer-Encoding" in request.headers:
            raise _HttpError(
                411,
                f"Transfer-Encoding {request.headers['Transfer-Encoding']!r} is not accepted: send the body with a "
                f"Content-Length header (at most {limit} bytes)",
                limit=limit,
            )
        values = request.headers.get_all("Content-Length") or []
        if not values:
            raise _HttpError(411, f"Content-Length header missing: expected the body's size (at most {limit} bytes)",
                             limit=limit)
        if len(values) != 1 or not _is_count(values[0].strip()):
            raise _HttpError(400, f"Content-Length {values} is not one non-negative integer")
        length = int(values[0])
        if length > limit:
            raise _HttpError(
                413,
                f"body of {length} bytes is over the limit of {limit} bytes (gateway.max_body_bytes): send "
                f"shorter episodes or raise the limit",
                limit=limit,
            )
        if length == 0:
            raise _HttpError(400, f"empty body: expected one episode as an Arrow IPC stream ({ARROW_STREAM_TYPE})")
        return length

    def _get_spec(self, request: "_Handler") -> None:
        request.send_json(200, self.spec())

    def _get_policy(self, request: "_Handler") -> None:
        version, archive = self._policy_archive()
        self._count("policy_downloads")
        request.send_bytes(
            200,
            archive,
            "application/octet-stream",
            {
                "X-Dynaray-Policy-Version": str(version),
                "Content-Disposition": f'attachment; filename="policy-v{version}.pt"',
            },
        )

    def _post_episode(self, request: "_Handler") -> None:
        if not self._uploads.acquire(blocking=False):
            raise _HttpError(
                503,
                f"too many uploads at once (gateway.max_concurrent_uploads={self.config.max_concurrent_uploads}); "
                f"retry shortly",
                headers={"Retry-After": "1"},
            )
        self._count("uploads_in_progress")
        try:
            body = request.read_body()
            self._count("bytes_received", len(body))
            episode = self._parse_episode(body)
            del body
            result = self._store(episode)
        finally:
            self._count("uploads_in_progress", -1)
            self._uploads.release()
        request.send_json(200, result)

    # ------------------------------------------------------------------------------------------- validation

    def _parse_episode(self, body: bytes) -> dict[str, np.ndarray]:
        """The upload's columns as numpy arrays, each checked; raises a 400 ``_HttpError`` naming what is wrong."""
        expected = (
            f"expected one episode as an Arrow IPC stream ({ARROW_STREAM_TYPE}) with columns "
            f"{list(UPLOAD_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )
        if body.startswith(b"ARROW1"):
            raise _HttpError(400, f"body is an Arrow IPC file, not a stream: {expected}")
        try:
            with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
                table = reader.read_all()
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise _HttpError(400, f"body is not a readable Arrow IPC stream ({exc}): {expected}") from None

        names = table.schema.names
        for name in names:
            if names.count(name) > 1:
                raise _bad_column(name, f"appears {names.count(name)} times; expected once")
            if name in STAMPED_COLUMNS:
                raise _bad_column(name, f"is set by the gateway; do not send it ({expected})")
            if name not in UPLOAD_COLUMNS and name not in OPTIONAL_COLUMNS:
                raise _bad_column(name, f"unexpected column: {expected}")
        for name in UPLOAD_COLUMNS:
            if name not in names:
                raise _bad_column(name, f"missing: {expected}")
        rows = table.num_rows
        if rows == 0:
            raise _HttpError(400, "episode has no rows: expected at least one transition")

        episode = {name: self._column(table.column(name), self._specs[name], rows) for name in names}
        terminated, truncated = episode["terminated"], episode["truncated"]
        for name, flags in (("terminated", terminated), ("truncated", truncated)):
            early = np.flatnonzero(flags[:-1])
            if early.size:
                raise _bad_column(
                    name,
                    f"true at row {int(early[0])} of {rows}: an episode can end on its last row only (send one "
                    f"episode per request)",
                )
        if terminated[-1] and truncated[-1]:
            raise _HttpError(
                400, f"terminated and truncated are both true on the last row ({rows - 1}): expected at most one",
                column="truncated",
            )
        self._check_actions(episode["action"])
        if "policy_version" in episode:
            self._check_versions(episode["policy_version"])
        return episode

    def _column(self, column: pa.ChunkedArray, spec: ColumnSpec, rows: int) -> np.ndarray:
        """One column as a numpy array of shape ``(rows,) + spec.shape`` in the column's dtype (float32 for floats)."""
        if column.null_count:
            raise _bad_column(spec.name, f"{column.null_count} null value(s); expected none")
        arrow_type = column.type
        expected_type = arrow_schema(self._columns).field(spec.name).type
        wrong_type = _bad_column(spec.name, f"Arrow type {arrow_type}, expected {expected_type}")
        if spec.shape:
            size = spec.row_size
            if pa.types.is_fixed_size_list(arrow_type):
                if arrow_type.list_size != size:
                    raise _bad_column(
                        spec.name,
                        f"wrong shape: {arrow_type.list_size} values per row, expected {size} "
                        f"(shape {list(spec.shape)})",
                    )
            elif pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                wrong = np.flatnonzero(lengths != size)
                if wrong.size:
                    raise _bad_column(
                        spec.name,
                        f"wrong shape: {int(lengths[wrong[0]])} values in row {int(wrong[0])}, expected {size} "
                        f"(shape {list(spec.shape)}) in every row",
                    )
            else:
                raise wrong_type
            if not pa.types.is_floating(arrow_type.value_type):
                raise wrong_type
            values = pa.chunked_array([chunk.flatten() for chunk in column.chunks], type=arrow_type.value_type)
            if values.null_count:
                raise _bad_column(spec.name, f"{values.null_count} null value(s) inside its lists; expected none")
            array = values.to_numpy().reshape((rows,) + spec.shape)
        else:
            kind = spec.np_dtype.kind
            ok = {
                "b": pa.types.is_boolean,
                "f": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
                "i": pa.types.is_integer,
            }[kind](arrow_type)
            if not ok:
                raise wrong_type
            array = column.to_numpy()
        if spec.np_dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                array = array.astype(np.float32)
            finite = np.isfinite(array).reshape(rows, -1).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite)
                raise _bad_column(
                    spec.name,
                    f"non-finite values (NaN, inf, or outside the float32 range) in {bad.size} row(s), first at "
                    f"row {int(bad[0])}",
                )
        return np.ascontiguousarray(array)

    def _check_actions(self, action: np.ndarray) -> None:
        flat = action.reshape(len(action), -1)
        slack = _ACTION_BOUND_SLACK * np.maximum(self.action_high - self.action_low, 1.0)
        outside = (flat < self.action_low - slack) | (flat > self.action_high + slack)
        if outside.any():
            row, dim = (int(i) for i in np.argwhere(outside)[0])
            raise _bad_column(
                "action",
                f"{int(outside.any(axis=1).sum())} row(s) outside the action bounds, first at row {row}: value "
                f"{float(flat[row, dim])!r} at index {dim}, expected within [{float(self.action_low[dim])!r}, "
                f"{float(self.action_high[dim])!r}]",
            )

    def _check_versions(self, versions: np.ndarray) -> None:
        with self._weights_lock:
            newest = self._version
        low, high = int(versions.min()), int(versions.max())
        if low < -1:
            raise _bad_column("policy_version", f"value {low} is below -1 (-1: not acted by a published policy)")
        if high > (-1 if newest is None else newest):
            raise _bad_column(
                "policy_version",
                f"value {high} is newer than the newest published policy "
                f"({'none yet' if newest is None else newest}): send the version from GET /v1/spec or the policy",
            )

    # --------------------------------------------------------------------------------------------- storing

    def _store(self, episode: dict[str, np.ndarray]) -> dict[str, Any]:
        """Stamp the episode and insert it into ``real``, flushed: returns what was stored."""
        rows = len(episode["reward"])
        versions = episode.get("policy_version")
        if versions is None:
            versions = np.full(rows, -1, dtype=np.int64)
        upload = {name: episode[name] for name in UPLOAD_COLUMNS}
        with self._store_lock:
            try:  # the stamps are right by construction: check the rest before they are given out
                validate_chunk({**upload, "policy_version": versions.astype(np.int64)}, self._upload_columns)
            except SchemaError as exc:
                raise _HttpError(400, f"episode does not match table {TABLE!r}: {exc}") from None
            chunk = self._stamper.episode(upload, policy_version=versions)
            episode_id, first_seq = int(chunk["episode_id"][0]), int(chunk["seq"][0])
            step = self.config.insert_chunk_rows
            try:
                for start in range(0, rows, step):
                    self._replay.insert(TABLE, {k: v[start:start + step] for k, v in chunk.items()}, self.writer_id)
                self._replay.flush()
            except ReplayTimeout as exc:
                logger.warning("ingest gateway: replay did not acknowledge episode %d: %s", episode_id, exc)
                raise _HttpError(
                    503,
                    f"replay did not acknowledge episode {episode_id} ({exc}); some of its rows may be stored",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                ) from None
        with self._stats_lock:
            self._counters["episodes"] += 1
            self._counters["rows"] += rows
        return {
            "stored": True,
            "table": TABLE,
            "rows": rows,
            "episode_id": episode_id,
            "writer_id": self.writer_id,
            "first_seq": first_seq,
        }

    # ----------------------------------------------------------------------------------------------- stats

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            self._counters[name] += amount
        self._metrics.count(name, amount)

    def _answered(self, status: int) -> None:
        with self._stats_lock:
            self._requests[status] = self._requests.get(status, 0) + 1
        self._metrics.answered(status)


def _is_count(text: str) -> bool:
    """Whether ``text`` is a non-negative decimal integer in ASCII digits (``str.isdigit`` also takes '²')."""
    return text.isascii() and text.isdigit()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class _Server(ThreadingHTTPServer):
    """One thread per connection; ``gateway`` is reachable from every request handler."""

    daemon_threads = True

    def __init__(self, host: str, port: int, gateway: IngestGateway):
        self.gateway = gateway
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"gateway.host={host!r}: cannot resolve it ({exc})") from None
        self.address_family = infos[0][0]
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise OSError(
                f"gateway cannot listen on {host}:{port} ({exc}); check gateway.host and gateway.port "
                f"(0 picks a free port)"
            ) from None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed mid-answer (the client went away): one log line, not a traceback on stderr."""
        logger.info("ingest gateway: connection from %s failed", client_address[0], exc_info=True)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup of the host (slow or hanging without a resolver)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    """Turns each request into a call of the gateway's endpoint; every answer is sent by ``send_json/bytes``."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "dynaray-gateway/1"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.timeout = self.server.gateway.config.socket_timeout_s
        super().setup()

    def handle_one_request(self) -> None:
        self.headers = None  # set again by parse_request; a request line that fails to parse has none
        self.body_length: int | None = None
        self.body_read = False
        super().handle_one_request()

    # Every method goes through the gateway's routes, so an unknown path is 404 and a known one 405.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        """Answer an upload that will be refused (token, length) before the client sends its body."""
        try:
            self.server.gateway._route(self)
        except _HttpError as err:
            self.send_json(err.status, err.payload, err.headers)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        gateway = self.server.gateway
        try:
            handler = gateway._route(self)
            handler(self)
        except _HttpError as err:
            logger.info("ingest gateway: %s %s from %s -> %d: %s", self.command, self.path, self.client_address[0],
                        err.status, err.message)
            self.send_json(err.status, err.payload, err.headers)
        except TimeoutError:
            self.close_connection = True
            self.send_json(408, {"error": f"the body did not arrive within {gateway.config.socket_timeout_s} s"})
        except Exception as exc:
            logger.exception("ingest gateway: %s %s failed", self.command, self.path)
            self.send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    # ------------------------------------------------------------------------------------------------ body

    def read_body(self) -> bytes:
        """The request body (``body_length`` bytes, checked by the gateway's route)."""
        length = self.body_length
        assert length is not None
        self.body_read = True
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise _HttpError(400, f"body ended after {len(body)} of {length} bytes (its Content-Length)")
        return body

    def _unread_body(self) -> bool:
        headers = getattr(self, "headers", None)
        if headers is None or self.body_read:
            return False
        length = headers.get("Content-Length", "0").strip()
        return "Transfer-Encoding" in headers or not _is_count(length) or int(length) > 0

    def _linger(self) -> None:
        """Read and drop what the client still sends (for at most ``LINGER_S``), then let the connection close.

        Closing a socket with unread data makes the kernel send a reset, which can reach the client before it
        has read the answer; draining first lets it read the 401/413 it was sent.
        """
        deadline = time.monotonic() + LINGER_S
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:
            pass

    # ---------------------------------------------------------------------------------------------- answers

    def send_json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def send_bytes(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        unread = self._unread_body()
        if unread:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.server.gateway._answered(status)  # counted before the client can see the answer
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        if unread:
            self._linger()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by ``http.server`` itself (bad request line, unknown method, ...), as JSON."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.send_json(code, {"error": message or explain or phrase})

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("ingest gateway: %s " + format, self.address_string(), *args)
