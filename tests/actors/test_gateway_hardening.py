"""The ingest gateway against hostile and unlucky clients: fuzzed uploads, bombs, slow clients, retries, TLS,
token scopes and revocation, ONNX. In process on 127.0.0.1, no Ray.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.config import GatewayConfig
from actors.gateway import ARROW_STREAM_TYPE, IngestGateway
from actors.gateway_client import (
    GatewayError, episode_to_arrow, fetch_policy, fetch_policy_bytes, fetch_spec, load_token, send_episode,
)
from actors.gateway_tokens import SCOPES, Token, TokenError
from replay.client import ReplayClient, ReplayTimeout
from replay.config import ReplayConfig
from replay.rate_limiter import RateLimiterConfig
from replay.schema import transition_columns
from replay.shard import ReplayShard
from replay.table import TableConfig
from replay.writers import episode_id
from replay.handles import LocalHandle
from tests.actors.test_gateway import ACT_DIM, OBS_DIM, SPEC, TOKEN, episode, make_policy, policy_state
from tests.conftest import RecordingReplay

ALL = Token("default", frozenset(SCOPES), TOKEN)
DOWNLOAD_ONLY = Token("viewer", frozenset({"download"}), "viewer-token-0123456789ab")


class Weights:
    """A WeightsClient stand-in with one published policy (version 1), or none."""

    def __init__(self, state: Any = None):
        self._state, self.version = state, -1

    def poll(self):
        if self._state is None or self.version == 1:
            return None
        self.version = 1
        return self._state


@pytest.fixture
def gateways():
    made: list[IngestGateway] = []

    def make(replay: Any = None, weights: Any = None, tokens=(ALL,), **overrides: Any) -> IngestGateway:
        config = GatewayConfig(**{"weights_poll_s": 0.05, **overrides})
        gateway = IngestGateway(config, replay if replay is not None else RecordingReplay(),
                                weights if weights is not None else Weights(), make_policy, SPEC, tokens=tokens)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def stored_rows(replay: RecordingReplay) -> int:
    return sum(len(chunk["seq"]) for _, chunk, _ in replay.chunks)


def exchange(gateway: IngestGateway, data: bytes, timeout: float = 10.0) -> tuple[int | None, dict, bytes]:
    """Send raw bytes, read one answer: (status or None when the connection closed without one, headers, body)."""
    with socket.create_connection(gateway.address(), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        except (http.client.HTTPException, OSError):
            return None, {}, b""
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def head(length: int | str | None, token: str | None = TOKEN, extra: bytes = b"") -> bytes:
    lines = [b"POST /v1/episodes HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             f"Content-Type: {ARROW_STREAM_TYPE}".encode()]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}".encode())
    if length is not None:
        lines.append(f"Content-Length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def arrow(columns: dict[str, pa.Array], compression: str | None = None, batches: int = 1) -> bytes:
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        step = -(-table.num_rows // batches) if table.num_rows else 1
        for start in range(0, max(table.num_rows, 1), step):
            for batch in table.slice(start, step).to_batches():
                writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def vectors(values: np.ndarray, value_type: pa.DataType = pa.float32(), fixed: bool = True) -> pa.Array:
    values = np.asarray(values)
    flat = pa.array(values.reshape(-1), type=value_type)
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def episode_columns(n: int, rng: np.random.Generator, end: str = "terminated", value_type=pa.float32(),
                    fixed: bool = True, version: bool = False) -> dict[str, pa.Array]:
    obs = rng.uniform(-50, 50, (n + 1, OBS_DIM)).astype(np.float32)
    flags = {name: np.zeros(n, bool) for name in ("terminated", "truncated")}
    if end in flags:
        flags[end][-1] = True
    columns = {
        "obs": vectors(obs[:-1], value_type, fixed),
        "action": vectors(rng.uniform(-3, 3, (n, ACT_DIM)).astype(np.float32), value_type, fixed),
        "reward": pa.array(rng.standard_normal(n).astype(np.float32)),
        "next_obs": vectors(obs[1:], value_type, fixed),
        "terminated": pa.array(flags["terminated"]),
        "truncated": pa.array(flags["truncated"]),
    }
    if version:
        columns["policy_version"] = pa.array(np.full(n, -1, np.int64))
    return columns


# ------------------------------------------------------------------------------------------------- the fuzz test

ODD_TYPES = [pa.float16(), pa.float64(), pa.int8(), pa.uint64(), pa.bool_(), pa.string(), pa.binary(),
             pa.list_(pa.float64()), pa.large_list(pa.float32()), pa.list_(pa.float32(), 3),
             pa.dictionary(pa.int8(), pa.string()), pa.struct([("x", pa.float32())]), pa.null()]


def odd_array(arrow_type: pa.DataType, n: int, rng: np.random.Generator) -> pa.Array:
    """Some array of ``arrow_type`` (values, nulls, lengths anyhow)."""
    if pa.types.is_dictionary(arrow_type):
        return pa.array(rng.choice(["a", "b", None], n).tolist()).dictionary_encode().cast(arrow_type)
    if pa.types.is_struct(arrow_type):
        return pa.StructArray.from_arrays([pa.array(rng.standard_normal(n).astype(np.float32))], ["x"])
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * 3).astype(np.float32)), 3)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        rows = [rng.standard_normal(int(rng.integers(0, 6))).tolist() if rng.random() > 0.1 else None
                for _ in range(n)]
        return pa.array(rows, type=arrow_type)
    if pa.types.is_null(arrow_type):
        return pa.nulls(n)
    if pa.types.is_string(arrow_type) or pa.types.is_binary(arrow_type):
        return pa.array([str(x) for x in rng.integers(0, 1000, n)], type=arrow_type)
    if pa.types.is_boolean(arrow_type):
        return pa.array(rng.random(n) > 0.5)
    values = rng.standard_normal(n) * 1e3
    if pa.types.is_integer(arrow_type):
        values = np.abs(values) if pa.types.is_unsigned_integer(arrow_type) else values
        return pa.array(values.astype(arrow_type.to_pandas_dtype()))
    return pa.array(values.astype(arrow_type.to_pandas_dtype()))


@st.composite
def bodies(draw) -> bytes:
    """Valid episodes in every accepted encoding, episodes with odd columns, and plain bytes."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "odd_columns", "bytes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    n = draw(st.integers(1, 12))
    columns = episode_columns(n, rng, draw(st.sampled_from(["terminated", "truncated", "none"])),
                              draw(st.sampled_from([pa.float32(), pa.float64()])), draw(st.booleans()),
                              draw(st.booleans()))
    if kind == "odd_columns":
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from([*columns, "speed", "seq", "obs\u00e9", ""]))
            arrow_type = draw(st.sampled_from(ODD_TYPES))
            if draw(st.booleans()) and name in columns:
                del columns[name]
            else:
                columns[name] = odd_array(arrow_type, n, rng)
    return arrow(columns, draw(st.sampled_from([None, "lz4", "zstd"])), draw(st.integers(1, 3)))


