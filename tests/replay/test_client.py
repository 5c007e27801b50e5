import threading
import time

import numpy as np
import pytest

from replay import (
    PendingSample, RateLimiterConfig, ReplayClient, ReplayConfig, ReplayShard, ReplayTimeout, SchemaError, TableConfig,
)
from replay.handles import LocalHandle
from system.config import ConfigError, load_config
from tests.replay.helpers import COLUMNS, make_chunk, table_config

FAST = dict(sample_timeout_s=0.2, insert_timeout_s=0.2)


def _local(num_shards=2, limiters=None, capacity=10_000, **config):
    shards = [ReplayShard([table_config(capacity, limiters)], seed=0, index=i) for i in range(num_shards)]
    config = ReplayConfig(num_shards=num_shards, **{**FAST, **config})
    return shards, ReplayClient([LocalHandle(s) for s in shards], config, local=True, seed=0)


def test_inserts_round_robin_over_shards_from_writer_offset():
    shards, client = _local()
    for i in range(5):
        client.insert("real", make_chunk(10, start_seq=10 * i, writer_id=3), writer_id=3)
    client.flush()
    assert client.inflight() == 0 and client.pending_rows() == 0
    assert [s.size("real") for s in shards] == [20, 30]  # writer 3 starts at shard 1
    first_on_1 = shards[1].stats()["real"]
    assert first_on_1["inserted"] == 30


def test_sample_splits_in_proportion_to_sizes():
    shards, client = _local()
    shards[0].insert("real", make_chunk(300, writer_id=0), writer_id=0)
    shards[1].insert("real", make_chunk(100, start_seq=1000, writer_id=0), writer_id=0)
    assert client.sizes("real") == [300, 100]
    per_batch = []
    for _ in range(200):
        batch = client.sample("real", 30)
        assert batch["obs"].shape == (30, 4)
        per_batch.append(int((batch["seq"] >= 1000).sum()))
    assert set(per_batch) == {7, 8}  # quota 7.5: floor or ceiling, 7.5 on average
    assert abs(np.mean(per_batch) - 7.5) < 0.15
    counts = client._split(257, [300, 100])
    assert counts.sum() == 257 and set(counts.tolist()) in ({193, 64}, {192, 65})


def test_sample_gives_empty_shards_nothing_and_splits_evenly_when_all_empty():
    _, client = _local(num_shards=3)
    assert client._split(10, [0, 5, 0]).tolist() == [0, 10, 0]
    assert sorted(client._split(9, [0, 0, 0]).tolist()) == [3, 3, 3]


def test_sampling_client_learns_sizes_without_inserting():
    shards, client = _local()
    shards[1].insert("real", make_chunk(50), writer_id=0)
    batch = client.sample("real", 8)
    assert len(batch["seq"]) == 8
    assert client._sizes["real"] == [0, 50]


def test_not_now_inserts_are_retried_until_the_consumer_samples():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shards, client = _local(num_shards=1, limiters={"learner": limiter}, max_inflight_inserts=1, insert_timeout_s=5.0)
    for i in range(2):
        client.insert("real", make_chunk(10, start_seq=10 * i), writer_id=0)
    client.insert("real", make_chunk(10, start_seq=20), writer_id=0)  # answered "not now", kept in flight
    assert client.inflight() == 1 and client.pending_rows() == 10
    sampler = ReplayClient([LocalHandle(shards[0])], client.config, local=True)
    timer = threading.Timer(0.05, lambda: sampler.sample("real", 10, consumer="learner"))
    timer.start()
    client.flush()
    timer.join()
    assert shards[0].size("real") == 30
    assert shards[0].stats()["real"]["inserts_waited"] >= 1


def test_insert_timeout_names_the_blocking_consumer():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    _, client = _local(num_shards=1, limiters={"learner": limiter}, max_inflight_inserts=1)
    client.insert("real", make_chunk(20), writer_id=0)
    client.insert("real", make_chunk(10, start_seq=20), writer_id=0)
    with pytest.raises(ReplayTimeout, match=r"rate limiter: consumer\(s\) \['learner'\] are behind"):
        client.insert("real", make_chunk(10, start_seq=30), writer_id=0)
    with pytest.raises(ReplayTimeout, match=r"1 insert\(s\) \(10 rows\) into table\(s\) \['real'\]"):
        client.flush(timeout=0.05)


