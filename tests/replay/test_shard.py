import threading
import time

import numpy as np
import pytest

from replay import RateLimiterConfig, ReplayShard, SchemaError, TableConfig
from tests.replay.helpers import COLUMNS, make_chunk, table_config


def test_dedup_same_writer_and_seq_stores_once():
    shard = ReplayShard([table_config()])
    assert shard.insert("real", make_chunk(8), writer_id=0) == {"status": "ok", "size": 8}
    assert shard.insert("real", make_chunk(8), writer_id=0) == {"status": "duplicate", "size": 8}
    assert shard.insert("real", make_chunk(8, writer_id=1), writer_id=1)["status"] == "ok"
    assert shard.size("real") == 16
    assert shard.stats()["real"]["duplicates"] == 1


def test_dedup_accepts_out_of_order_chunks_once():
    shard = ReplayShard([table_config()])
    assert shard.insert("real", make_chunk(8, start_seq=8), writer_id=0)["status"] == "ok"
    assert shard.insert("real", make_chunk(8, start_seq=0), writer_id=0)["status"] == "ok"
    assert shard.insert("real", make_chunk(8, start_seq=0), writer_id=0)["status"] == "duplicate"
    assert shard.insert("real", make_chunk(8, start_seq=8), writer_id=0)["status"] == "duplicate"
    assert shard.size("real") == 16


def test_unknown_table_names_known_tables():
    shard = ReplayShard([table_config(name="real"), table_config(name="imagined")])
    with pytest.raises(KeyError, match=r"unknown table 'reel'; this shard has tables \['imagined', 'real'\]"):
        shard.insert("reel", make_chunk(1), writer_id=0)
    with pytest.raises(KeyError, match="unknown table 'x'"):
        shard.sample("x", 1)
    assert shard.sizes() == {"real": 0, "imagined": 0}


def test_schema_error_stores_nothing():
    shard = ReplayShard([table_config()])
    bad = make_chunk(4)
    bad["obs"] = np.zeros((4, 5), np.float32)
    with pytest.raises(SchemaError, match=r"column 'obs': expected shape \(N, 4\), got \(4, 5\)"):
        shard.insert("real", bad, writer_id=0)
    with pytest.raises(SchemaError, match=r"column 'writer_id' holds \[3\] but insert was called with writer_id=0"):
        shard.insert("real", make_chunk(4, writer_id=3), writer_id=0)
    with pytest.raises(SchemaError, match="chunk has no rows"):
        shard.insert("real", make_chunk(0), writer_id=0)
    assert shard.size("real") == 0
    assert shard.insert("real", make_chunk(4), writer_id=0)["status"] == "ok"


def test_tables_need_a_seq_column():
    with pytest.raises(ValueError, match="table 'real' needs a scalar int64 'seq' column"):
        ReplayShard([TableConfig("real", 10, COLUMNS[:-1])])


def test_unlimited_sample_waits_only_for_rows():
    shard = ReplayShard([table_config(limiters={"learner": RateLimiterConfig(1.0, 100, 50.0)})], seed=3)
    assert shard.sample("real", 4) is None
    shard.insert("real", make_chunk(10), writer_id=0)
    batch = shard.sample("real", 32, consumer="evaluator")
    assert batch["obs"].shape == (32, 4) and set(batch["seq"]) <= set(range(10))
    assert shard.sample("real", 1, consumer="learner") is None
    stats = shard.stats()["real"]
    assert stats["consumers"]["evaluator"] == {"sampled": 32, "samples_per_insert": None}
    assert stats["samples_waited"] == 2 and stats["sampled"] == 32


def test_samples_are_seeded_per_shard_index():
    def draw(seed, index):
        shard = ReplayShard([table_config()], seed=seed, index=index)
        shard.insert("real", make_chunk(100), writer_id=0)
        return shard.sample("real", 16)["seq"]

    np.testing.assert_array_equal(draw(0, 0), draw(0, 0))
    assert not np.array_equal(draw(0, 0), draw(0, 1))


def test_insert_answers_not_now_when_a_consumer_is_behind():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shard = ReplayShard([table_config(limiters={"learner": limiter})])
    assert shard.insert("real", make_chunk(10), writer_id=0)["status"] == "ok"
    assert shard.insert("real", make_chunk(10, start_seq=10), writer_id=0)["status"] == "ok"
    ack = shard.insert("real", make_chunk(10, start_seq=20), writer_id=0)
    assert ack == {"status": "not_now", "size": 20, "blocked_by": "learner"}
    start = time.monotonic()
    assert shard.insert("real", make_chunk(10, start_seq=20), writer_id=0, timeout=0.05)["status"] == "not_now"
    assert time.monotonic() - start >= 0.05
    assert shard.sample("real", 10, consumer="learner") is not None
    assert shard.insert("real", make_chunk(10, start_seq=20), writer_id=0)["status"] == "ok"
    assert shard.stats()["real"]["inserts_waited"] == 2


def test_waiting_insert_is_woken_by_a_sample():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=10.0)
    shard = ReplayShard([table_config(limiters={"learner": limiter})])
    shard.insert("real", make_chunk(20), writer_id=0)
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(shard.insert("real", make_chunk(10, start_seq=20), writer_id=0, timeout=10.0))
    )
    start = time.monotonic()
    thread.start()
    time.sleep(0.05)
    assert shard.sample("real", 10, consumer="learner") is not None
    thread.join(5.0)
    assert result["status"] == "ok" and time.monotonic() - start < 5.0


