"""Integrity of the replay's files (replay/persistence.py): damaged log records and snapshots, torn tails, records
logged twice, and the interval fsync timer."""

from __future__ import annotations

import glob
import os
import struct
import threading
import time
import warnings

import numpy as np
import pytest

from replay import ReplayShard, TableConfig
from replay.persistence import InsertRecord, TableStore
from replay.schema import SchemaError
from tests.replay.helpers import COLUMNS, make_chunk
from tests.replay.test_cold import cold_config
from tests.replay.test_persistence import CHUNK, assert_same, config, fill, rows, table_dir

HEADER = 40
"""Bytes of a log record's header (docs/replay.md)."""


def record_bounds(path):
    """``(start, end)`` of every record of a log after its file header, from the headers."""
    data = open(path, "rb").read()
    bounds, pos, first = [], 0, True
    while pos < len(data):
        _, _, meta_len, _, body_len, _ = struct.unpack_from("<8sIIqQI", data, pos)
        end = pos + HEADER + meta_len + body_len
        if not first:
            bounds.append((pos, end))
        pos, first = end, False
    return bounds


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def float_offset(path, value, start, end):
    """Offset of the float32 ``value`` (an ``obs[:, 0]``: followed by three zeros) in ``[start, end)``."""
    data = open(path, "rb").read()
    at = data.find(struct.pack("<f", value) + bytes(12), start, end)
    assert at >= 0
    return at


def seqs(shard):
    return rows(shard)[0]["seq"]


def assert_rows_intact(shard):
    data = rows(shard)[0]
    np.testing.assert_array_equal(data["obs"][:, 0], data["seq"].astype(np.float32))
    np.testing.assert_array_equal(data["reward"], data["seq"].astype(np.float32))


def reopen_quietly(tmp_path, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ReplayShard([cfg], directory=str(tmp_path))


# ---- damaged log records ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["float data", "header", "magic"])
def test_a_damaged_record_in_the_middle_keeps_every_row_before_and_after(tmp_path, where):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 6)
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    start, end = record_bounds(wal)[2]  # rows with seq 16..23
    offset = {"float data": float_offset(wal, 19.0, start, end), "header": start + 20, "magic": start + 1}[where]
    flip(wal, offset)
    damaged = open(wal, "rb").read()
    with pytest.warns(RuntimeWarning) as caught:
        again = ReplayShard([config()], directory=str(tmp_path))
    (line,) = [str(w.message) for w in caught if "damaged bytes" in str(w.message)]
    assert wal in line and f"[{start}, {end})" in line
    assert "recovered 40 row(s)" in line and "1 damaged record(s), lost 8 row(s)" in line
    expected = np.concatenate([np.arange(16), np.arange(24, 48)])
    np.testing.assert_array_equal(seqs(again), expected)
    assert_rows_intact(again)  # no flipped value was loaded
    stats = again.stats()["real"]
    assert stats["corrupt_files"] == 1 and stats["corrupt_records"] == 1
    assert stats["rows_lost_to_corruption"] == 8 and stats["inserted"] == 40
    # the damaged file is kept aside, a snapshot holds what was recovered
    (aside,) = glob.glob(wal + ".corrupt-*")
    assert open(aside, "rb").read() == damaged and not os.path.exists(wal)
    assert any(name.startswith("snapshot-") for name in os.listdir(table_dir(tmp_path)))
    # the lost chunk's dedup key is gone with it: its writer may send it again
    assert again.insert("real", make_chunk(CHUNK, start_seq=16), 0)["status"] == "ok"
    again.close()
    third = reopen_quietly(tmp_path, config())
    assert_same(again, third)
    assert third.stats()["real"]["corrupt_files"] == 0
    third.close()


def test_damage_in_the_last_complete_record_is_not_a_torn_tail(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 4)
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    start, end = record_bounds(wal)[-1]
    flip(wal, float_offset(wal, 26.0, start, end))
    with pytest.warns(RuntimeWarning, match=r"damaged bytes .*lost 8 row\(s\)"):
        again = ReplayShard([config()], directory=str(tmp_path))
    np.testing.assert_array_equal(seqs(again), np.arange(24))
    assert glob.glob(wal + ".corrupt-*") and again.stats()["real"]["rows_lost_to_corruption"] == 8
    again.close()


