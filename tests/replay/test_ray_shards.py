"""The replay client against real Ray shard actors (the only replay test module that starts Ray).

Ray must run inside a loopback-only network namespace here, so this module runs only with DYNARAY_NETNS=1:
    unshare -n sh -c 'ip link set lo up && DYNARAY_NETNS=1 .venv/bin/python -m pytest tests/replay -q'
"""

import os
import signal
import threading
import time

import numpy as np
import pytest

from replay import RateLimiterConfig, ReplayClient, ReplayConfig, ReplayShard, TableConfig
from tests.replay.helpers import make_chunk, table_config

pytestmark = pytest.mark.ray

SPI, MIN_SIZE, ERROR_BUFFER = 2.0, 128, 128.0
CHUNK, BATCH = 32, 64


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def ray_shards(ray_cluster):
    """Two fresh shard actors with table ``real`` rate-limited for consumer ``learner``."""
    limiter = RateLimiterConfig(SPI, MIN_SIZE, ERROR_BUFFER)
    tables = [table_config(capacity=5000, limiters={"learner": limiter})]
    actor = ray_cluster.remote(ReplayShard).options(max_concurrency=8)
    shards = [actor.remote(tables, seed=0, index=i) for i in range(2)]
    yield shards
    for shard in shards:
        ray_cluster.kill(shard)


@pytest.mark.parametrize("mode", ["split", "one_shard"])
def test_client_inserts_while_a_thread_samples_and_the_ratio_holds(ray_shards, mode):
    """``split``: ``submit_sample``; ``one_shard``: ``submit_batch``, the learners' path (whole batches from one shard,
    4 per call, 2 calls in flight); the shards' limiters hold the ratio either way."""
    config = ReplayConfig(num_shards=2, long_poll_s=0.2, sample_timeout_s=30.0, insert_timeout_s=30.0,
                          learner_sampling=mode, sample_batches_per_call=4, sample_calls_in_flight=2)
    drawn_ahead = BATCH if mode == "split" else 2 * 4 * BATCH  # rows a sampler may have drawn and not handed out
    writer = ReplayClient(ray_shards, config, local=False, seed=0)
    learner = ReplayClient(ray_shards, config, local=False, seed=1)
    stop = threading.Event()
    sampled = []
    errors = []

    def learn():
        try:
            while not stop.is_set():
                pending = learner.submit_batch("real", BATCH, consumer="learner")
                while not pending.done():
                    if stop.is_set():
                        return
                    time.sleep(0.001)
                sampled.append(len(pending.result()["seq"]))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=learn)
    thread.start()
    rows = 0
    start = time.monotonic()
    while time.monotonic() - start < 2.5 or rows <= 20 * MIN_SIZE:  # a loaded machine takes longer for the rows
        assert time.monotonic() - start < 120, f"only {rows} rows inserted in 120 s"
        writer.insert("real", make_chunk(CHUNK, start_seq=rows, writer_id=7), writer_id=7)
        rows += CHUNK
    writer.flush()
    time.sleep(0.5)  # the learner catches up with the last inserts
    stop.set()
    thread.join(30.0)
    assert not thread.is_alive() and not errors
    time.sleep(2 * config.long_poll_s)  # parts of an abandoned sample finish their long poll

    stats = writer.stats()
    assert sum(s["real"]["inserted"] for s in stats) == rows
    assert sum(s["real"]["duplicates"] for s in stats) == 0
    assert abs(stats[0]["real"]["inserted"] - stats[1]["real"]["inserted"]) <= CHUNK
    total_sampled = sum(s["real"]["consumers"]["learner"]["sampled"] for s in stats)
    assert sum(sampled) <= total_sampled <= sum(sampled) + drawn_ahead
    for shard in stats:
        learner_stats = shard["real"]["consumers"]["learner"]
        assert -ERROR_BUFFER <= learner_stats["lag"] <= ERROR_BUFFER, learner_stats
    assert rows > 20 * MIN_SIZE
    assert abs(total_sampled - SPI * (rows - 2 * MIN_SIZE)) <= 2 * ERROR_BUFFER
    assert writer.sizes("real") == [s["real"]["size"] for s in stats]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _call(shard, fn):
    """Run ``fn(shard_object)`` inside the shard actor."""
    import ray

    return ray.get(shard.__ray_call__.remote(fn), timeout=60)


def _priority(seq: np.ndarray) -> np.ndarray:
    """The priority every update gives a row: fixed per row, so the last update applied does not matter."""
    return 1.0 + seq % 7