@st.composite
def mutations(draw, body: bytes) -> bytes:
    """``body`` with a few bytes flipped, integers overwritten, pieces cut, inserted or repeated."""
    data = bytearray(body)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "int", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "int":
            fmt = draw(st.sampled_from(["<i", "<q", "<H"]))
            limits = {"<i": 2**31 - 1, "<q": 2**63 - 1, "<H": 2**16 - 1}[fmt]
            value = draw(st.sampled_from([0, 1, -1, 8, 255, 4096, 1 << 30, limits, -limits - 1]))
            if fmt == "<H":
                value &= 0xFFFF
            if at + struct.calcsize(fmt) <= len(data):
                struct.pack_into(fmt, data, at, value)
        elif op == "cut":
            data = data[:at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            stop = draw(st.integers(at, len(data)))
            data[at:at] = data[at:stop]
    return bytes(data)


@st.composite
def requests(draw) -> tuple[bytes, bytes, bool]:
    """(raw request, the body bytes the gateway receives when it reads its Content-Length, authorised to upload)."""
    body = draw(mutations(draw(bodies())))
    auth = draw(st.sampled_from(["good"] * 6 + ["missing", "wrong", "viewer", "basic"]))
    token = {"good": TOKEN, "missing": None, "wrong": "wrong-token-0123456789abc", "viewer": DOWNLOAD_ONLY.secret,
             "basic": None}[auth]
    extra = b"Authorization: Basic eA==\r\n" if auth == "basic" else b""
    length_mode = draw(st.sampled_from(["exact"] * 8 + ["short", "long", "garbage", "negative", "missing", "twice",
                                                        "chunked"]))
    length: Any = len(body)
    received = body
    if length_mode == "short":
        length = draw(st.integers(0, len(body)))
        received = body[:length]
    elif length_mode == "long":
        length = len(body) + draw(st.integers(1, 1000))
    elif length_mode in ("garbage", "negative"):
        length = draw(st.sampled_from(["twelve", "1e3", "0x10", " ", "１２"])) if length_mode == "garbage" else -5
    elif length_mode == "missing":
        length = None
    elif length_mode == "twice":
        extra += f"Content-Length: {len(body) + 1}\r\n".encode()
    elif length_mode == "chunked":
        length = None
        extra += b"Transfer-Encoding: chunked\r\n"
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"Idempotency-Key", b"Content-Encoding", b"Expect", b"X-Odd", b"Content-Type"]))
        value = draw(st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v))
        extra += name + b": " + value + b"\r\n"
    authorised = auth == "good"
    return head(length, token, extra) + body, received, authorised