def test_several_damaged_stretches_and_keys_after_them(tmp_path):
    cfg = config(sampler="prioritized")
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 8)
    shard.update_priorities("real", np.array([5, 44, 60]), np.array([3.0, 9.0, 7.0]))
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    bounds = record_bounds(wal)
    flip(wal, bounds[1][0] + 3)  # header of seq 8..15
    flip(wal, bounds[4][1] - 9)  # body of seq 32..39
    flip(wal, bounds[5][0] + 30)  # header checksum of seq 40..47
    with pytest.warns(RuntimeWarning, match=r"lost 24 row\(s\)"):
        again = ReplayShard([cfg], directory=str(tmp_path))
    expected = np.concatenate([np.arange(8), np.arange(16, 32), np.arange(48, 64)])
    np.testing.assert_array_equal(seqs(again), expected)
    assert again.stats()["real"]["corrupt_records"] == 3
    # priority updates follow their rows to the new keys; the update of a lost row is dropped
    data, priorities = rows(again)
    weight = dict(zip(data["seq"].tolist(), priorities.tolist()))
    assert weight.pop(5) == pytest.approx(3.0**0.6) and weight.pop(60) == pytest.approx(7.0**0.6)
    assert set(weight.values()) == {1.0}  # every other row kept the priority new rows got
    again.close()


def test_removals_follow_their_rows_past_a_damaged_record(tmp_path):
    cfg = TableConfig("real", 1000, COLUMNS, persist=True, max_times_sampled=1)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 6)
    removed = shard.sample("real", 12, with_keys=True)["key"]  # logged removals, keys in the old numbering
    shard.close()
    gone = set(np.asarray(removed).tolist())
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    start, end = record_bounds(wal)[1]  # seq 8..15
    flip(wal, float_offset(wal, 10.0, start, end))
    with pytest.warns(RuntimeWarning, match="damaged bytes"):
        again = ReplayShard([cfg], directory=str(tmp_path))
    table = again._state("real").table
    keys = np.arange(table.oldest_key, table.inserted)
    live = set(rows(again)[0]["seq"][table.slots_of(keys)[1]].tolist())
    # the rows still stored are exactly those not removed and not lost: seq equals the old key here
    assert live == set(range(48)) - gone - set(range(8, 16))
    again.close()


def test_a_table_with_a_cold_tier_refuses_new_keys_and_changes_nothing(tmp_path):
    cfg = cold_config(capacity=40, disk=1000, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 10)  # rows 0..39 evicted to the cold tier
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    start, end = record_bounds(wal)[7]  # seq 56..63, in memory, with records after it
    flip(wal, float_offset(wal, 60.0, start, end))
    paths = glob.glob(os.path.join(table_dir(tmp_path), "**"), recursive=True)
    files = {path: open(path, "rb").read() for path in paths if os.path.isfile(path)}
    with pytest.raises(RuntimeError, match=r"wal-0\.log.*lost rows .*cold tier do not follow; no file was moved"):
        ReplayShard([cfg], directory=str(tmp_path))
    for path, data in files.items():
        assert open(path, "rb").read() == data, path


def test_a_read_only_reader_reports_damage_and_changes_nothing(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 4)
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    start, end = record_bounds(wal)[1]
    flip(wal, float_offset(wal, 12.0, start, end))
    before = sorted(os.listdir(table_dir(tmp_path)))
    store = TableStore(table_dir(tmp_path), config(), read_only=True)
    _, records = store.recover()
    with pytest.warns(RuntimeWarning, match="left in place"):
        got = [r for r in records if isinstance(r, InsertRecord)]
    assert [int(r.chunk["seq"][0]) for r in got] == [0, 16, 24]
    assert store.recovery.stats() == {
        "corrupt_files": 1, "corrupt_records": 1, "rows_lost_to_corruption": 8, "recovered_duplicates": 0
    }
    assert sorted(os.listdir(table_dir(tmp_path))) == before


# ---- torn tails ------------------------------------------------------------------------------------------------


def test_a_zero_filled_tail_is_torn_not_damage(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 3)
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    size = os.path.getsize(wal)
    with open(wal, "ab") as f:
        f.write(bytes(4096))  # the file grew, its data never reached the disk
    with pytest.warns(RuntimeWarning, match="torn final record, dropping 4096 byte.*zero bytes"):
        again = ReplayShard([config()], directory=str(tmp_path))
    np.testing.assert_array_equal(seqs(again), np.arange(24))
    assert os.path.getsize(wal) == size and again.stats()["real"]["corrupt_files"] == 0
    again.close()


