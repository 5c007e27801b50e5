"""Persistence of shard tables: write-ahead log, recovery, torn tails, snapshots (replay/persistence.py)."""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay import RateLimiterConfig, ReplayShard, TableConfig
from replay.persistence import (
    KEY_FIELD,
    PRIORITY_FIELD,
    TIMES_SAMPLED_FIELD,
    InsertRecord,
    TableStore,
    table_directory,
)
from tests.replay.helpers import COLUMNS, make_chunk

CHUNK = 8


def config(capacity=1000, sampler="uniform", persist=True, every=0, limiters=()):
    return TableConfig(
        "real", capacity, COLUMNS, limiters, sampler=sampler, persist=persist, snapshot_every_inserts=every
    )


def fill(shard, chunks, start=0, writer_id=0):
    for i in range(start, start + chunks):
        chunk = make_chunk(CHUNK, start_seq=i * CHUNK, writer_id=writer_id)
        assert shard.insert("real", chunk, writer_id)["status"] == "ok"


def rows(shard, table="real"):
    """Stored rows oldest to newest, with their keys (through the table, under the shard's lock)."""
    state = shard._state(table)
    with state.cond:
        data, inserted, priorities, _ = state.table.export()
    data["key"] = np.arange(inserted - len(data["seq"]), inserted)
    return data, priorities


def assert_same(a, b):
    (ra, pra), (rb, prb) = rows(a), rows(b)
    assert ra.keys() == rb.keys()
    for name in ra:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)
    if pra is not None:
        np.testing.assert_allclose(pra, prb)
    assert a.stats()["real"]["inserted"] == b.stats()["real"]["inserted"]


def table_dir(tmp_path):
    return table_directory(str(tmp_path), 0, "real")


def test_recovery_rebuilds_rows_order_keys_and_dedup(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 10)
    fill(shard, 3, start=100, writer_id=7)
    shard.close()
    again = ReplayShard([config()], directory=str(tmp_path))
    assert again.size("real") == 13 * CHUNK
    assert_same(shard, again)
    # a retried insert after the restart is still a duplicate
    assert again.insert("real", make_chunk(CHUNK, start_seq=5 * CHUNK), 0)["status"] == "duplicate"
    assert again.insert("real", make_chunk(CHUNK, start_seq=101 * CHUNK, writer_id=7), 7)["status"] == "duplicate"
    assert again.insert("real", make_chunk(CHUNK, start_seq=10 * CHUNK), 0)["status"] == "ok"
    again.close()
    third = ReplayShard([config()], directory=str(tmp_path))
    assert third.size("real") == 14 * CHUNK
    assert_same(again, third)
    third.close()


def test_recovery_without_close_and_second_shard_refused(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 4)
    with pytest.raises(RuntimeError, match="in use"):
        ReplayShard([config()], directory=str(tmp_path))
    # a killed process releases its lock; the unclosed stream (no end marker) is still read completely
    os.close(shard._state("real").store._lock_fd)
    again = ReplayShard([config()], directory=str(tmp_path))
    assert_same(shard, again)
    again.close()