def reference_rows(received: bytes) -> pa.Table:
    with pa.ipc.open_stream(received) as reader:
        return reader.read_all()


FUZZ_ANSWERS = {200, 400, 401, 403, 408, 409, 411, 413, 415, 417, 422, 429, 431, 503}


@pytest.fixture(scope="module")
def fuzz_gateway():
    replay = RecordingReplay()
    # A declared length longer than the body sent waits socket_timeout_s for the rest: short, to keep the test fast.
    config = GatewayConfig(weights_poll_s=0.5, max_rows_per_s=0, request_timeout_s=5.0, socket_timeout_s=0.5)
    gateway = IngestGateway(config, replay, Weights(), make_policy, SPEC, tokens=(ALL, DOWNLOAD_ONLY))
    yield gateway, replay
    gateway.close()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_fuzzed_uploads_never_5xx_and_store_only_valid_authorised_episodes(fuzz_gateway, request):
    gateway, replay = fuzz_gateway
    raw, received, authorised = request
    before = stored_rows(replay)
    status, headers, body = exchange(gateway, raw)
    stored = stored_rows(replay) - before
    assert status is None or status in FUZZ_ANSWERS, (status, body[:300])
    if status == 200 and headers.get("idempotent-replayed") != "true":
        assert authorised
        table = reference_rows(received)  # the gateway found it valid: the reference reader agrees, row for row
        assert stored == table.num_rows == json.loads(body)["rows"]
        last = replay.chunks[-1][1]
        assert last["seq"][-1] == last["seq"][0] + len(last["seq"]) - 1
    else:
        assert stored == 0, (status, body[:300])
    if status is not None and status != 200:
        assert json.loads(body)["error"], body


def test_fuzzed_gateway_still_serves(fuzz_gateway):
    gateway, replay = fuzz_gateway
    assert gateway._serve_thread.is_alive()
    assert fetch_spec(gateway.url(), TOKEN)["table"] == "real"
    stats = gateway.stats()
    assert 500 not in stats.requests and stats.internal_errors == 0
    answer = send_episode(gateway.url(), TOKEN, episode(7))
    assert answer["rows"] == 7


# ------------------------------------------------------------------------------------------------ bombs and limits