def test_shard_errors_surface_from_the_client():
    _, client = _local()
    bad = make_chunk(3)
    del bad["reward"]
    with pytest.raises(SchemaError, match="missing column"):
        client.insert("real", bad, writer_id=0)
        client.flush()
    assert client.inflight() == 0


def test_sample_timeout_when_table_is_empty():
    _, client = _local()
    start = time.monotonic()
    with pytest.raises(ReplayTimeout) as info:
        client.sample("real", 8, consumer="learner")
    assert 0.2 <= time.monotonic() - start < 2.0
    message = str(info.value)
    assert "sample of 8 rows from table 'real' for consumer 'learner' timed out after" in message
    assert "table 'real' is empty (no inserts arriving)" in message


def test_sample_timeout_explains_rate_limiter():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shards, client = _local(num_shards=1, limiters={"learner": limiter})
    with pytest.raises(ReplayTimeout, match=r"only 0 of min_size 10 rows inserted"):
        client.sample("real", 5, consumer="learner")
    shards[0].insert("real", make_chunk(10), writer_id=0)
    client.sample("real", 10, consumer="learner")
    with pytest.raises(ReplayTimeout, match=r"consumer 'learner' is ahead of its samples-per-insert ratio 1 by 10"):
        client.submit_sample("real", 5, consumer="learner").result(timeout=0.05)


def test_pending_sample_done_and_resubmission():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shards, client = _local(limiters={"learner": limiter})
    shards[0].insert("real", make_chunk(10), writer_id=0)
    shards[1].insert("real", make_chunk(10, start_seq=100), writer_id=0)
    client.sample("real", 20, consumer="learner")  # both shards now 10 rows ahead of their ratio
    pending = client.submit_sample("real", 6, consumer="learner")
    assert not pending.done() and not pending.done()
    shards[0].insert("real", make_chunk(10, start_seq=10), writer_id=0)
    assert not pending.done()
    shards[1].insert("real", make_chunk(10, start_seq=110), writer_id=0)
    assert pending.done()
    batch = pending.result()
    assert batch["seq"].shape == (6,) and batch["obs"].shape == (6, 4)
    assert pending.result() is batch


def test_refused_part_moves_to_a_shard_that_can_serve_it():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shards, client = _local(limiters={"learner": limiter})
    shards[0].insert("real", make_chunk(10), writer_id=0)
    shards[1].insert("real", make_chunk(20, start_seq=100), writer_id=0)
    assert shards[0].sample("real", 10, consumer="learner") is not None  # ahead on shard 0, credit on shard 1
    client.sizes("real")
    batch = client.sample("real", 18, consumer="learner")
    assert (batch["seq"] >= 100).all()


def test_config_validation():
    with pytest.raises(ConfigError, match=r"replay.num_shards=0: expected an integer >= 1"):
        load_config([], ["replay.num_shards=0"])
    with pytest.raises(ConfigError, match=r"replay.sample_timeout_s=0.0: expected a finite number > 0"):
        load_config([], ["replay.sample_timeout_s=0"])
    with pytest.raises(ConfigError, match=r"replay.max_inflight_inserts=2.5: expected int"):
        load_config([], ["replay.max_inflight_inserts=2.5"])
    with pytest.raises(ConfigError, match=r"replay.fsync='always': expected one of 'none', 'every_insert', 'interval'"):
        load_config([], ["replay.fsync=always"])
    config = ReplayConfig(num_shards=3, error_buffer_steps=100)
    assert config.shard_capacity(1000) == 334
    assert config.limiter(samples_per_insert=4.0, min_size=500) == RateLimiterConfig(4.0, 167, 400.0 / 3)


def _filled(sizes, limiters=None, **config):
    """Shards holding ``sizes`` rows, with seq (and obs[:, 0]) numbering every row over all shards."""
    shards, client = _local(num_shards=len(sizes), limiters=limiters, **config)
    start = 0
    for shard, size in zip(shards, sizes):
        if size:
            shard.insert("real", make_chunk(size, start_seq=start), writer_id=0)
        start += size
    return shards, client