def test_torn_tail_recovers_every_complete_record(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    ends = []
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    for i in range(6):
        fill(shard, 1, start=i)
        ends.append(os.path.getsize(wal))
    shard.close()
    full = open(wal, "rb").read()
    rng = np.random.default_rng(0)
    for offset in sorted(rng.integers(1, len(full) - 1, size=8).tolist()) + [ends[2] + 1, len(full) - 1]:
        root = tmp_path / f"torn-{offset}"
        os.makedirs(table_dir(root))
        with open(os.path.join(table_dir(root), "wal-0.log"), "wb") as f:
            f.write(full[:offset])
        complete = sum(end <= offset for end in ends)
        with pytest.warns(RuntimeWarning, match=r"wal-0\.log.*dropping \d+ byte"):
            again = ReplayShard([config()], directory=str(root))
        assert again.size("real") == complete * CHUNK, offset
        np.testing.assert_array_equal(rows(again)[0]["seq"], np.arange(complete * CHUNK))
        # the tail is cut off for good, new inserts go to a new generation and survive another restart
        fill(again, 1, start=complete)
        again.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            third = ReplayShard([config()], directory=str(root))
        assert third.size("real") == (complete + 1) * CHUNK
        third.close()


def test_priorities_survive_restart_in_order(tmp_path):
    shard = ReplayShard([config(sampler="prioritized")], directory=str(tmp_path))
    fill(shard, 2)
    batch = shard.sample("real", 4, with_keys=True)
    shard.update_priorities("real", np.array([0, 3, 9]), np.array([5.0, 0.0, 2.5]))
    fill(shard, 2, start=2)  # rows inserted after the update get max priority 5
    shard.update_priorities("real", batch["key"], np.full(4, 0.5))
    shard.close()
    again = ReplayShard([config(sampler="prioritized")], directory=str(tmp_path))
    assert_same(shard, again)
    priorities = rows(again)[1]
    assert priorities[-1] == pytest.approx(5.0**0.6)
    again.close()


def test_snapshot_priorities_follow_a_changed_priority_exponent(tmp_path):
    shard = ReplayShard([config(sampler="prioritized")], directory=str(tmp_path))  # priority_exponent 0.6
    fill(shard, 2)
    shard.update_priorities("real", np.array([0, 3, 9]), np.array([5.0, 0.25, 2.5]))
    shard.snapshot("real")
    shard.close()
    changed = replace(config(sampler="prioritized"), priority_exponent=0.3)
    again = ReplayShard([changed], directory=str(tmp_path))
    priorities = rows(again)[1]  # the tree holds priority ** 0.3 now, also for rows of the 0.6 snapshot
    np.testing.assert_allclose(priorities[[0, 3, 9, 1]], np.array([5.0, 0.25, 2.5, 1.0]) ** 0.3)
    again.close()


def test_snapshot_then_more_inserts_recovers_everything(tmp_path):
    cfg = config(sampler="prioritized")
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 5)
    shard.update_priorities("real", np.arange(10), np.linspace(0.1, 3, 10))
    info = shard.snapshot("real")
    assert info["rows"] == 5 * CHUNK and info["generation"] == 1
    fill(shard, 3, start=5)
    shard.update_priorities("real", np.array([45]), np.array([7.0]))
    shard.close()
    files = sorted(os.listdir(table_dir(tmp_path)))
    # the first snapshot deletes nothing: with no snapshot before it, the logs from the start are its fallback
    assert files == [
        "LOCK", "priorities-0.log", "priorities-1.log", "snapshot-1.parquet", "wal-0.log", "wal-1.log"
    ]
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert_same(shard, again)
    assert again.insert("real", make_chunk(CHUNK, start_seq=0), 0)["status"] == "duplicate"
    info = again.snapshot("real")  # generation 3: 2 was started when `again` opened
    # the previous snapshot and the logs after it stay (the fallback), older files go
    assert sorted(os.listdir(table_dir(tmp_path))) == [
        "LOCK", "priorities-1.log", "snapshot-1.parquet", f"snapshot-{info['generation']}.parquet", "wal-1.log"
    ]
    again.close()
    # the snapshot is plain Parquet: vectors as fixed_size_list, readable by pandas
    path = os.path.join(table_dir(tmp_path), f"snapshot-{info['generation']}.parquet")
    table = pq.read_table(path)
    obs_type = table.schema.field("obs").type
    assert pa.types.is_fixed_size_list(obs_type) and obs_type.list_size == 4 and obs_type.value_type == pa.float32()
    frame = pd.read_parquet(path)
    assert len(frame) == 8 * CHUNK and list(frame[KEY_FIELD]) == list(range(8 * CHUNK))
    assert PRIORITY_FIELD in frame
    third = ReplayShard([cfg], directory=str(tmp_path))
    assert_same(again, third)
    third.close()


def test_automatic_snapshots_and_eviction_across_restart(tmp_path):
    cfg = config(capacity=50, every=3 * CHUNK)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 10)
    shard.close()
    gens = [f for f in os.listdir(table_dir(tmp_path)) if f.startswith("snapshot")]
    assert len(gens) == 2  # the newest and the one before it
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert again.size("real") == 50
    np.testing.assert_array_equal(rows(again)[0]["seq"], np.arange(80 - 50, 80))
    fill(again, 4, start=10)
    assert_same(again, again)
    again.close()
    third = ReplayShard([cfg], directory=str(tmp_path))
    np.testing.assert_array_equal(rows(third)[0]["seq"], np.arange(112 - 50, 112))
    assert third.stats()["real"]["inserted"] == 112
    third.close()


