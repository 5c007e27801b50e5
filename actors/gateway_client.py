"""Client of the ingest gateway (actors/gateway.py) for agents outside the cluster: fetch the policy, send episodes.

Needs only urllib, numpy, pyarrow and torch (torch only for :func:`fetch_policy` and :func:`load_policy`): no Ray
and nothing else of dynaray, so this file can be copied onto a robot as it is. For HTTPS pass an ``https://`` URL
and, for a private CA or a self-signed gateway certificate, ``ca_file`` (or an ``ssl.SSLContext``); the server's
certificate and host name are always verified. Environment proxy settings are not used.

Every policy download carries the SHA-256 of its body (header ``X-Dynaray-Policy-SHA256``); it is checked before
the archive is loaded or saved. Uploads are idempotent: each carries an ``Idempotency-Key`` (the body's SHA-256
unless given), so :func:`send_episode` retries a 503/429 or a lost connection without storing anything twice.

Give the token through ``$DYNARAY_GATEWAY_TOKEN`` or a file readable by its owner only (:func:`load_token`), not
on a command line (``ps`` shows command lines to every user).

Usage::

    from actors.gateway_client import fetch_policy, fetch_spec, load_token, send_episode

    token = load_token()                                        # $DYNARAY_GATEWAY_TOKEN
    policy, spec = fetch_policy(url, token, path="policy.pt")   # a torch.jit module and the spec dict
    version = spec["policy"]["version"]
    obs, _ = env.reset()
    action = policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
    ...                                                         # collect one episode, one row per step
    send_episode(url, token, {"obs": obs_rows, "action": actions, "reward": rewards, "next_obs": next_obs_rows,
                              "terminated": terminated, "truncated": truncated}, policy_version=version)
    if fetch_spec(url, token)["policy"]["version"] != version:
        policy, spec = fetch_policy(url, token)

A saved policy loads without any dynaray code: ``torch.jit.load("policy.pt")`` (or :func:`load_policy` for the
spec as well); it maps obs float32 (B, O) to action float32 (B, A) in env units. Robots that run ONNX Runtime
instead: ``model, version = fetch_policy_bytes(url, token, format="onnx")``, then
``onnxruntime.InferenceSession(model).run(None, {"obs": obs})[0]``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import ssl
import stat
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import torch

__all__ = [
    "GatewayError",
    "episode_to_arrow",
    "fetch_policy",
    "fetch_policy_bytes",
    "fetch_spec",
    "load_policy",
    "load_token",
    "send_episode",
    "tls_context",
]

API_PREFIX = "/v1"
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
SPEC_FILE = "spec.json"
TOKEN_ENV = "DYNARAY_GATEWAY_TOKEN"
DIGEST_HEADER = "X-Dynaray-Policy-SHA256"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRIED_STATUSES = (408, 429, 503)
"""Answers :func:`send_episode` retries (with the same idempotency key), besides a lost connection."""
MAX_RETRY_WAIT_S = 30.0
VECTOR_COLUMNS = ("obs", "action", "next_obs")
COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
DEFAULT_TIMEOUT_S = 60.0
"""Timeout of spec and policy requests."""
UPLOAD_TIMEOUT_S = 600.0
"""Timeout of an upload: the gateway answers once replay has stored the episode, and replay holds inserts back
while the learners catch up with their samples-per-insert ratio."""
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


class GatewayError(RuntimeError):
    """The gateway refused a request, or could not be reached (``status`` None).

    Attributes:
        status: the HTTP status (401, 400, 413, 503, ...), or None when no answer came.
        error: the gateway's error text.
        column: the upload column at fault (400 on a bad column), else None.
        payload: the whole JSON answer (``limit`` of a 413, for instance).
        retry_after: the answer's ``Retry-After`` header (503, 429), else None.
    """

    def __init__(
        self,
        method: str,
        url: str,
        status: int | None,
        error: str,
        payload: Mapping[str, Any] | None = None,
        retry_after: str | None = None,
    ):
        self.status = status
        self.error = error
        self.payload = dict(payload or {})
        self.retry_after = retry_after
        self.column = self.payload.get("column")
        what = "no answer" if status is None else f"{status}"
        super().__init__(f"gateway: {method} {url} -> {what}: {error}")


def tls_context(ca_file: str | os.PathLike | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the gateway's certificate and host name: against ``ca_file`` (PEM: a
    private CA, or the gateway's self-signed certificate) when given, else against the system's CAs."""
    context = ssl.create_default_context(cafile=None if ca_file is None else os.fspath(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def load_token(path: str | os.PathLike | None = None) -> str:
    """The bearer token: the first line of ``path`` (a file its owner only may read: mode 0600), else
    ``$DYNARAY_GATEWAY_TOKEN``.

    Raises:
        ValueError: no token, an empty file, or a file that group or others may read.
    """
    if path is not None:
        path = os.fspath(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise ValueError(f"token file {path!r} has mode {mode:04o}: expected 0600 or stricter (chmod 600 {path})")
        with open(path, encoding="ascii") as handle:
            token = handle.readline().strip()
        if not token:
            raise ValueError(f"token file {path!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ValueError(f"no token: set ${TOKEN_ENV} or give a token file")
    return token


def _opener(ssl_context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context or tls_context())
    )


def _request(
    method: str,
    url: str,
    token: str,
    timeout: float,
    body: bytes | None = None,
    content_type: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[bytes, Any]:
    """Body and headers of a 2xx answer; raises :class:`GatewayError` for anything else."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, application/octet-stream",
               **(extra_headers or {})}
    if content_type is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with _opener(ssl_context).open(request, timeout=timeout) as response:
            return response.read(), response.headers
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw)
            error = str(payload["error"])
        except (ValueError, KeyError, TypeError):
            payload, error = {}, raw.decode("utf-8", "replace").strip() or str(exc.reason)
        raise GatewayError(method, url, exc.code, error, payload, exc.headers.get("Retry-After")) from None
    except urllib.error.URLError as exc:
        raise GatewayError(method, url, None, f"cannot reach the gateway ({exc.reason})") from exc
    except (OSError, TimeoutError) as exc:
        raise GatewayError(method, url, None, f"connection failed ({type(exc).__name__}: {exc})") from exc


def _endpoint(url: str, name: str) -> str:
    return f"{url.rstrip('/')}{API_PREFIX}/{name}"


def fetch_spec(
    url: str,
    token: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """``GET /v1/spec``: spaces, the newest policy version (``spec["policy"]["version"]``, None before the first),
    upload columns and limits."""
    context = ssl_context or (tls_context(ca_file) if ca_file is not None else None)
    raw, _ = _request("GET", _endpoint(url, "spec"), token, timeout, ssl_context=context)
    return json.loads(raw)


def fetch_policy_bytes(
    url: str,
    token: str,
    format: str = "torchscript",
    timeout: float = DEFAULT_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | os.PathLike | None = None,
) -> tuple[bytes, int]:
    """``GET /v1/policy?format=...``: the newest policy archive (``torchscript`` or ``onnx``) and its version,
    after checking the archive against the SHA-256 the gateway sent with it.

    Raises:
        GatewayError: 503 before the first policy is published, 401/403 for a wrong token or one without the
            ``download`` scope, a digest that is missing or does not match (``status`` 200), no answer, ...
    """
    context = ssl_context or (tls_context(ca_file) if ca_file is not None else None)
    endpoint = f"{_endpoint(url, 'policy')}?format={format}"
    raw, headers = _request("GET", endpoint, token, timeout, ssl_context=context)
    expected = (headers.get(DIGEST_HEADER) or "").strip().lower()
    actual = hashlib.sha256(raw).hexdigest()
    if not expected:
        raise GatewayError("GET", endpoint, 200, f"the answer has no {DIGEST_HEADER} header; not loading it")
    if not hmac.compare_digest(expected, actual):
        raise GatewayError("GET", endpoint, 200, f"policy archive of {len(raw)} bytes has SHA-256 {actual}, but the "
                                                 f"gateway sent {expected}: corrupted on the way; not loading it")
    return raw, int(headers.get("X-Dynaray-Policy-Version", -1))


def load_policy(source: bytes | str | os.PathLike) -> tuple["torch.jit.ScriptModule", dict[str, Any]]:
    """A TorchScript policy archive (bytes or a file path) as a torch.jit module and the spec stored inside it.

    Only load archives whose digest was checked (:func:`fetch_policy` does): loading TorchScript runs its code.
    """
    import torch

    extra = {SPEC_FILE: ""}
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        module = torch.jit.load(handle, map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[SPEC_FILE])


def fetch_policy(
    url: str,
    token: str,
    path: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | os.PathLike | None = None,
) -> tuple["torch.jit.ScriptModule", dict[str, Any]]:
    """``GET /v1/policy``: the newest policy as a TorchScript module and its spec (the version is
    ``spec["policy"]["version"]``), its SHA-256 checked before it is loaded; saved to ``path`` too when given
    (replaced atomically).

    Raises:
        GatewayError: 503 before the first policy is published, 401 for a wrong token, a digest mismatch, ...
    """
    raw, _ = fetch_policy_bytes(url, token, "torchscript", timeout, ssl_context, ca_file)
    module, spec = load_policy(raw)
    if path is not None:
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".policy-", delete=False) as tmp:
            tmp.write(raw)
        os.replace(tmp.name, path)
    return module, spec


def episode_to_arrow(episode: Mapping[str, Any], policy_version: int | None = -1) -> bytes:
    """One episode as an Arrow IPC stream of one record batch, in the gateway's upload schema.

    ``episode`` holds ``obs`` and ``next_obs`` (N, ...) , ``action`` (N, ...), ``reward``, ``terminated`` and
    ``truncated`` (N,), and optionally ``policy_version`` (N,); without that column every row gets
    ``policy_version`` (None counts as -1: not acted by a published policy). Floats are sent as float32 and vectors
    as ``fixed_size_list<float32>``, flattened row-major.

    Raises:
        ValueError: a column is missing, a vector column is not (N, ...), or the columns' row counts differ.
    """
    missing = [name for name in COLUMNS if name not in episode]
    if missing:
        raise ValueError(f"episode is missing column(s) {missing}; expected {list(COLUMNS)}")
    data = {name: np.asarray(episode[name]) for name in COLUMNS}
    if "policy_version" in episode:
        data["policy_version"] = np.asarray(episode["policy_version"], dtype=np.int64)
    rows = {name: (array.shape[0] if array.ndim else None) for name, array in data.items()}
    if len(set(rows.values())) != 1 or None in rows.values():
        raise ValueError(f"episode columns must have one row per step and equal row counts, got {rows}")
    n = rows["reward"]
    if "policy_version" not in data:
        data["policy_version"] = np.full(n, -1 if policy_version is None else int(policy_version), dtype=np.int64)
    arrays = []
    for name, array in data.items():
        if name in VECTOR_COLUMNS:
            if array.ndim < 2:
                raise ValueError(f"episode[{name!r}] has shape {array.shape}, expected (N, ...) with one row per step")
            flat = np.ascontiguousarray(array, dtype=np.float32).reshape(n, -1)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1]))
        elif name == "reward":
            arrays.append(pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(n)))
        elif name in ("terminated", "truncated"):
            arrays.append(pa.array(np.asarray(array, dtype=bool).reshape(n)))
        else:
            arrays.append(pa.array(array.reshape(n)))
    batch = pa.RecordBatch.from_arrays(arrays, names=list(data))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def send_episode(
    url: str,
    token: str,
    episode: Mapping[str, Any],
    policy_version: int | None = -1,
    timeout: float = UPLOAD_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
    ca_file: str | os.PathLike | None = None,
    idempotency_key: str | None = None,
    retries: int = 3,
) -> dict[str, Any]:
    """``POST /v1/episodes``: send one episode (see :func:`episode_to_arrow`); returns the gateway's answer
    (``rows``, ``episode_id``, ``writer_id``, ``first_seq``) once replay has stored it.

    The upload carries ``idempotency_key`` (default: the body's SHA-256), so sending it again stores nothing twice:
    a 503 (replay busy, too many uploads), 429 (rate limit), 408 or a lost connection is retried up to ``retries``
    times, after the answer's ``Retry-After`` (at most 30 s).

    Raises:
        ValueError: the episode cannot be encoded (missing column, unequal row counts).
        GatewayError: the gateway refused it (400 with ``column`` and the reason, 413 with ``payload["limit"]``,
            401, 403, or a 503/429 after the retries) or did not answer.
    """
    body = episode_to_arrow(episode, policy_version)
    key = idempotency_key or f"sha256:{hashlib.sha256(body).hexdigest()}"
    context = ssl_context or (tls_context(ca_file) if ca_file is not None else None)
    attempt = 0
    while True:
        try:
            raw, _ = _request("POST", _endpoint(url, "episodes"), token, timeout, body, ARROW_STREAM_TYPE, context,
                              {IDEMPOTENCY_HEADER: key})
            return json.loads(raw)
        except GatewayError as exc:
            if attempt >= retries or (exc.status is not None and exc.status not in RETRIED_STATUSES):
                raise
            time.sleep(_retry_wait(exc.retry_after, attempt))
            attempt += 1


def _retry_wait(retry_after: str | None, attempt: int) -> float:
    try:
        wait = float(retry_after) if retry_after is not None else 0.5 * 2 ** attempt
    except ValueError:
        wait = 0.5 * 2 ** attempt
    return min(max(wait, 0.0), MAX_RETRY_WAIT_S)