def test_threaded_insert_and_sample_both_progress_and_ratio_holds():
    spi, min_size, eb = 2.0, 64, 128.0
    shard = ReplayShard([table_config(capacity=2000, limiters={"learner": RateLimiterConfig(spi, min_size, eb)})])
    stop = time.monotonic() + 1.0
    counts = {"inserted": 0, "sampled": 0}
    errors = []
    violations = []

    def writer():
        seq = 0
        try:
            while time.monotonic() < stop:
                if shard.insert("real", make_chunk(16, start_seq=seq), writer_id=0, timeout=0.05)["status"] == "ok":
                    seq += 16
                    counts["inserted"] += 16
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    def learner():
        try:
            while time.monotonic() < stop:
                if shard.sample("real", 32, consumer="learner", timeout=0.05) is not None:
                    counts["sampled"] += 32
                    lag = shard.stats()["real"]["consumers"]["learner"]["lag"]
                    if not -eb <= lag <= eb:
                        violations.append(lag)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=learner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
    assert not errors and not violations
    stats = shard.stats()["real"]
    assert stats["inserted"] == counts["inserted"] and stats["sampled"] == counts["sampled"]
    assert counts["inserted"] > 10 * min_size and counts["sampled"] > 0
    assert -eb <= spi * (counts["inserted"] - min_size) - counts["sampled"] <= eb


def test_max_times_sampled_through_the_shard_waits_for_samples_left():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=4, error_buffer=64.0)
    config = TableConfig("real", 100, COLUMNS, (("learner", limiter),), max_times_sampled=1)
    shard = ReplayShard([config])
    shard.insert("real", make_chunk(8), writer_id=0)
    batch = shard.sample("real", 8, consumer="learner", with_keys=True)
    assert sorted(batch["key"].tolist()) == list(range(8))
    assert shard.size("real") == 0
    start = time.monotonic()
    assert shard.sample("real", 1, timeout=0.05) is None  # nothing left to sample: waits, then "not now"
    assert time.monotonic() - start >= 0.05
    result = {}
    waiter = threading.Thread(target=lambda: result.update(batch=shard.sample("real", 4, timeout=10.0)))
    waiter.start()
    time.sleep(0.05)
    shard.insert("real", make_chunk(4, start_seq=8), writer_id=0)  # wakes the waiting sample
    waiter.join(5.0)
    assert sorted(result["batch"]["seq"].tolist()) == [8, 9, 10, 11]
    stats = shard.stats()["real"]
    assert (stats["size"], stats["removed"], stats["inserted"], stats["evicted"]) == (0, 12, 12, 12)
    # removed rows do not count against inserts: the limiter saw 12 rows inserted, 8 sampled by the learner
    assert stats["consumers"]["learner"]["inserted"] == 12 and stats["consumers"]["learner"]["sampled"] == 8
    assert stats["samples_waited"] == 1
    with pytest.raises(ValueError, match="a sample of 101 rows can never be served: .* at most 100 samples"):
        shard.sample("real", 101)


def test_non_finite_drop_through_the_shard():
    shard = ReplayShard([TableConfig("real", 100, COLUMNS, non_finite="drop")])
    chunk = make_chunk(6)
    chunk["obs"][0, 1] = np.nan  # the chunk's first row: its seq is still the dedup key
    chunk["reward"][4] = -np.inf
    assert shard.insert("real", chunk, writer_id=0) == {"status": "ok", "size": 4, "dropped_non_finite": 2}
    np.testing.assert_array_equal(np.sort(shard.sample("real", 200)["seq"].astype(int))[[0, -1]], [1, 5])
    assert shard.insert("real", chunk, writer_id=0) == {"status": "duplicate", "size": 4}
    empty = make_chunk(3, start_seq=6)
    empty["next_obs"][:] = np.inf
    assert shard.insert("real", empty, writer_id=0) == {"status": "ok", "size": 4, "dropped_non_finite": 3}
    assert shard.insert("real", empty, writer_id=0)["status"] == "duplicate"  # the key was recorded
    assert shard.insert("real", make_chunk(2, start_seq=9), writer_id=0) == {"status": "ok", "size": 6}
    stats = shard.stats()["real"]
    assert stats["dropped_non_finite"] == 5 and stats["duplicates"] == 2 and stats["inserted"] == 6
    wrong = make_chunk(2, start_seq=20, writer_id=3)
    wrong["obs"][0, 0] = np.nan
    with pytest.raises(SchemaError, match=r"column 'writer_id' holds \[3\] but insert was called with writer_id=0"):
        shard.insert("real", wrong, writer_id=0)
    rejecting = ReplayShard([table_config()])
    with pytest.raises(SchemaError, match=r"column 'obs': non-finite values .* first at row 0"):
        rejecting.insert("real", chunk, writer_id=0)
    assert rejecting.size("real") == 0


def test_sample_of_several_batches_takes_as_many_as_the_limiter_admits_and_counts_them_all():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=60.0)
    shard = ReplayShard([table_config(1000, {"learner": limiter})])
    shard.insert("real", make_chunk(100), writer_id=0)  # lag 90: 90 + 60 rows may be sampled
    assert len(shard.sample("real", 10, consumer="learner", batches=4)["seq"]) == 40
    assert len(shard.sample("real", 10, consumer="learner", batches=12)["seq"]) == 110  # 110 admitted: 11 batches
    lag = shard.stats()["real"]["consumers"]["learner"]
    assert (lag["sampled"], lag["lag"]) == (150, -60.0)
    assert shard.sample("real", 10, consumer="learner", batches=8) is None  # not even one batch fits now
    assert len(shard.sample("real", 10, batches=3)["seq"]) == 30  # an unlimited consumer gets every batch
    with pytest.raises(ValueError, match="batches must be >= 1, got 0"):
        shard.sample("real", 10, batches=0)