def test_snapshots_are_written_by_one_thread_whichever_thread_inserts(tmp_path, monkeypatch):
    """pyarrow keeps a heap per thread: a Parquet writer run on each serving thread in turn kept memory in each."""
    shard = ReplayShard([config(capacity=50, every=2 * CHUNK)], directory=str(tmp_path), index=3)
    store = shard._state("real").store
    original, writers = store.write_snapshot, []

    def recording_write(generation, image):
        writers.append(threading.current_thread().name)
        return original(generation, image)

    monkeypatch.setattr(store, "write_snapshot", recording_write)
    for t in range(4):  # automatic snapshots, each insert from a thread of its own
        inserting = threading.Thread(target=fill, args=(shard, 2, 2 * t))
        inserting.start()
        inserting.join(10)
    shard.snapshot("real")
    assert len(writers) == 5 and len(set(writers)) == 1, writers
    assert writers[0].startswith("replay-shard-3-files") and writers[0] != threading.current_thread().name
    assert [f for f in os.listdir(table_directory(str(tmp_path), 3, "real")) if f.startswith("snapshot")]
    shard.close()


def test_sampling_and_inserting_go_on_during_snapshot(tmp_path, monkeypatch):
    shard = ReplayShard([config(capacity=5000)], directory=str(tmp_path))
    fill(shard, 20)
    store = shard._state("real").store
    started, release = threading.Event(), threading.Event()
    original = store.write_snapshot

    def slow_write(generation, image):
        started.set()
        assert release.wait(10)
        return original(generation, image)

    monkeypatch.setattr(store, "write_snapshot", slow_write)
    result = {}
    worker = threading.Thread(target=lambda: result.update(shard.snapshot("real")))
    worker.start()
    assert started.wait(10)
    for _ in range(20):
        assert shard.sample("real", 16) is not None
    fill(shard, 5, start=20)  # lands in the new generation's log
    release.set()
    worker.join(10)
    assert result["rows"] == 20 * CHUNK
    shard.close()
    again = ReplayShard([config(capacity=5000)], directory=str(tmp_path))
    assert again.size("real") == 25 * CHUNK
    assert_same(shard, again)
    again.close()


def test_rate_limiters_restart_from_recovered_size(tmp_path):
    limiter = RateLimiterConfig(samples_per_insert=2.0, min_size=16, error_buffer=64.0)
    cfg = config(limiters=(("learner", limiter),))
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 6)
    shard.close()
    again = ReplayShard([cfg], directory=str(tmp_path))
    stats = again.stats()["real"]["consumers"]["learner"]
    assert stats["inserted"] == 48 and abs(stats["lag"]) < 1
    assert again.insert("real", make_chunk(CHUNK, start_seq=48), 0)["status"] == "ok"
    assert again.sample("real", 8, consumer="learner") is not None
    again.close()


def test_persist_off_writes_nothing(tmp_path):
    shard = ReplayShard([config(persist=False)], directory=str(tmp_path / "d"))
    fill(shard, 3)
    with pytest.raises(ValueError, match="not persisted"):
        shard.snapshot("real")
    shard.close()
    assert not (tmp_path / "d").exists()
    plain = ReplayShard([config()])  # persist=True but no directory: in memory only
    fill(plain, 2)
    plain.close()
    assert os.listdir(tmp_path) == []