def test_compressed_bomb_is_refused_from_its_header_before_decompressing(gateways):
    replay = RecordingReplay()
    gateway = gateways(replay)
    n = 1_000_000
    zeros = np.zeros((n, OBS_DIM), np.float32)
    columns = {"obs": vectors(zeros), "action": vectors(np.zeros((n, ACT_DIM), np.float32)),
               "reward": pa.array(np.zeros(n, np.float32)), "next_obs": vectors(zeros),
               "terminated": pa.array(np.zeros(n, bool)), "truncated": pa.array(np.zeros(n, bool))}
    body = arrow(columns, "zstd")
    assert len(body) < 64 * 1024
    pool = pa.default_memory_pool()
    allocated = pool.bytes_allocated()
    status, _, answer = exchange(gateway, head(len(body)) + body)
    assert status == 413, answer
    payload = json.loads(answer)
    assert payload["limit"] == 10_000 and "gateway.max_episode_rows" in payload["error"]
    assert pool.bytes_allocated() - allocated < 8 << 20
    assert stored_rows(replay) == 0

    # A compressed buffer whose length prefix claims a terabyte: refused by its claim, nothing decompressed.
    small = arrow(episode_columns(50, np.random.default_rng(0)), "zstd")
    base = pa.py_buffer(small)
    reader = pa.ipc.MessageReader.open_stream(base)
    reader.read_next_message()  # schema
    batch = reader.read_next_message()
    start = batch.body.address - base.address  # zero-copy: the body is a slice of the upload
    assert 0 < start < len(small)
    forged = bytearray(small)
    struct.pack_into("<q", forged, start, 1 << 40)  # the first buffer's uncompressed length
    status, _, answer = exchange(gateway, head(len(forged)) + bytes(forged))
    assert status == 413 and "gateway.max_decoded_bytes" in json.loads(answer)["error"], answer
    assert stored_rows(replay) == 0
    assert send_episode(gateway.url(), TOKEN, episode(5))["rows"] == 5


def test_decoded_bytes_and_magnitudes_are_limited(gateways):
    replay = RecordingReplay()
    gateway = gateways(replay, max_decoded_bytes=4096)
    body = arrow(episode_columns(200, np.random.default_rng(1)), "lz4")
    status, _, answer = exchange(gateway, head(len(body)) + body)
    assert status == 413 and json.loads(answer)["limit"] == 4096
    huge = episode(5, reward=np.array([0, 0, 3e7, 0, 0], np.float32))
    with pytest.raises(GatewayError, match=r"column 'reward': values beyond \+-1e\+06 .* first at row 2"):
        send_episode(gateway.url(), TOKEN, huge, retries=0)
    assert stored_rows(replay) == 0


def test_a_column_name_that_is_not_utf8_is_a_400(gateways):
    replay = RecordingReplay()
    gateway = gateways(replay)
    body = bytearray(episode_to_arrow(episode(3)))
    at = body.find(b"reward")
    body[at + 1] = 0xFF
    status, _, answer = exchange(gateway, head(len(body)) + bytes(body))
    assert status == 400 and "a column name is not valid UTF-8" in json.loads(answer)["error"], answer
    assert stored_rows(replay) == 0


def test_a_handler_bug_is_a_counted_500_and_the_gateway_goes_on(gateways, monkeypatch):
    replay = RecordingReplay()
    gateway = gateways(replay)

    def broken(body, newest):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway._parser, "parse", broken)
    body = episode_to_arrow(episode(4))
    status, _, answer = exchange(gateway, head(len(body)) + body)
    assert status == 500 and json.loads(answer)["error"] == "internal error (logged by the gateway)"
    assert gateway.stats().internal_errors == 1
    monkeypatch.undo()
    assert send_episode(gateway.url(), TOKEN, episode(4))["rows"] == 4
    # The first try was forgotten: the episode got the first episode id.
    assert replay.chunks[0][1]["episode_id"][0] == episode_id(gateway.writer_id, 0)


# --------------------------------------------------------------------------------------------------- slow clients