def test_sigkilled_shard_restarts_with_every_acknowledged_row_once_and_its_priorities(ray_cluster, tmp_path):
    import ray

    columns = table_config().columns
    tables = [TableConfig("real", 100_000, columns, sampler="prioritized", persist=True, snapshot_every_inserts=2000)]
    actor = ray.remote(ReplayShard).options(max_concurrency=8, max_restarts=3)
    shards = [actor.remote(tables, seed=0, index=i, directory=str(tmp_path)) for i in range(2)]
    config = ReplayConfig(num_shards=2, long_poll_s=0.2, sample_timeout_s=60.0, insert_timeout_s=60.0,
                          shard_restart_timeout_s=60.0)
    writer = ReplayClient(shards, config, local=False, seed=0)
    learner = ReplayClient(shards, config, local=False, seed=1)
    stop = threading.Event()
    errors = []
    sampled_seq: dict[int, int] = {}
    written = []

    def write():
        try:
            while not stop.is_set():
                writer.insert("real", make_chunk(CHUNK, start_seq=CHUNK * len(written), writer_id=5), writer_id=5)
                written.append(CHUNK)
            writer.flush()
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    def learn():
        try:
            while not stop.is_set():
                batch = learner.sample("real", BATCH, with_keys=True)
                learner.update_priorities("real", batch["key"], _priority(batch["seq"]))
                sampled_seq.update(zip(batch["key"].tolist(), batch["seq"].tolist()))
            learner.flush_priorities()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=learn)]
    for thread in threads:
        thread.start()
    wait_for(lambda: errors or len(written) >= 20, "inserts before the kill")
    pid = _call(shards[0], lambda shard: os.getpid())
    os.kill(pid, signal.SIGKILL)
    before = len(written)
    # The shard restarted and recovered: inserts go on.
    wait_for(lambda: errors or len(written) >= before + 20, "inserts after the restart")
    stop.set()
    for thread in threads:
        thread.join(120.0)
    assert not any(t.is_alive() for t in threads) and not errors, errors

    assert _call(shards[0], lambda shard: os.getpid()) != pid
    assert writer.shard_failures + learner.shard_failures > 0
    rows = sum(written)
    exported = [_call(shard, lambda s: s._tables["real"].table.export()[0]) for shard in shards]
    seqs = np.concatenate([columns["seq"] for columns in exported])
    assert np.sort(seqs).tolist() == list(range(rows)), f"{rows} rows acknowledged, {len(seqs)} stored"
    assert all((columns["writer_id"] == 5).all() for columns in exported)
    assert rows > 10 * CHUNK

    keys = np.array(sorted(sampled_seq), dtype=np.int64)
    alpha = tables[0].priority_exponent
    expected = _priority(np.array([sampled_seq[k] for k in keys.tolist()])) ** alpha  # the sum tree holds p^alpha
    for index, shard in enumerate(shards):
        mine = keys % 2 == index
        local = keys[mine] // 2
        stored = _call(shard, lambda s: s._tables["real"].table.priorities(local))
        np.testing.assert_allclose(stored, expected[mine])
    for shard in shards:
        ray.kill(shard)


def test_sequences_and_prioritized_keys_through_ray_shards(ray_cluster):
    import ray

    tables = [table_config(capacity=5000), TableConfig("prio", 5000, table_config().columns, sampler="prioritized")]
    actor = ray.remote(ReplayShard).options(max_concurrency=4)
    shards = [actor.remote(tables, seed=0, index=i) for i in range(2)]
    client = ReplayClient(shards, ReplayConfig(num_shards=2, long_poll_s=0.2, sample_timeout_s=30.0), local=False)
    for table in ("real", "prio"):  # episodes of 10 steps (make_chunk); chunks alternate between the shards
        for start in range(0, 40 * CHUNK, CHUNK):
            client.insert(table, make_chunk(CHUNK, start_seq=start, writer_id=1), writer_id=1)
    client.flush()

    batch = client.sample("real", 50, sequence_length=4)
    assert batch["obs"].shape == (50, 4, 4)
    assert (batch["episode_id"] == batch["episode_id"][:, :1]).all()
    assert (np.diff(batch["step"], axis=1) == 1).all() and (np.diff(batch["seq"], axis=1) == 1).all()

    keys = np.unique(client.sample("prio", 64, with_keys=True)["key"])
    high = np.concatenate([keys[keys % 2 == 0][:2], keys[keys % 2 == 1][:2]])  # two rows on each shard: samples
    assert len(np.unique(high)) == 4  # are split over shards by size, then prioritized within each shard
    client.update_priorities("prio", high, np.full(4, 1000.0))
    client.flush_priorities()
    counts = np.zeros(4)
    for _ in range(5):
        keys = client.sample("prio", 256, with_keys=True)["key"]
        counts += np.isin(keys, high).sum()
    # 4 rows of 1280 with priority 1000 vs 1 (alpha 0.6, 1000 ** 0.6 = 63): they hold 4 * 63 / (4 * 63 + 1276).
    share = counts[0] / (5 * 256)
    assert 0.85 * 4 * 63 / (4 * 63 + 1276) < share < 1.15 * 4 * 63 / (4 * 63 + 1276), share
    for shard in shards:
        ray.kill(shard)