# ---- snapshots -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("previous", [True, False])
def test_a_damaged_newest_snapshot_falls_back_with_no_row_lost(tmp_path, previous):
    cfg = config(sampler="prioritized")
    shard = ReplayShard([cfg], directory=str(tmp_path))
    fill(shard, 4)
    if previous:
        shard.snapshot("real")
        fill(shard, 3, start=4)
    shard.update_priorities("real", np.array([1, 20]), np.array([4.0, 6.0]))
    newest = shard.snapshot("real")["path"]
    fill(shard, 2, start=7)
    shard.update_priorities("real", np.array([50]), np.array([2.0]))
    shard.close()
    flip(newest, os.path.getsize(newest) // 3)
    fallback = "snapshot-1" if previous else "no snapshot"
    with pytest.warns(RuntimeWarning, match=rf"snapshot-\d+\.parquet is damaged .*recovering from {fallback}"):
        again = ReplayShard([cfg], directory=str(tmp_path))
    assert_same(shard, again)  # every row, its key and its priority
    assert again.stats()["real"]["corrupt_files"] == 1 and again.stats()["real"]["rows_lost_to_corruption"] == 0
    assert glob.glob(newest + ".corrupt-*") and not os.path.exists(newest)
    again.close()
    third = reopen_quietly(tmp_path, cfg)
    assert_same(shard, third)
    third.close()


# ---- records logged twice --------------------------------------------------------------------------------------


def test_a_record_logged_twice_is_recovered_once(tmp_path):
    shard = ReplayShard([config()], directory=str(tmp_path))
    fill(shard, 4)
    shard.close()
    wal = os.path.join(table_dir(tmp_path), "wal-0.log")
    data = open(wal, "rb").read()
    start, end = record_bounds(wal)[1]
    open(wal, "wb").write(data[:end] + data[start:end] + data[end:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ReplayShard([config()], directory=str(tmp_path))
    assert_same(shard, again)
    assert again.stats()["real"]["recovered_duplicates"] == 1 and again.stats()["real"]["corrupt_files"] == 0
    again.close()


def test_records_without_keys_logged_twice_are_recovered_once(tmp_path):
    store = TableStore(table_dir(tmp_path), config())
    store.recover()
    for seq in (0, 8, 8, 16, 0):
        store.append_insert(make_chunk(CHUNK, start_seq=seq), 0)
    store.close()
    again = ReplayShard([config()], directory=str(tmp_path))
    np.testing.assert_array_equal(seqs(again), np.arange(24))
    assert again.stats()["real"]["recovered_duplicates"] == 2
    again.close()


def test_an_insert_whose_fsync_failed_and_its_retry_recover_as_acknowledged(tmp_path, monkeypatch):
    cfg = config(sampler="prioritized")
    shard = ReplayShard([cfg], directory=str(tmp_path), fsync="every_insert")
    fill(shard, 2)
    store = shard._state("real").store
    real_fsync = os.fsync
    failures = [store._wal.fd]

    def failing_fsync(fd):
        if failures and fd == failures[0]:
            failures.pop()
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    chunk = make_chunk(CHUNK, start_seq=2 * CHUNK)
    with pytest.raises(OSError):  # written completely, not acknowledged, not applied
        shard.insert("real", chunk, 0)
    shard.update_priorities("real", np.array([1, 3]), np.array([5.0, 0.5]))  # logged in the next generation
    fill(shard, 1, start=100, writer_id=3)  # another writer goes first
    assert shard.insert("real", chunk, 0)["status"] == "ok"  # the retry
    shard.update_priorities("real", np.array([20, 30]), np.array([2.0, 3.0]))
    os.close(store._lock_fd)  # killed
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert_same(shard, again)  # the retry's place and keys (and the priorities by key), not the failed write's
    np.testing.assert_array_equal(seqs(again)[16:], np.concatenate([np.arange(800, 808), np.arange(16, 24)]))
    assert again.stats()["real"]["recovered_duplicates"] == 1
    again.close()


# ---- format ----------------------------------------------------------------------------------------------------


def test_format_1_logs_are_refused_with_what_to_do(tmp_path):
    os.makedirs(table_dir(tmp_path))
    open(os.path.join(table_dir(tmp_path), "wal-0.arrows"), "wb").write(b"\xff\xff\xff\xff")
    with pytest.raises(SchemaError, match=r"format 1 .*dynaray replay export.*dynaray replay import"):
        ReplayShard([config()], directory=str(tmp_path))


# ---- interval fsync --------------------------------------------------------------------------------------------


def test_interval_fsync_syncs_the_last_burst_of_an_idle_period(tmp_path, monkeypatch):
    synced: list[tuple[int, str, float]] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((fd, threading.current_thread().name, time.monotonic()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    shard = ReplayShard([config()], directory=str(tmp_path), fsync="interval", fsync_interval_ms=300)
    store = shard._state("real").store
    fill(shard, 3)
    last_write = time.monotonic()
    wal_fd = store._wal.fd

    def by_timer():
        return [t for fd, thread, t in synced if fd == wal_fd and thread == "fsync-real" and t >= last_write]

    deadline = time.monotonic() + 10
    while not by_timer() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert by_timer(), synced  # the timer synced the burst, with no write after it
    time.sleep(0.1)
    assert not store._dirty
    count = store.fsyncs
    time.sleep(1.0)
    assert store.fsyncs == count  # nothing to sync: the idle timer does not fsync again
    shard.close()
    assert not store._timer.is_alive()