def test_invalid_options(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        ReplayShard([config()], directory=str(tmp_path), fsync="sometimes")
    with pytest.raises(ValueError, match="snapshot_every_inserts"):
        config(every=-1)


@pytest.mark.parametrize("fsync", ["every_insert", "interval"])
def test_fsync_modes_recover(tmp_path, fsync):
    shard = ReplayShard([config()], directory=str(tmp_path), fsync=fsync, fsync_interval_ms=0)
    fill(shard, 3)
    shard.close()
    again = ReplayShard([config()], directory=str(tmp_path), fsync=fsync)
    assert_same(shard, again)
    again.close()


def removal_config(sampler="uniform", every=0, max_times=2):
    return TableConfig(
        "real", 1000, COLUMNS, sampler=sampler, persist=True, snapshot_every_inserts=every,
        max_times_sampled=max_times,
    )


def live_keys(shard):
    table = shard._state("real").table
    keys = np.arange(table.oldest_key, table.inserted)
    return keys[table.slots_of(keys)[1]]


def kill(shard):
    """Leave ``shard`` as a killed process would: no close, its directory lock released."""
    os.close(shard._state("real").store._lock_fd)


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_removals_survive_a_restart(tmp_path, sampler):
    shard = ReplayShard([removal_config(sampler)], directory=str(tmp_path))
    fill(shard, 10)
    sampled = np.concatenate([shard.sample("real", 16, with_keys=True)["key"] for _ in range(5)])
    removed = np.flatnonzero(np.bincount(sampled, minlength=80) == 2)
    assert len(removed) > 0 and shard.stats()["real"]["removed"] == len(removed)
    # priority updates of removed keys are ignored, also when the log is replayed
    assert shard.update_priorities("real", removed, np.full(len(removed), 50.0)) == 0
    fill(shard, 2, start=10)
    expected = live_keys(shard)
    assert len(expected) == 96 - len(removed)
    kill(shard)
    again = ReplayShard([removal_config(sampler)], directory=str(tmp_path))
    np.testing.assert_array_equal(live_keys(again), expected)
    assert again.size("real") == len(expected) and again.stats()["real"]["removed"] == len(removed)
    assert_same(shard, again)
    if sampler == "prioritized":
        assert again._state("real").table._sampler.max_priority == shard._state("real").table._sampler.max_priority == 1
    # after a kill the counts of rows sampled once are those of the last snapshot (none): each can serve 2 again
    assert again._state("real").table._counter.budget == 2 * len(expected)
    # snapshot, sample again, close cleanly: counts and removals come back exactly
    again.snapshot("real")
    for _ in range(4):
        again.sample("real", 16)
    again.close()
    counter = again._state("real").table._counter
    third = ReplayShard([removal_config(sampler)], directory=str(tmp_path))
    np.testing.assert_array_equal(live_keys(third), live_keys(again))
    counts = third._state("real").table.times_sampled()
    np.testing.assert_array_equal(counts, again._state("real").table.times_sampled())
    assert (counts > 0).any()  # counts of live rows came back from the close record
    assert third._state("real").table._counter.budget == counter.budget
    assert third.stats()["real"]["removed"] == again.stats()["real"]["removed"]
    assert_same(again, third)
    third.close()


def test_removals_in_a_snapshot_and_after_it(tmp_path):
    shard = ReplayShard([removal_config(every=4 * CHUNK, max_times=1)], directory=str(tmp_path))
    fill(shard, 3)
    first = shard.sample("real", 10, with_keys=True)["key"]
    fill(shard, 1, start=3)  # automatic snapshot: holds the 10 removed rows, marked -1
    snapshot = [f for f in os.listdir(table_dir(tmp_path)) if f.startswith("snapshot")]
    frame = pd.read_parquet(os.path.join(table_dir(tmp_path), snapshot[0]))
    assert sorted(frame.loc[frame[TIMES_SAMPLED_FIELD] == -1, KEY_FIELD]) == sorted(first.tolist())
    second = shard.sample("real", 10, with_keys=True)["key"]  # logged in the new generation
    kill(shard)
    again = ReplayShard([removal_config(every=4 * CHUNK, max_times=1)], directory=str(tmp_path))
    np.testing.assert_array_equal(live_keys(again), np.setdiff1d(np.arange(32), np.concatenate([first, second])))
    assert again.stats()["real"]["removed"] == 20 and again.size("real") == 12
    again.close()


def test_non_finite_drop_logs_only_the_kept_rows(tmp_path):
    cfg = TableConfig("real", 1000, COLUMNS, persist=True, non_finite="drop")
    shard = ReplayShard([cfg], directory=str(tmp_path))
    chunk = make_chunk(CHUNK)
    chunk["obs"][0, 3] = np.nan
    chunk["next_obs"][6, 0] = np.inf
    assert shard.insert("real", chunk, 0)["dropped_non_finite"] == 2
    nothing = make_chunk(CHUNK, start_seq=CHUNK)
    nothing["reward"][:] = np.nan
    assert shard.insert("real", nothing, 0) == {"status": "ok", "size": 6, "dropped_non_finite": CHUNK}
    fill(shard, 1, start=2)
    kill(shard)
    _, records = TableStore(table_dir(tmp_path), cfg, read_only=True).recover()
    logged = [r for r in records if isinstance(r, InsertRecord)]
    assert [r.rows for r in logged] == [6, 0, CHUNK] and [r.dropped_non_finite for r in logged] == [2, CHUNK, 0]
    seq = np.concatenate([r.chunk["seq"] for r in logged])
    assert seq.tolist() == [1, 2, 3, 4, 5, 7] + list(range(2 * CHUNK, 3 * CHUNK))
    assert all(np.isfinite(r.chunk["obs"]).all() for r in logged)
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert_same(shard, again)
    assert again.stats()["real"]["dropped_non_finite"] == CHUNK + 2
    # both dedup keys survive: the first row of `chunk` was dropped, `nothing` stored no row at all
    assert again.insert("real", chunk, 0)["status"] == "duplicate"
    assert again.insert("real", nothing, 0)["status"] == "duplicate"
    again.snapshot("real")
    again.close()
    third = ReplayShard([cfg], directory=str(tmp_path))
    assert third.stats()["real"]["dropped_non_finite"] == CHUNK + 2 and third.size("real") == 6 + CHUNK
    third.close()