def test_one_shard_batches_give_every_row_the_probability_of_uniform_sampling_over_all_shards():
    shards, client = _filled([300, 100, 0], sample_batches_per_call=8, sample_calls_in_flight=2)
    draws = 12_000
    single = client.stream("real", 1)  # one row per call: every draw independent, so a chi-square test applies
    seqs = np.concatenate([single.take()["seq"] for _ in range(draws)])
    counts = np.bincount(seqs, minlength=400)
    assert counts.sum() == draws and len(counts) == 400
    expected = draws / 400
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 399 + 4 * np.sqrt(2 * 399)  # 399 degrees of freedom, about p = 1e-4
    # whole batches, several per call: every batch from one shard, shards in proportion to their sizes
    stream = client.stream("real", 10)
    batches = [stream.take() for _ in range(800)]
    on_first = [bool((b["seq"] < 300).all()) for b in batches]
    assert all(on_first[i] or (b["seq"] >= 300).all() for i, b in enumerate(batches))
    calls = np.array(on_first[: len(on_first) // 8 * 8]).reshape(-1, 8)
    assert (calls == calls[:, :1]).all()  # the 8 batches of one call come from one shard
    share = calls[:, 0].mean()
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / len(calls))
    assert 0 <= 8 * stream.calls - len(batches) <= 2 * 8  # at most calls_in_flight calls' batches drawn ahead
    assert shards[2].stats()["real"]["sampled"] == 0


def test_one_shard_batches_keep_every_shards_rate_limiter_exact():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=100.0)
    shards, client = _filled([100, 100], limiters={"learner": limiter}, sample_batches_per_call=8)
    stream = client.stream("real", 10, consumer="learner")
    taken = []
    for _ in range(100):  # in process a refused call tries one shard per poll
        batch = stream.take(block=False)
        if batch is not None:
            taken.append(batch)
    assert stream.ready() == 0
    stats = [s.stats()["real"]["consumers"]["learner"] for s in shards]
    seqs = np.concatenate([b["seq"] for b in taken])
    # each shard counted exactly the rows it gave: 90 behind + 100 of error buffer admit 19 whole batches of 10, and
    # 38 batches are no whole number of 8-batch calls, so some calls got fewer batches than they asked for
    assert [s["sampled"] for s in stats] == [int((seqs < 100).sum()), int((seqs >= 100).sum())] == [190, 190]
    assert [s["lag"] for s in stats] == [-100.0, -100.0] and stream.batches == len(taken) == 38
    shards[0].insert("real", make_chunk(20, start_seq=1000), writer_id=0)
    more = [b for b in (stream.take(block=False) for _ in range(100)) if b is not None]
    assert len(more) == 2 and (np.concatenate([b["seq"] for b in more]) < 1020).all()  # 20 new rows: 2 batches
    assert shards[0].stats()["real"]["consumers"]["learner"]["lag"] == -100.0


def test_one_shard_batches_have_keys_and_weights_normalised_per_batch():
    shards = [ReplayShard([TableConfig("real", 1000, COLUMNS, sampler="prioritized")], seed=0, index=i)
              for i in range(2)]
    client = ReplayClient([LocalHandle(s) for s in shards], ReplayConfig(**FAST), local=True)
    for i, shard in enumerate(shards):
        shard.insert("real", make_chunk(100, start_seq=100 * i), writer_id=0)
        shard.update_priorities("real", np.arange(100), np.linspace(0.1, 10, 100))
    stream = client.stream("real", 16, with_keys=True)
    for _ in range(20):
        batch = stream.take()
        shard = batch["key"] % 2
        assert (shard == shard[0]).all() and batch["weight"].max() == 1.0 and (batch["weight"] > 0).all()
        np.testing.assert_array_equal(batch["seq"], batch["key"] // 2 + 100 * shard)


def test_submit_batch_follows_learner_sampling():
    _, client = _filled([50, 50])
    ticket = client.submit_batch("real", 8)
    assert ticket.done() and ticket.result()["seq"].shape == (8,) and ticket.result() is ticket.result()
    _, split = _filled([50, 50], learner_sampling="split")
    assert isinstance(split.submit_batch("real", 8), PendingSample)
    with pytest.raises(ConfigError, match=r"replay.learner_sampling='any': expected 'one_shard' or 'split'"):
        load_config([], ["replay.learner_sampling=any"])
    with pytest.raises(ConfigError, match=r"replay.sample_batches_per_call=0: expected an integer >= 1"):
        load_config([], ["replay.sample_batches_per_call=0"])
