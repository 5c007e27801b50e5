"""The replay client against real Ray shard actors (the only replay test module that starts Ray).

Ray must run inside a loopback-only network namespace here, so this module runs only with DYNARAY_NETNS=1:
    unshare -n sh -c 'ip link set lo up && DYNARAY_NETNS=1 .venv/bin/python -m pytest tests/replay -q'
"""

import os
import threading
import time

import pytest

from replay import RateLimiterConfig, ReplayClient, ReplayConfig, ReplayShard
from tests.replay.helpers import make_chunk, table_config

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        os.environ.get("DYNARAY_NETNS") != "1", reason="starts Ray: run in a loopback-only netns with DYNARAY_NETNS=1"
    ),
]

SPI, MIN_SIZE, ERROR_BUFFER = 2.0, 128, 128.0
CHUNK, BATCH = 32, 64


@pytest.fixture(scope="module")
def ray_shards():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        limiter = RateLimiterConfig(SPI, MIN_SIZE, ERROR_BUFFER)
        tables = [table_config(capacity=5000, limiters={"learner": limiter})]
        actor = ray.remote(ReplayShard).options(max_concurrency=8)
        shards = [actor.remote(tables, seed=0, index=i) for i in range(2)]
        yield shards
    finally:
        ray.shutdown()


def test_client_inserts_while_a_thread_samples_and_the_ratio_holds(ray_shards):
    config = ReplayConfig(num_shards=2, long_poll_s=0.2, sample_timeout_s=30.0, insert_timeout_s=30.0)
    writer = ReplayClient(ray_shards, config, local=False, seed=0)
    learner = ReplayClient(ray_shards, config, local=False, seed=1)
    stop = threading.Event()
    sampled = []
    errors = []

    def learn():
        try:
            while not stop.is_set():
                pending = learner.submit_sample("real", BATCH, consumer="learner")
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
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
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
    assert sum(sampled) <= total_sampled < sum(sampled) + BATCH
    for shard in stats:
        learner_stats = shard["real"]["consumers"]["learner"]
        assert -ERROR_BUFFER <= learner_stats["lag"] <= ERROR_BUFFER, learner_stats
    assert rows > 20 * MIN_SIZE
    assert abs(total_sampled - SPI * (rows - 2 * MIN_SIZE)) <= 2 * ERROR_BUFFER
    assert writer.sizes("real") == [s["real"]["size"] for s in stats]
