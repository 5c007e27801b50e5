"""Ingest gateway over real HTTP, in process: a ReplayShard behind a local ReplayClient, a local WeightsStore.

Every refused request is followed by checks that nothing was stored and that the server still answers.
No Ray is started here.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pytest

from replay.writers import episode_id, writer_index, writer_role
import torch

from actors.config import GatewayConfig
from actors.envs import EnvSpec
from actors.gateway import ARROW_STREAM_TYPE, TOKEN_ENV, IngestGateway, export_torchscript
from actors.gateway_tokens import SCOPES, Token, TokenError, env_token, new_token
from actors.gateway_client import GatewayError, episode_to_arrow, fetch_policy, fetch_spec, load_policy, send_episode
from learners.config import PolicyConfig
from learners.sac import Policy, SACLearner
from replay.client import ReplayClient
from replay.config import ReplayConfig
from replay.handles import LocalHandle
from replay.schema import transition_columns
from replay.shard import ReplayShard
from replay.table import TableConfig
from system.config import ConfigError, config_from_dict, load_config
from system.weights import WeightsClient, WeightsPublisher, WeightsStore

TOKEN = "test-token-0123456789abcdef"
OBS_DIM, ACT_DIM = 4, 1  # InvertedPendulum-v5, so the example robot can drive this gateway
SPEC = EnvSpec((OBS_DIM,), (ACT_DIM,), np.full(ACT_DIM, -3.0, np.float32), np.full(ACT_DIM, 3.0, np.float32))
HIDDEN = (32, 32)
REPO = Path(__file__).resolve().parents[2]


def policy_state(seed: int) -> dict:
    learner = SACLearner(OBS_DIM, ACT_DIM, SPEC.action_low, SPEC.action_high,
                         PolicyConfig(hidden_sizes=HIDDEN, device="cpu"), seed=seed)
    return learner.policy_state()


make_policy = partial(Policy, OBS_DIM, ACT_DIM, SPEC.action_low, SPEC.action_high, HIDDEN)


@dataclass
class Rig:
    gateway: IngestGateway
    shard: ReplayShard
    publisher: WeightsPublisher
    states: dict[int, dict] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url()

    def publish(self, state: dict) -> int:
        version = self.publisher.publish(state)
        self.states[version] = state
        deadline = time.monotonic() + 10
        while self.gateway.spec()["policy"]["version"] != version:
            assert time.monotonic() < deadline, "the gateway did not pick up the published policy"
            time.sleep(0.01)
        return version

    def stored(self) -> int:
        return self.shard.size("real")

    def assert_untouched_and_serving(self) -> None:
        assert self.stored() == 0
        assert self.gateway.stats().episodes == 0
        status, _, body = request(self, "GET", "/v1/spec")
        assert status == 200 and body["table"] == "real"


@pytest.fixture
def make_rig() -> Callable[..., Rig]:
    rigs: list[Rig] = []

    def make(publish: bool = True, **overrides: Any) -> Rig:
        shard = ReplayShard([TableConfig("real", 10_000, transition_columns(SPEC.obs_shape, SPEC.action_shape))])
        replay = ReplayClient([LocalHandle(shard)], ReplayConfig(num_shards=1), local=True)
        store = LocalHandle(WeightsStore())
        publisher = WeightsPublisher(store, "policy")
        config = GatewayConfig(**{"weights_poll_s": 0.02, **overrides})
        gateway = IngestGateway(config, replay, WeightsClient(store, "policy"), make_policy, SPEC,
                                tokens=[Token("default", frozenset(SCOPES), TOKEN)])
        rig = Rig(gateway, shard, publisher)
        rigs.append(rig)
        if publish:
            rig.publish(policy_state(seed=1))
        return rig

    yield make
    for rig in rigs:
        rig.gateway.close()


@pytest.fixture
def rig(make_rig) -> Rig:
    return make_rig()


def request(
    rig: Rig,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, dict[str, str], Any]:
    """One request over a fresh connection: status, headers, JSON (or raw bytes) body."""
    host, port = rig.gateway.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        payload: Any = json.loads(raw) if answer_headers.get("content-type") == "application/json" else raw
        return response.status, answer_headers, payload
    finally:
        conn.close()


def raw_exchange(rig: Rig, data: bytes, then: bytes = b"") -> tuple[int, dict]:
    """Send raw bytes (a hand-made request head), optionally more after the answer started; parse the answer."""
    with socket.create_connection(rig.gateway.address(), timeout=30) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = json.loads(response.read())
        if then:
            try:
                sock.sendall(then)
            except OSError:
                pass
        return response.status, payload


def episode(n: int = 5, **changes: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    obs = rng.standard_normal((n + 1, OBS_DIM)).astype(np.float32)
    data = {
        "obs": obs[:-1],
        "action": rng.uniform(-3, 3, (n, ACT_DIM)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "next_obs": obs[1:],
        "terminated": np.zeros(n, dtype=bool),
        "truncated": np.zeros(n, dtype=bool),
    }
    data["terminated"][-1:] = True
    data.update(changes)
    return data


def vectors(values: np.ndarray, value_type: pa.DataType = pa.float32()) -> pa.Array:
    values = np.asarray(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=value_type), values.shape[1])


def arrow_body(columns: dict[str, Any], batches: int = 1) -> bytes:
    """An Arrow IPC stream of the given columns (numpy vectors become fixed_size_list<float32>)."""
    arrays = {name: (vectors(v) if isinstance(v, np.ndarray) and v.ndim == 2 else v) for name, v in columns.items()}
    batch = pa.RecordBatch.from_pydict(arrays)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        step = -(-batch.num_rows // batches) if batch.num_rows else 1
        for start in range(0, max(batch.num_rows, 1), step):
            writer.write_batch(batch.slice(start, step))
    return sink.getvalue().to_pybytes()


def post(rig: Rig, body: bytes, token: str | None = TOKEN, headers: dict | None = None) -> tuple[int, dict, Any]:
    return request(rig, "POST", "/v1/episodes", body, {"Content-Type": ARROW_STREAM_TYPE, **(headers or {})}, token)


# --------------------------------------------------------------------------------------------------- config


def test_config_validation_names_key_value_and_expected():
    with pytest.raises(ConfigError, match=r"gateway\.port=70000: expected an integer in \[0, 65535\]"):
        load_config([], ["gateway.port=70000"])
    with pytest.raises(ConfigError, match=r"gateway\.max_body_bytes=10: expected an integer >= 1024"):
        load_config([], ["gateway.max_body_bytes=10"])
    with pytest.raises(ConfigError, match=r"gateway\.enabled='yes': expected bool"):
        config_from_dict({"gateway": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"gateway\.host='  ': expected a host name or IP address"):
        load_config([], ["gateway.host='  '"])
    with pytest.raises(ConfigError, match=r"gateway\.host='0\.0\.0\.0' is reachable from the network: expected "
                                          r"gateway\.tls_cert and gateway\.tls_key"):
        load_config([], ["gateway.host=0.0.0.0"])
    assert load_config([], ["gateway.host=0.0.0.0", "gateway.allow_plain_http=true"]).gateway.host == "0.0.0.0"
    with pytest.raises(ConfigError, match="expected both"):
        load_config([], ["gateway.tls_cert=cert.pem"])
    with pytest.raises(ConfigError, match=r"unknown config key 'gateway\.token'") as info:
        load_config([], ["gateway.token=short-but-secret"])
    assert "short-but-secret" not in str(info.value), "a token must never be echoed"
    assert not hasattr(GatewayConfig(), "token"), "tokens are not settings (no config file may hold one)"


def test_tokens_come_from_the_environment_or_are_generated(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert env_token() is None
    generated = new_token()
    assert len(generated.secret) >= 32 and generated.secret != new_token().secret
    assert generated.secret not in repr(generated) and generated.secret not in str(generated)
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-1234")
    token = env_token()
    assert token.secret == "from-the-environment-1234" and token.id == "default"
    assert token.scopes == frozenset({"upload", "download"})
    monkeypatch.setenv(TOKEN_ENV, "bad token")
    with pytest.raises(TokenError, match=f"{TOKEN_ENV}=<9 characters>") as info:
        env_token()
    assert "bad token" not in str(info.value), "a token must never be echoed"


def test_gateway_needs_a_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(TokenError, match="no gateway token"):
        IngestGateway(GatewayConfig(), None, None, make_policy, SPEC)


# ----------------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "token, reason",
    [(None, "missing bearer token"), ("", "missing bearer token"), ("wrong-token-0123456789abc", "wrong bearer token"),
     (TOKEN[:-1], "wrong bearer token")],
)
def test_missing_or_wrong_token_is_401_and_stores_nothing(rig, token, reason):
    good = episode_to_arrow(episode(), policy_version=1)
    for method, path, body in (("POST", "/v1/episodes", good), ("GET", "/v1/policy", None), ("GET", "/v1/spec", None)):
        status, headers, payload = request(rig, method, path, body, token=token)
        assert status == 401, (method, path, payload)
        assert payload["error"].startswith(reason)
        assert headers["www-authenticate"].startswith("Bearer")
    rig.assert_untouched_and_serving()
    assert rig.gateway.stats().requests[401] == 3


def test_wrong_auth_scheme_is_401(rig):
    status, _, payload = post(rig, episode_to_arrow(episode()), token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401 and "missing bearer token" in payload["error"]
    rig.assert_untouched_and_serving()


def test_client_raises_with_status_and_error_text(rig):
    with pytest.raises(GatewayError, match="401: wrong bearer token") as info:
        send_episode(rig.url, "wrong-token-0123456789abc", episode())
    assert info.value.status == 401
    with pytest.raises(GatewayError, match="400: column 'obs': non-finite") as info:
        send_episode(rig.url, TOKEN, episode(obs=np.full((5, OBS_DIM), np.nan)))
    assert info.value.column == "obs"
    rig.assert_untouched_and_serving()


# ------------------------------------------------------------------------------------------------ bad bodies


def _ipc_file() -> bytes:
    batch = pa.RecordBatch.from_pydict({"reward": pa.array([1.0], pa.float32())})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _columns(n: int = 5, drop: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
    data = {**episode(n), **changes}
    return {name: value for name, value in data.items() if name not in drop}


def _with_nulls() -> dict[str, Any]:
    return _columns(reward=pa.array([1.0, None, 2.0, 3.0, 4.0], pa.float32()))


def _ragged() -> dict[str, Any]:
    rows = episode()["next_obs"].tolist()
    rows[1] = rows[1][:3]
    return _columns(next_obs=pa.array(rows, pa.list_(pa.float32())))


BAD_BODIES = [
    # name, body, column (None: the body as a whole), fragment of the reason
    ("garbage", lambda: b"this is not an arrow stream", None, "not a readable Arrow IPC stream"),
    ("ipc_file", _ipc_file, None, "Arrow IPC file, not a stream"),
    ("cut_short", lambda: episode_to_arrow(episode(50))[:-700], None, "not a readable Arrow IPC stream"),
    ("no_rows", lambda: arrow_body(_columns(0)), None, "no rows"),
    ("missing_column", lambda: arrow_body(_columns(drop=("reward",))), "reward", "missing"),
    ("unexpected_column", lambda: arrow_body(_columns(speed=np.ones(5, np.float32))), "speed", "unexpected column"),
    ("stamped_column", lambda: arrow_body(_columns(seq=np.arange(5))), "seq", "set by the gateway"),
    ("int_obs", lambda: arrow_body(_columns(obs=vectors(np.ones((5, OBS_DIM)), pa.int32()))), "obs", "Arrow type"),
    ("string_reward", lambda: arrow_body(_columns(reward=pa.array(list("abcde")))), "reward", "Arrow type"),
    ("float_flags", lambda: arrow_body(_columns(truncated=np.zeros(5, np.float32))), "truncated", "Arrow type"),
    ("obs_too_short", lambda: arrow_body(_columns(obs=np.ones((5, OBS_DIM - 1), np.float32))), "obs", "wrong shape"),
    ("action_too_long", lambda: arrow_body(_columns(action=np.zeros((5, 2), np.float32))), "action", "wrong shape"),
    ("scalar_obs", lambda: arrow_body(_columns(obs=np.ones(5, np.float32))), "obs", "Arrow type"),
    ("ragged_list", lambda: arrow_body(_ragged()), "next_obs", "wrong shape: 3 values in row 1"),
    ("nan_obs", lambda: arrow_body(_columns(obs=np.where(np.arange(5)[:, None] == 2, np.nan, np.ones((5, OBS_DIM)))
                                            .astype(np.float32))), "obs", "non-finite values"),
    ("inf_reward", lambda: arrow_body(_columns(reward=np.array([0, 0, 0, np.inf, 0], np.float32))), "reward",
     "first at row 3"),
    ("float32_overflow", lambda: arrow_body(_columns(next_obs=vectors(np.full((5, OBS_DIM), 1e300), pa.float64()))),
     "next_obs", "outside the float32 range"),
    ("nulls", lambda: arrow_body(_with_nulls()), "reward", "null"),
    ("ends_early", lambda: arrow_body(_columns(terminated=np.array([0, 1, 0, 0, 1], bool))), "terminated",
     "true at row 1 of 5"),
    ("both_ends", lambda: arrow_body(_columns(truncated=np.array([0, 0, 0, 0, 1], bool))), "truncated",
     "both true"),
    ("action_out_of_bounds", lambda: arrow_body(_columns(action=np.full((5, ACT_DIM), 4.5, np.float32))), "action",
     "outside the action bounds"),
    ("version_from_the_future", lambda: arrow_body(_columns(policy_version=np.full(5, 99))), "policy_version",
     "newer than the newest published policy (1)"),
    ("version_below_minus_one", lambda: arrow_body(_columns(policy_version=np.full(5, -7))), "policy_version",
     "below -1"),
]


@pytest.mark.parametrize("name, make_body, column, reason", BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_bad_body_is_400_naming_column_and_reason(rig, name, make_body, column, reason):
    status, headers, payload = post(rig, make_body())
    assert status == 400, payload
    assert headers["content-type"] == "application/json"
    assert reason in payload["error"], payload
    assert payload.get("column") == column
    if column is not None:
        assert payload["error"].startswith(f"column {column!r}") or column in payload["error"]
    rig.assert_untouched_and_serving()


def test_empty_body_and_bad_lengths(rig):
    status, _, payload = post(rig, b"")
    assert status == 400 and "empty body" in payload["error"]
    head = f"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    status, payload = raw_exchange(rig, head + b"Content-Length: twelve\r\n\r\n")  # refused by aiohttp's parser
    assert status == 400 and "bad HTTP request" in payload["error"] and "Content-Length" in payload["error"]
    status, payload = raw_exchange(rig, head + b"\r\n")
    assert status == 411 and "Content-Length header missing" in payload["error"]
    rig.assert_untouched_and_serving()


def test_chunked_upload_is_refused_with_411(rig):
    host, port = rig.gateway.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = episode_to_arrow(episode())
    conn.request("POST", "/v1/episodes", body=iter([body[:100], body[100:]]), encode_chunked=True,
                 headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert response.status == 411
    assert "chunked" in payload["error"] and "Content-Length" in payload["error"]
    rig.assert_untouched_and_serving()


# --------------------------------------------------------------------------------------------------- limits


def test_oversized_body_is_413_with_the_configured_limit(make_rig):
    rig = make_rig(max_body_bytes=4096)
    body = episode_to_arrow(episode(200), policy_version=1)
    assert len(body) > 4096
    status, _, payload = post(rig, body)
    assert status == 413
    assert payload["limit"] == 4096
    assert "4096" in payload["error"] and "gateway.max_body_bytes" in payload["error"]
    rig.assert_untouched_and_serving()

    # A body far over the limit is answered without being read; the client still gets the 413, not a reset.
    status, _, payload = post(rig, b"\0" * (8 << 20))
    assert status == 413 and payload["limit"] == 4096
    rig.assert_untouched_and_serving()

    # With "Expect: 100-continue" the answer comes before the body is sent at all.
    head = (f"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {1 << 30}\r\nExpect: 100-continue\r\n\r\n").encode()
    status, payload = raw_exchange(rig, head)
    assert status == 413 and payload["limit"] == 4096
    # A small episode still goes through.
    assert send_episode(rig.url, TOKEN, episode(3))["rows"] == 3


def test_expect_continue_upload_goes_through(rig):
    body = episode_to_arrow(episode(4))
    head = (f"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(rig.gateway.address(), timeout=30) as sock:
        sock.sendall(head)
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200 and json.loads(response.read())["rows"] == 4
    assert rig.stored() == 4


def test_busy_and_stalled_uploads(make_rig):
    rig = make_rig(max_concurrent_uploads=1, socket_timeout_s=1.0)
    body = episode_to_arrow(episode(4))
    head = (f"POST /v1/episodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(rig.gateway.address(), timeout=30) as stalled:
        stalled.sendall(head + body[:10])  # holds the only upload slot, then stops sending
        deadline = time.monotonic() + 10
        while rig.gateway.stats().uploads_in_progress == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, headers, payload = post(rig, body)
        assert status == 503 and "max_concurrent_uploads=1" in payload["error"]
        assert headers["retry-after"] == "1"
        response = http.client.HTTPResponse(stalled)
        response.begin()
        assert response.status == 408 and "did not arrive" in json.loads(response.read())["error"]
    rig.assert_untouched_and_serving()
    assert send_episode(rig.url, TOKEN, episode(4))["rows"] == 4


# ---------------------------------------------------------------------------------------- paths and methods


def test_unknown_paths_and_methods(rig):
    status, _, payload = request(rig, "GET", "/v1/nothing")
    assert status == 404 and "/v1/spec" in payload["error"]
    status, headers, payload = request(rig, "GET", "/v1/episodes")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, payload = request(rig, "DELETE", "/v1/policy")
    assert status == 405 and headers["allow"] == "GET" and "DELETE" in payload["error"]
    status, _, payload = request(rig, "BREW", "/v1/spec")  # refused by aiohttp's parser
    assert status == 400 and "bad HTTP request" in payload["error"] and "method" in payload["error"].lower()
    status, _, payload = post(rig, b"x" * 10, headers={})  # a body on a refused request does not break the next one
    assert status == 400
    rig.assert_untouched_and_serving()


def test_keep_alive_connection_serves_several_requests(rig):
    host, port = rig.gateway.address()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for method, path, body, status in (
            ("GET", "/v1/spec", None, 200),
            ("POST", "/v1/episodes", episode_to_arrow(episode(3)), 200),
            ("POST", "/v1/episodes", arrow_body(_columns(drop=("reward",))), 400),  # read, refused, still open
            ("GET", "/v1/policy", None, 200),
        ):
            conn.request(method, path, body=body, headers=auth)
            response = conn.getresponse()
            response.read()
            assert response.status == status and not response.will_close, (method, path)
    finally:
        conn.close()
    assert rig.stored() == 3


# ------------------------------------------------------------------------------------------------- episodes


def test_good_episode_is_stored_in_real_with_gateway_stamps(rig):
    sent = episode(120)  # over insert_chunk_rows (50): three inserts, one flush
    answer = send_episode(rig.url, TOKEN, sent, policy_version=1)
    writer = rig.gateway.writer_id
    assert writer_role(writer) == "gateway" and writer_index(writer) == 0
    assert answer["rows"] == 120 and answer["writer_id"] == writer and answer["episode_id"] == episode_id(writer, 0)
    assert rig.stored() == 120

    rows = rig.shard.sample_sequences("real", 1, 120)  # the only run of 120 consecutive steps: the episode
    rows = {name: values[0] for name, values in rows.items()}
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        np.testing.assert_array_equal(rows[name], sent[name], err_msg=name)
    np.testing.assert_array_equal(rows["step"], np.arange(120))
    assert set(rows["episode_id"].tolist()) == {episode_id(writer, 0)}
    assert set(rows["writer_id"].tolist()) == {writer}
    assert set(rows["policy_version"].tolist()) == {1}
    np.testing.assert_array_equal(rows["seq"], answer["first_seq"] + np.arange(120))

    # The next episode: the next episode id, seq continues; two record batches, list<float> vectors, no version.
    columns = _columns(7, terminated=np.zeros(7, bool))  # cut off: neither flag on the last row
    columns["obs"] = pa.array(columns["obs"].tolist(), pa.list_(pa.float64()))
    second = post(rig, arrow_body(columns, batches=2))
    assert second[0] == 200, second
    assert second[2]["episode_id"] == episode_id(writer, 1)
    assert second[2]["first_seq"] == answer["first_seq"] + 120
    assert rig.stored() == 127
    batch = rig.shard.sample("real", 2000)
    mine = batch["episode_id"] == episode_id(writer, 1)
    assert set(batch["policy_version"][mine].tolist()) == {-1}
    assert set(batch["step"][mine].tolist()) == set(range(7))
    stats = rig.gateway.stats()
    assert stats.episodes == 2 and stats.rows == 127 and stats.requests[200] >= 2


def test_concurrent_uploads_are_all_stored_once(make_rig):
    rig = make_rig(insert_chunk_rows=7)
    errors: list[BaseException] = []
    answers: list[dict] = []

    def robot(i: int) -> None:
        try:
            for j in range(3):
                answers.append(send_episode(rig.url, TOKEN, episode(10 + 3 * i + j), policy_version=1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({a["episode_id"] for a in answers}) == 12
    assert rig.stored() == sum(a["rows"] for a in answers)
    ranges = sorted((a["first_seq"], a["first_seq"] + a["rows"]) for a in answers)
    assert all(stop == nxt for (_, stop), (nxt, _) in zip(ranges, ranges[1:])), "seq ranges are contiguous"


# --------------------------------------------------------------------------------------------------- policy

PLAIN_TORCH = """
import json, sys
import torch
extra = {"spec.json": ""}
policy = torch.jit.load(sys.argv[1], _extra_files=extra)
with open(sys.argv[2]) as f:
    obs = torch.tensor(json.load(f), dtype=torch.float32)
