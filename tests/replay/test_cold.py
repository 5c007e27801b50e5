"""Cold tier: rows evicted from memory kept in Parquet segment files and still sampled (replay/cold.py)."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from replay import ReplayShard, Table, TableConfig
from replay.cold import COLD_DIRECTORY, ColdTier, _DiskPart, list_segments
from replay.persistence import table_directory
from tests.replay.helpers import COLUMNS, make_chunk

SEGMENT = 64


def cold_config(capacity=100, disk=1000, segment=SEGMENT, persist=False, every=0, sampler="uniform"):
    return TableConfig(
        "real",
        capacity,
        COLUMNS,
        sampler=sampler,
        persist=persist,
        snapshot_every_inserts=every,
        disk_capacity=disk,
        disk_segment_rows=segment,
    )


def cold_table(directory, capacity=100, disk=1000, segment=SEGMENT):
    cfg = cold_config(capacity, disk, segment)
    return Table(cfg, ColdTier(str(directory), "real", COLUMNS, disk, segment))


def cold_dir(root):
    return os.path.join(table_directory(str(root), 0, "real"), COLD_DIRECTORY)


def all_rows(table: Table) -> dict[str, np.ndarray]:
    """Every stored row, cold tier first then memory (oldest to newest), with a ``key`` column."""
    cold = table.cold
    cold_rows, cold_keys = cold.gather(np.arange(cold.size))
    memory, inserted, _, _ = table.export()
    rows = {name: np.concatenate([cold_rows[name], memory[name]]) for name in memory}
    rows["key"] = np.concatenate([cold_keys, np.arange(inserted - table.memory_size, inserted)])
    return rows


def shard_rows(shard: ReplayShard) -> dict[str, np.ndarray]:
    state = shard._state("real")
    with state.cond:
        return all_rows(state.table)


def assert_rows_are_keys(rows, first_key, last_key):
    """Rows ``first_key..last_key`` exactly once, in order; make_chunk rows inserted in order have seq == key."""
    np.testing.assert_array_equal(rows["key"], np.arange(first_key, last_key + 1))
    np.testing.assert_array_equal(rows["seq"], rows["key"])
    np.testing.assert_array_equal(rows["obs"][:, 0], rows["key"].astype(np.float32))
    np.testing.assert_array_equal(rows["truncated"], rows["key"] % 10 == 9)


def insert_in_order(target, sizes, start=0):
    """Insert chunks of the given sizes with consecutive seq from ``start`` (through a Table or a ReplayShard)."""
    seq = start
    for n in sizes:
        chunk = make_chunk(n, start_seq=seq)
        if isinstance(target, Table):
            target.insert(chunk)
        else:
            assert target.insert("real", chunk, 0)["status"] == "ok"
        seq += n
    return seq


def test_evicted_rows_go_to_disk_fifo_across_memory_and_disk(tmp_path):
    table = cold_table(tmp_path)
    rng = np.random.default_rng(0)
    inserted = 0
    for step in range(60):
        # chunk sizes include ones larger than the capacity: their oldest rows go straight to the cold tier
        n = int(rng.choice([1, 7, 37, 150]))
        inserted = insert_in_order(table, [n], start=inserted)
        assert table.inserted == inserted
        assert table.size == min(inserted, 1100)
        assert table.memory_size == min(inserted, 100)
        assert table.evicted == inserted - table.size
        assert_rows_are_keys(all_rows(table), inserted - table.size, inserted - 1)
    stats = table.stats()
    assert stats["memory_rows"] + stats["disk_rows"] + stats["staged_rows"] == stats["size"] == 1100
    assert stats["disk_rows"] > 0 and stats["staged_rows"] < SEGMENT
    assert stats["spilled"] == inserted - 100
    segments = list_segments(str(tmp_path))
    assert len(segments) == stats["disk_files"]
    # every file is plain Parquet with the table's columns, rows in key order
    first_key, path = segments[-1]
    data = pq.read_table(path)
    np.testing.assert_array_equal(data.column("seq").to_numpy(), np.arange(first_key, first_key + data.num_rows))


def test_segments_are_memory_mapped(tmp_path):
    table = cold_table(tmp_path)
    insert_in_order(table, [50] * 20)
    parts = [p for p in table.cold._parts if isinstance(p, _DiskPart)]
    assert parts and all(p.views is not None for p in parts)


def test_disk_capacity_drops_oldest_rows_and_deletes_whole_files(tmp_path):
    disk = 300
    table = cold_table(tmp_path, capacity=50, disk=disk)
    inserted = insert_in_order(table, [10] * 200)
    assert table.size == 50 + disk
    assert table.cold.size == disk and table.cold.oldest_key == inserted - 50 - disk
    segments = list_segments(str(tmp_path))
    first_keys = [key for key, _ in segments]
    # only files holding at least one live row remain: the oldest starts at most one segment before the window
    assert table.cold.oldest_key - SEGMENT < first_keys[0] <= table.cold.oldest_key
    on_disk = sum(pq.ParquetFile(path).metadata.num_rows for _, path in segments)
    assert on_disk <= disk + SEGMENT
    assert table.stats()["disk_bytes"] == sum(os.path.getsize(path) for _, path in segments)
    assert_rows_are_keys(all_rows(table), inserted - 50 - disk, inserted - 1)


def test_uniform_sample_over_memory_and_disk(tmp_path):
    table = cold_table(tmp_path, capacity=100, disk=300)
    inserted = insert_in_order(table, [25] * 40)  # 1000 inserted: keys 600..999 stored, 300 of them cold
    stored = np.arange(inserted - 400, inserted)
    n = 200_000
    batch = table.sample(n, np.random.default_rng(1), with_keys=True)
    keys = batch["key"]
    assert keys.min() >= stored[0] and keys.max() <= stored[-1]
    counts = np.bincount(keys - stored[0], minlength=400)
    expected = n / 400
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 492.0  # 399 degrees of freedom, 99.9th percentile
    cold_share = float((keys < inserted - 100).mean())
    assert abs(cold_share - 0.75) < 5 * np.sqrt(0.75 * 0.25 / n)
    # every sampled row is the row its key names
    np.testing.assert_array_equal(batch["seq"], keys)
    np.testing.assert_array_equal(batch["obs"][:, 0], keys.astype(np.float32))
    np.testing.assert_array_equal(batch["next_obs"][:, 0], keys.astype(np.float32) + 1)
    np.testing.assert_array_equal(batch["truncated"], keys % 10 == 9)
    np.testing.assert_array_equal(batch["weight"], np.ones(n, dtype=np.float32))
    assert batch["obs"].dtype == np.float32 and batch["terminated"].dtype == bool and batch["seq"].dtype == np.int64


def test_shard_reports_memory_and_disk_rows_and_samples_keys(tmp_path):
    shard = ReplayShard([cold_config(capacity=100, disk=500)], directory=str(tmp_path))
    inserted = insert_in_order(shard, [16] * 30)
    stats = shard.stats()["real"]
    assert shard.size("real") == stats["size"] == 480
    assert stats["memory_rows"] == 100 and stats["disk_rows"] + stats["staged_rows"] == 380
    assert stats["disk_files"] == 380 // SEGMENT and stats["disk_bytes"] > 0
    batch = shard.sample("real", 2000, with_keys=True)
    np.testing.assert_array_equal(batch["seq"], batch["key"])
    assert batch["key"].min() < inserted - 100  # some rows came from disk
    shard.close()


def test_sampling_goes_on_while_segments_are_written(tmp_path):
    shard = ReplayShard([cold_config(capacity=200, disk=5000, segment=256)], directory=str(tmp_path))
    insert_in_order(shard, [50] * 8)
    errors = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                batch = shard.sample("real", 64, with_keys=True)
                assert (batch["seq"] == batch["key"]).all()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        inserted = insert_in_order(shard, [50] * 100, start=400)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert_rows_are_keys(shard_rows(shard), inserted - 5200, inserted - 1)
    shard.close()


def kill(shard: ReplayShard) -> None:
    """Release the locks of a shard as a killed process would, without closing anything."""
    state = shard._state("real")
    if state.store is not None:
        os.close(state.store._lock_fd)
    os.close(state.table.cold._lock_fd)
    state.table.cold._lock_fd = None


@pytest.mark.parametrize("how", ["close", "kill"])
def test_restart_with_persistence_has_every_row_exactly_once(tmp_path, how):
    cfg = cold_config(capacity=100, disk=700, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    inserted = insert_in_order(shard, [13] * 30)
    shard.snapshot("real")  # deletes the older logs: the evicted rows must be in segment files by then
    inserted = insert_in_order(shard, [13] * 40, start=inserted)  # staged rows not yet in any file
    before = shard_rows(shard)
    assert len(before["key"]) == 800 and shard.stats()["real"]["staged_rows"] > 0
    shard.close() if how == "close" else kill(shard)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ReplayShard([cfg], directory=str(tmp_path))
    after = shard_rows(again)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert_rows_are_keys(after, inserted - 800, inserted - 1)
    assert again.stats()["real"]["inserted"] == inserted
    # and it goes on: more inserts, an automatic snapshot, another restart
    inserted = insert_in_order(again, [13] * 40, start=inserted)
    again.snapshot("real")
    inserted = insert_in_order(again, [13] * 3, start=inserted)
    kill(again)
    third = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(third), inserted - 800, inserted - 1)
    third.close()


def test_restart_after_automatic_snapshots(tmp_path):
    cfg = cold_config(capacity=64, disk=2000, segment=100, persist=True, every=150)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    inserted = insert_in_order(shard, [7] * 200)
    kill(shard)
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(again), inserted - 1400, inserted - 1)
    again.close()


def test_half_written_and_corrupt_segments_are_removed_with_a_warning(tmp_path):
    table = cold_table(tmp_path, capacity=50, disk=1000)
    inserted = insert_in_order(table, [20] * 30)
    table.cold.close()
    segments = list_segments(str(tmp_path))
    newest_key, newest = segments[-1]
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    leftover = newest.replace(".parquet", ".parquet.tmp")
    with open(leftover, "wb") as f:
        f.write(b"PAR1 half")
    with pytest.warns(RuntimeWarning) as caught:
        cold = ColdTier(str(tmp_path), "real", COLUMNS, 1000, SEGMENT)
    messages = "\n".join(str(w.message) for w in caught)
    assert os.path.basename(newest) in messages and "unreadable" in messages
    assert os.path.basename(leftover) in messages and "half-written" in messages
    assert not os.path.exists(newest) and not os.path.exists(leftover)
    assert cold.end_key == newest_key and cold.size == newest_key - segments[0][0]
    rows, keys = cold.gather(np.arange(cold.size))
    np.testing.assert_array_equal(keys, np.arange(segments[0][0], newest_key))
    np.testing.assert_array_equal(rows["seq"], keys)
    assert inserted > newest_key
    cold.close()


def test_corrupt_newest_segment_is_rebuilt_from_the_log(tmp_path):
    cfg = cold_config(capacity=100, disk=1000, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    inserted = insert_in_order(shard, [10] * 60)
    shard.close()
    newest = list_segments(cold_dir(tmp_path))[-1][1]
    with open(newest, "r+b") as f:
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match=os.path.basename(newest)):
        again = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(again), 0, inserted - 1)
    again.close()


def test_cold_rows_also_in_memory_are_dropped_after_recovery(tmp_path):
    cfg = cold_config(capacity=100, disk=1000, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    inserted = insert_in_order(shard, [10] * 30)
    first = open(shard.snapshot("real")["path"], "rb").read()  # memory holds keys 200..299
    insert_in_order(shard, [10] * 5, start=inserted)  # evicts 200..249 to the cold tier
    shard.snapshot("real")  # writes them to a segment file
    shard.close()
    # go back to the first snapshot, as if everything after it had been lost: memory holds 200..299 again
    root = table_directory(str(tmp_path), 0, "real")
    for name in os.listdir(root):
        if name.startswith(("wal-", "snapshot-")):
            os.unlink(os.path.join(root, name))
    with open(os.path.join(root, "snapshot-1.parquet"), "wb") as f:
        f.write(first)
    with pytest.warns(RuntimeWarning, match=r"dropped \d+ row\(s\) with keys >= 200"):
        again = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(again), 0, inserted - 1)
    # the segment file that held keys 192..249 was rewritten with 192..199 only: nothing comes back
    assert [pq.ParquetFile(path).metadata.num_rows for _, path in list_segments(cold_dir(tmp_path))][-1] == 8
    again.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(third), 0, inserted - 1)
    third.close()


def test_segments_of_another_run_are_removed(tmp_path):
    cfg = cold_config(capacity=50, disk=1000, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    insert_in_order(shard, [10] * 30)
    shard.close()
    for name in os.listdir(table_directory(str(tmp_path), 0, "real")):
        if name.startswith(("wal-", "snapshot-")):
            os.unlink(os.path.join(table_directory(str(tmp_path), 0, "real"), name))
    with pytest.warns(RuntimeWarning, match="belong to another run"):
        again = ReplayShard([cfg], directory=str(tmp_path))
    assert again.size("real") == 0 and list_segments(cold_dir(tmp_path)) == []
    assert_rows_are_keys(shard_rows(again), 0, -1)
    again.close()


def test_table_not_persisted_starts_with_an_empty_cold_tier(tmp_path):
    cfg = cold_config(capacity=50, disk=1000)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    insert_in_order(shard, [10] * 30)
    assert list_segments(cold_dir(tmp_path))
    shard.close()
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert again.size("real") == 0 and list_segments(cold_dir(tmp_path)) == []
    inserted = insert_in_order(again, [10] * 30)
    assert_rows_are_keys(shard_rows(again), 0, inserted - 1)
    again.close()


def test_second_shard_on_the_same_cold_directory_is_refused(tmp_path):
    shard = ReplayShard([cold_config()], directory=str(tmp_path))
    with pytest.raises(RuntimeError, match="in use"):
        ReplayShard([cold_config()], directory=str(tmp_path))
    shard.close()


def test_segment_that_cannot_be_mapped_is_decoded_instead(tmp_path, monkeypatch):
    def refuse(self, metadata):
        raise ValueError("page layout not recognised")

    monkeypatch.setattr(_DiskPart, "map_columns", refuse)
    table = cold_table(tmp_path, capacity=50, disk=500)
    with pytest.warns(RuntimeWarning, match="cannot memory-map .*page layout not recognised"):
        inserted = insert_in_order(table, [20] * 30)
    assert_rows_are_keys(all_rows(table), inserted - 550, inserted - 1)
    batch = table.sample(1000, np.random.default_rng(0), with_keys=True)
    np.testing.assert_array_equal(batch["seq"], batch["key"])


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match=r"disk_capacity must be an int >= 0, got -1"):
        cold_config(disk=-1)
    with pytest.raises(ValueError, match=r"disk_segment_rows must be an int >= 0, got 1.5"):
        cold_config(segment=1.5)
    with pytest.raises(ValueError, match=r"needs sampler='uniform', got sampler='prioritized'"):
        cold_config(sampler="prioritized")
    with pytest.raises(ValueError, match=r"tables \['real'\] have disk_capacity > 0 .* got directory=None"):
        ReplayShard([cold_config()])
    with pytest.raises(ValueError, match=r"disk_capacity=1000: a cold tier is needed .* got none"):
        Table(cold_config())
    with pytest.raises(ValueError, match=r"disk_capacity=0: a cold tier is needed .* got one"):
        Table(TableConfig("real", 10, COLUMNS), cold=object())


def test_sequences_and_slots_are_refused_on_a_cold_table(tmp_path):
    shard = ReplayShard([cold_config()], directory=str(tmp_path))
    insert_in_order(shard, [10] * 5)
    with pytest.raises(ValueError, match=r"sequence sampling is not supported .*disk_capacity=1000"):
        shard.sample_sequences("real", 4, 3)
    with pytest.raises(ValueError, match="use sample"):
        shard._state("real").table.sample_indices(4, np.random.default_rng(0))
    shard.close()


def test_other_dtypes_and_shapes_round_trip_through_segments(tmp_path):
    from replay import ColumnSpec

    columns = (
        ColumnSpec("image", (2, 3), "uint8"),
        ColumnSpec("mask", (5,), "bool"),
        ColumnSpec("flag", (), "bool"),
        ColumnSpec("value", (), "float64"),
        ColumnSpec("half", (3,), "float16"),
        ColumnSpec("count", (), "int32"),
        ColumnSpec("big", (), "uint64"),
        ColumnSpec("seq", (), "int64"),
    )
    table = Table(
        TableConfig("real", 10, columns, disk_capacity=200, disk_segment_rows=13),
        ColdTier(str(tmp_path), "real", columns, 200, 13),
    )
    rng = np.random.default_rng(0)
    n = 150
    chunk = {
        "image": rng.integers(0, 256, size=(n, 2, 3)).astype(np.uint8),
        "mask": rng.random((n, 5)) < 0.5,
        "flag": rng.random(n) < 0.3,
        "value": rng.normal(size=n),
        "half": rng.normal(size=(n, 3)).astype(np.float16),
        "count": rng.integers(-1000, 1000, size=n).astype(np.int32),
        "big": rng.integers(2**63, 2**64 - 1, size=n, dtype=np.uint64),
        "seq": np.arange(n, dtype=np.int64),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every segment is memory-mapped, none falls back to decoding
        for start in range(0, n, 7):
            table.insert({name: column[start : start + 7] for name, column in chunk.items()})
    assert table.cold.stats()["disk_files"] == 140 // 13
    batch = table.sample(2000, np.random.default_rng(1), with_keys=True)
    for name, column in chunk.items():
        np.testing.assert_array_equal(batch[name], column[batch["key"]], err_msg=name)
        assert batch[name].dtype == column.dtype and batch[name].shape[1:] == column.shape[1:]


def test_snapshots_during_inserts_and_samples_then_kill_keep_every_row_once(tmp_path):
    cfg = cold_config(capacity=150, disk=3000, segment=100, persist=True)
    shard = ReplayShard([cfg], directory=str(tmp_path))
    insert_in_order(shard, [10] * 20)
    done = threading.Event()
    errors = []

    def repeat(action):
        def run():
            while not done.is_set():
                try:
                    action()
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return

        return threading.Thread(target=run)

    def sample():
        batch = shard.sample("real", 32, with_keys=True)
        assert (batch["seq"] == batch["key"]).all()

    threads = [repeat(lambda: shard.snapshot("real")), repeat(sample)]
    for thread in threads:
        thread.start()
    try:
        inserted = insert_in_order(shard, [9] * 400, start=200)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert_rows_are_keys(shard_rows(shard), inserted - 3150, inserted - 1)
    kill(shard)
    again = ReplayShard([cfg], directory=str(tmp_path))
    assert_rows_are_keys(shard_rows(again), inserted - 3150, inserted - 1)
    again.close()