def dribble(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(every_s):
            return
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return


def test_slow_clients_cannot_hold_the_gateway(gateways):
    slow = Token("slow", frozenset({"upload"}), "slow-robot-token-0123456789")
    replay = RecordingReplay()
    gateway = gateways(replay, tokens=(ALL, slow), request_timeout_s=2.0, socket_timeout_s=1.5, max_connections=12,
                       max_concurrent_uploads=4, max_uploads_per_token=2)
    address = gateway.address()
    stop = threading.Event()
    sockets: list[socket.socket] = []
    try:
        # 16 connections that send their headers one byte every 0.5 s (more than max_connections).
        for _ in range(16):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(b"POST /v1/episodes HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
            threading.Thread(target=dribble, args=(sock, b"X-Pad: " + b"a" * 100, 0.5, stop), daemon=True).start()
        # 4 authenticated uploads that send one body byte every 0.5 s (never idle for socket_timeout_s).
        body = episode_to_arrow(episode(50))
        holders = []
        for _ in range(4):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(head(len(body), slow.secret).replace(b"Connection: close\r\n", b"") + body[:1])
            holders.append(sock)
            threading.Thread(target=dribble, args=(sock, body[1:], 0.5, stop), daemon=True).start()
        started = time.monotonic()

        # A real robot still gets in at once.
        answer = send_episode(gateway.url(), TOKEN, episode(6), retries=0, timeout=10)
        robot_at = time.monotonic() - started
        assert answer["rows"] == 6

        # The slow token holds at most max_uploads_per_token slots; the others were told to come back.
        answers = []
        for sock in holders:
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((response.status, json.loads(response.read())["error"], time.monotonic() - started))
        assert sorted(status for status, _, _ in answers) == [408, 408, 503, 503], answers
        for status, error, at in answers:
            if status == 408:  # the whole-request deadline, though a byte arrived every 0.5 s
                assert "gateway.request_timeout_s" in error and 1.5 < at < 5.0, (error, at)
                assert robot_at < at, "the robot got in while the slow uploads held their slots"
            else:
                assert "max_uploads_per_token" in error
        # The half-sent headers were evicted (past max_connections) or closed: aiohttp's keep-alive timeout
        # (socket_timeout_s) ends a connection whose first request is not complete by then.
        for sock in sockets:
            sock.settimeout(max(0.1, started + 3.0 - time.monotonic()))
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
        stats = gateway.stats()
        assert stats.connections_evicted >= 4, stats
        wait_for(lambda: gateway.stats().connections == 0)  # the refused uploads too, once drained for 2 s
        assert stats.requests_by_token["slow"] == {408: 2, 503: 2}
        assert stored_rows(replay) == 6
    finally:
        stop.set()
        for sock in sockets + holders:
            sock.close()


def test_the_request_deadline_holds_however_the_bytes_trickle_in(gateways):
    gateway = gateways(request_timeout_s=1.0, socket_timeout_s=30.0)
    stop = threading.Event()
    try:
        headers = socket.create_connection(gateway.address(), timeout=10)
        threading.Thread(target=dribble, args=(headers, head(100), 0.1, stop), daemon=True).start()
        body = episode_to_arrow(episode(40))
        uploads = socket.create_connection(gateway.address(), timeout=10)
        uploads.sendall(head(len(body)))
        threading.Thread(target=dribble, args=(uploads, body, 0.1, stop), daemon=True).start()
        started = time.monotonic()
        response = http.client.HTTPResponse(uploads)
        response.begin()
        assert response.status == 408 and "gateway.request_timeout_s" in json.loads(response.read())["error"]
        try:
            assert headers.recv(1024) == b""  # closed without an answer: its headers never completed
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 3.0
        assert gateway.stats().connections_timed_out == 1
    finally:
        stop.set()
        headers.close()
        uploads.close()


def test_upload_rate_is_limited_per_token(gateways):
    other = Token("other", frozenset({"upload"}), "other-robot-token-0123456789")
    gateway = gateways(tokens=(ALL, other), max_rows_per_s=50.0)
    send_episode(gateway.url(), TOKEN, episode(150), retries=0)  # three seconds of rows: two seconds in debt
    with pytest.raises(GatewayError, match=r"429: token 'default' is over its upload rate of 50 rows/s") as info:
        send_episode(gateway.url(), TOKEN, episode(3), retries=0)
    assert 0 < float(info.value.retry_after) <= 2
    assert send_episode(gateway.url(), other.secret, episode(4), retries=0)["rows"] == 4  # another robot is not held
    assert send_episode(gateway.url(), TOKEN, episode(3))["rows"] == 3  # the client waits as told, then it goes in


# ------------------------------------------------------------------------------------------------------ idempotency


class FlakyReplay(RecordingReplay):
    """Raises ReplayTimeout at the ``fail_insert``-th insert, and from the first ``fail_flushes`` flushes."""

    def __init__(self, fail_insert: int | None = None, fail_flushes: int = 0):
        super().__init__()
        self.inserts, self.fail_insert, self.fail_flushes = 0, fail_insert, fail_flushes

    def insert(self, table, chunk, writer_id):
        self.inserts += 1
        if self.inserts == self.fail_insert:
            raise ReplayTimeout("insert not acknowledged (test)")
        super().insert(table, chunk, writer_id)

    def flush(self, timeout=None):
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise ReplayTimeout("flush not acknowledged (test)")
        super().flush(timeout)


def post(gateway: IngestGateway, body: bytes, key: str | None = None) -> tuple[int, dict, dict]:
    host, port = gateway.address()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": ARROW_STREAM_TYPE}
    if key is not None:
        headers["Idempotency-Key"] = key
    try:
        conn.request("POST", "/v1/episodes", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def assert_once(replay: RecordingReplay, rows: int) -> None:
    seqs = np.concatenate([c["seq"] for _, c, _ in replay.chunks])
    assert len(seqs) == rows and len(np.unique(seqs)) == rows, "every row stored once"


def test_a_retried_upload_returns_the_first_answer_and_stores_nothing_again(gateways):
    replay = RecordingReplay()
    gateway = gateways(replay)
    body = episode_to_arrow(episode(9))
    status, headers, first = post(gateway, body, key="robot-7/episode-1")
    assert status == 200 and "idempotent-replayed" not in headers
    status, headers, again = post(gateway, body, key="robot-7/episode-1")
    assert status == 200 and headers["idempotent-replayed"] == "true" and again == first
    # Without a key the body's SHA-256 is the key: the same episode posted twice is stored once.
    status, _, plain = post(gateway, episode_to_arrow(episode(5)))
    status2, headers, plain_again = post(gateway, episode_to_arrow(episode(5)))
    assert status == status2 == 200 and plain_again == plain and headers["idempotent-replayed"] == "true"
    assert_once(replay, 14)
    status, _, payload = post(gateway, episode_to_arrow(episode(6)), key="robot-7/episode-1")
    assert status == 422 and "used before with another body" in payload["error"]
    assert gateway.stats().idempotent_replays == 2 and gateway.stats().episodes == 2


@pytest.mark.parametrize("flaky", [dict(fail_insert=2), dict(fail_flushes=1)], ids=["insert", "flush"])
def test_a_replay_timeout_is_a_503_and_the_retry_completes_the_episode_once(gateways, flaky):
    replay = FlakyReplay(**flaky)
    gateway = gateways(replay, insert_chunk_rows=5)
    body = episode_to_arrow(episode(12))
    status, headers, payload = post(gateway, body, key="ep-12")
    assert status == 503 and int(headers["retry-after"]) > 0 and "retry the same upload" in payload["error"]
    status, _, answer = post(gateway, body, key="ep-12")
    assert status == 200 and answer["rows"] == 12
    assert answer["episode_id"] == episode_id(gateway.writer_id, 0) and answer["first_seq"] == 0
    assert_once(replay, 12)
    assert {int(c["episode_id"][0]) for _, c, _ in replay.chunks} == {answer["episode_id"]}
    assert gateway.stats().episodes == 1


def test_a_timeout_before_any_insert_gives_the_episode_id_back(gateways):
    replay = FlakyReplay(fail_insert=1)
    gateway = gateways(replay)
    status, _, _ = post(gateway, episode_to_arrow(episode(4)), key="a")
    assert status == 503
    status, _, answer = post(gateway, episode_to_arrow(episode(6)), key="b")
    assert status == 200 and answer["episode_id"] == episode_id(gateway.writer_id, 0) and answer["first_seq"] == 0


def test_retry_after_a_partial_insert_into_real_shards_stores_every_row_once(gateways):
    """Real shard, real client: the rate limiter holds the third chunk back, the fourth insert times out."""
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=1, error_buffer=10)
    shard = ReplayShard([TableConfig("real", 1000, transition_columns(SPEC.obs_shape, SPEC.action_shape),
                                     limiters=(("learner", limiter),))])
    client = ReplayClient([LocalHandle(shard)], ReplayConfig(num_shards=1, insert_timeout_s=0.3,
                                                             max_inflight_inserts=1), local=True)
    gateway = gateways(client, insert_chunk_rows=5)
    body = episode_to_arrow(episode(20))
    status, _, _ = post(gateway, body)
    assert status == 503 and shard.size("real") == 10
    assert shard.sample("real", 10, consumer="learner") is not None  # the learner catches up
    status, _, answer = post(gateway, body)
    assert status == 200 and answer["rows"] == 20
    assert shard.size("real") == 20 and shard.stats()["real"]["duplicates"] == 0
    rows = shard.sample_sequences("real", 1, 20)
    np.testing.assert_array_equal(rows["seq"][0], np.arange(20))


# ---------------------------------------------------------------------------------------------------------- TLS


def self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    cert_path, key_path = str(directory / "cert.pem"), str(directory / "key.pem")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key_path, "-out", cert_path, "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_and_the_client_verifies_the_certificate(gateways, tmp_path):
    cert, key = self_signed(tmp_path)
    replay = RecordingReplay()
    gateway = gateways(replay, tls_cert=cert, tls_key=key)
    url = gateway.url()
    assert url.startswith("https://127.0.0.1:")
    assert fetch_spec(url, TOKEN, ca_file=cert)["table"] == "real"
    assert send_episode(url, TOKEN, episode(5), ca_file=cert)["rows"] == 5
    with pytest.raises(GatewayError, match="CERTIFICATE_VERIFY_FAILED") as info:
        fetch_spec(url, TOKEN)  # the system CAs do not know this certificate
    assert info.value.status is None
    with pytest.raises(GatewayError, match="no answer"):
        fetch_spec(url.replace("https://", "http://"), TOKEN)  # plain HTTP is not served on the TLS port
    assert stored_rows(replay) == 5 and gateway.stats().internal_errors == 0
    with pytest.raises(ValueError, match="cannot load them as a PEM certificate chain"):
        gateways(tls_cert=str(tmp_path / "missing.pem"), tls_key=key)


# --------------------------------------------------------------------------------------- tokens, scopes, revocation


def write_tokens(path, lines: list[str], mode: int = 0o600) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_token_file_scopes_and_revocation_without_restart(gateways, tmp_path):
    uploader, viewer, late = "uploader-secret-0123456789", "viewer-secret-0123456789ab", "late-robot-0123456789abc"
    path = tmp_path / "tokens"
    write_tokens(path, ["# id scopes token", f"robot-1 upload {uploader}", f"dash download {viewer}"])
    replay = RecordingReplay()
    gateway = gateways(replay, weights=Weights(policy_state(seed=1)), tokens=(), token_file=str(path))
    url = gateway.url()
    wait_for(lambda: fetch_spec(url, viewer)["policy"]["version"] == 1)

    assert send_episode(url, uploader, episode(4))["rows"] == 4
    assert fetch_spec(url, uploader)["table"] == "real"
    with pytest.raises(GatewayError, match=r"403: token 'robot-1' has scopes \['upload'\]; this endpoint needs "
                                           r"'download'"):
        fetch_policy(url, uploader)
    fetch_policy(url, viewer)
    with pytest.raises(GatewayError, match="403: token 'dash'"):
        send_episode(url, viewer, episode(3))

    # Revoke robot-1 and add a robot, without a restart.
    write_tokens(path, [f"dash download {viewer}", f"robot-2 upload,download {late}"])
    wait_for(lambda: _status(url, uploader) == 401)
    assert send_episode(url, late, episode(3))["rows"] == 3
    # A file others may read grants nothing (fail closed) until it is fixed.
    os.chmod(path, 0o644)
    wait_for(lambda: _status(url, late) == 401)
    assert gateway.stats().token_ids == ()
    os.chmod(path, 0o600)
    wait_for(lambda: _status(url, late) == 200)

    stats = gateway.stats()
    assert {"robot-1", "dash", "robot-2", "-"} <= set(stats.requests_by_token)
    assert stats.requests_by_token["robot-1"][200] >= 2
    text = repr(stats)
    for secret in (uploader, viewer, late):
        assert secret not in text and secret not in repr(gateway.tokens)
    assert stored_rows(replay) == 7


def _status(url: str, token: str) -> int | None:
    try:
        fetch_spec(url, token)
        return 200
    except GatewayError as exc:
        return exc.status


def test_an_unusable_token_file_is_refused_at_start_without_showing_tokens(gateways, tmp_path):
    path = tmp_path / "tokens"
    secret = "a-secret-that-must-not-show-0123"
    write_tokens(path, [f"robot-1 upload {secret}"], mode=0o644)
    with pytest.raises(TokenError, match=r"mode 0644 lets group or others read it; expected 0600") as info:
        gateways(tokens=(), token_file=str(path))
    write_tokens(path, [f"robot-1 upload,fly {secret}"])
    with pytest.raises(TokenError, match=r"line 1: token 'robot-1': scopes \['fly', 'upload'\]") as info2:
        gateways(tokens=(), token_file=str(path))
    write_tokens(path, ["robot-1 upload short"])
    with pytest.raises(TokenError, match=r"line 1: token 'robot-1': expected at least 16 printable ASCII characters"):
        gateways(tokens=(), token_file=str(path))
    for exc in (info.value, info2.value):
        assert secret not in str(exc)


def test_load_token_reads_the_environment_or_an_owner_only_file(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("file-token-0123456789abcdef\n")
    os.chmod(path, 0o600)
    assert load_token(path) == "file-token-0123456789abcdef"
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="mode 0640: expected 0600"):
        load_token(path)
    monkeypatch.setenv("DYNARAY_GATEWAY_TOKEN", "env-token-0123456789abcdef")
    assert load_token() == "env-token-0123456789abcdef"


# ----------------------------------------------------------------------------------------------------------- ONNX


def test_onnx_policy_runs_in_onnxruntime_with_the_torchscript_actions(gateways):
    ort = pytest.importorskip("onnxruntime")
    import onnx
    import torch

    gateway = gateways(weights=Weights(policy_state(seed=4)))
    url = gateway.url()
    wait_for(lambda: fetch_spec(url, TOKEN)["policy"]["version"] == 1)
    model, version = fetch_policy_bytes(url, TOKEN, format="onnx")
    assert version == 1
    metadata = {p.key: p.value for p in onnx.load_from_string(model).metadata_props}
    assert json.loads(metadata["spec.json"])["policy"]["version"] == 1
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"] and [o.name for o in session.get_outputs()] == ["action"]
    obs = np.random.default_rng(2).standard_normal((64, OBS_DIM)).astype(np.float32) * 3
    actions = session.run(None, {"obs": obs})[0]
    scripted, _ = fetch_policy(url, TOKEN)
    np.testing.assert_allclose(actions, scripted(torch.from_numpy(obs)).numpy(), rtol=0, atol=1e-5)
    assert actions.shape == (64, ACT_DIM) and np.all(np.abs(actions) <= 3.0)
    assert session.run(None, {"obs": obs[:1]})[0].shape == (1, ACT_DIM)  # any batch size
    with pytest.raises(GatewayError, match=r"400: format='tflite': expected one of \['torchscript', 'onnx'\]"):
        fetch_policy_bytes(url, TOKEN, format="tflite")


def test_a_policy_that_does_not_match_its_digest_is_not_loaded(gateways):
    gateway = gateways(weights=Weights(policy_state(seed=5)))
    url = gateway.url()
    wait_for(lambda: fetch_spec(url, TOKEN)["policy"]["version"] == 1)
    fetch_policy(url, TOKEN)
    version, archive, digest = gateway._exports["torchscript"]
    gateway._exports["torchscript"] = (version, archive[:-1] + bytes([archive[-1] ^ 1]), digest)  # corrupted
    with pytest.raises(GatewayError, match="corrupted on the way; not loading it"):
        fetch_policy(url, TOKEN)