ours = sorted(m for m in sys.modules if m.split(".")[0] in {"actors", "system", "replay", "learners", "ray"})
print(json.dumps({"version": json.loads(extra["spec.json"])["policy"]["version"], "dynaray_modules": ours,
                  "actions": policy(obs).tolist()}))
"""


def test_no_policy_yet_is_503_then_the_published_one(make_rig):
    rig = make_rig(publish=False)
    status, headers, payload = request(rig, "GET", "/v1/policy")
    assert status == 503 and "no policy published yet" in payload["error"]
    assert int(headers["retry-after"]) > 0
    assert fetch_spec(rig.url, TOKEN)["policy"]["version"] is None
    with pytest.raises(GatewayError, match="503"):
        fetch_policy(rig.url, TOKEN)
    rig.publish(policy_state(seed=3))
    _, spec = fetch_policy(rig.url, TOKEN)
    assert spec["policy"]["version"] == 1


def test_policy_download_runs_in_plain_torch_and_matches_the_policy(rig, tmp_path):
    spec = fetch_spec(rig.url, TOKEN)
    assert spec["observation"] == {"shape": [OBS_DIM], "dtype": "float32"}
    assert spec["action"]["low"] == [-3.0] and spec["action"]["high"] == [3.0]
    assert spec["policy"]["version"] == 1 and spec["upload"]["max_body_bytes"] == GatewayConfig().max_body_bytes
    assert [c["name"] for c in spec["upload"]["columns"]] == ["obs", "action", "reward", "next_obs", "terminated",
                                                              "truncated"]

    path = tmp_path / "policy.pt"
    module, archived_spec = fetch_policy(rig.url, TOKEN, path=path)
    assert archived_spec == spec
    obs = np.random.default_rng(0).standard_normal((64, OBS_DIM)).astype(np.float32) * 3
    (tmp_path / "obs.json").write_text(json.dumps(obs.tolist()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_TORCH, str(path), str(tmp_path / "obs.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == 1
    assert report["dynaray_modules"] == [], "the policy must run without any dynaray module"

    policy = make_policy()
    policy.load_state(rig.states[1])
    expected = policy.act(obs, deterministic=True)
    actions = np.asarray(report["actions"], dtype=np.float32)
    assert actions.shape == (64, ACT_DIM)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    assert np.all(np.abs(actions) <= 3.0)
    np.testing.assert_allclose(module(torch.from_numpy(obs)).numpy(), expected, rtol=0, atol=1e-6)


def test_new_policy_version_is_exported_once_and_served(rig):
    _, first = fetch_policy(rig.url, TOKEN)
    assert first["policy"]["version"] == 1
    version = rig.publish(policy_state(seed=2))
    assert version == 2
    obs = np.random.default_rng(1).standard_normal((8, OBS_DIM)).astype(np.float32)
    for _ in range(2):
        module, spec = fetch_policy(rig.url, TOKEN)
        assert spec["policy"]["version"] == 2
    policy = make_policy()
    policy.load_state(rig.states[2])
    np.testing.assert_allclose(module(torch.from_numpy(obs)).numpy(), policy.act(obs, deterministic=True), atol=1e-6)
    stats = rig.gateway.stats()
    assert stats.policy_exports == 2 and stats.policy_downloads == 3 and stats.policy_version == 2


def test_exported_module_checks_its_input_shape():
    policy = make_policy()
    module, _ = load_policy(export_torchscript(policy.actor, {"policy": {"version": 0}}))
    with pytest.raises(Exception, match=r"expected \(B, 4\)"):
        module(torch.zeros(3, 5))


# -------------------------------------------------------------------------------------------------- example


def test_example_robot_drives_an_env_through_the_gateway(rig, tmp_path):
    spec = importlib.util.spec_from_file_location("gateway_robot", REPO / "examples" / "gateway_robot.py")
    robot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(robot)
    answers = robot.run_robot(rig.url, TOKEN, episodes=3, max_episode_steps=25, noise=0.2, wait_s=5)
    assert len(answers) == 3
    assert rig.stored() == sum(a["rows"] for a in answers)
    batch = rig.shard.sample("real", 500)
    assert set(batch["policy_version"].tolist()) == {1}
    assert set(batch["writer_id"].tolist()) == {rig.gateway.writer_id}
    wrong = tmp_path / "token"
    wrong.write_text("wrong-token-0123456789abc\n")
    wrong.chmod(0o600)
    assert robot.main(["--url", rig.url, "--token-file", str(wrong), "--episodes", "1"]) == 1
    onnx = robot.run_robot(rig.url, TOKEN, episodes=1, max_episode_steps=10, noise=0.0, wait_s=5,
                           policy_format="onnx")
    assert onnx[0]["rows"] > 0
