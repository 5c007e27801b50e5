"""Reading persisted replay tables read-only, through the shards' own recovery (replay/stored.py)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from replay import ReplayShard, SchemaError, TableConfig, arrow_schema, transition_columns
from replay.persistence import TableStore, table_directory
from replay.schema import ColumnSpec, columns_from_arrow_schema
from replay.stored import read_table
from tests.replay.helpers import CHUNK, COLUMNS, files_state, fill, live_rows, make_chunk, persisted, write_two_shards


def test_columns_from_arrow_schema_inverts_arrow_schema():
    columns = transition_columns((2, 3), (4,)) + (ColumnSpec("flag", (), "uint8"), ColumnSpec("h", (5,), "float16"))
    assert columns_from_arrow_schema(arrow_schema(columns)) == columns
    assert columns_from_arrow_schema(arrow_schema(columns), skip=("h", "flag")) == columns[:-2]
    with pytest.raises(SchemaError, match=r"column 'name'.*string"):
        columns_from_arrow_schema(pa.schema([pa.field("name", pa.string())]))


def test_read_only_store_refuses_writes_and_takes_no_lock(tmp_path):
    shard = ReplayShard([persisted()], directory=str(tmp_path))
    fill(shard, 2, writer_id=0)
    root = table_directory(str(tmp_path), 0, "real")
    store = TableStore(root, persisted(), read_only=True)  # the shard holds the LOCK
    with pytest.raises(RuntimeError, match="read-only"):
        store.append_insert(make_chunk(CHUNK), 0)
    with pytest.raises(RuntimeError, match="read-only"):
        store.remove_before(5)
    store.close()
    shard.close()
    with pytest.raises(FileNotFoundError):
        TableStore(str(tmp_path / "nope"), persisted(), read_only=True)


def test_read_table_while_live_matches_the_shards_and_changes_nothing(tmp_path):
    # small capacity and automatic snapshots: rows come from a snapshot plus later logs, some were evicted
    shards = write_two_shards(tmp_path, sampler="prioritized", capacity=40, every=24, chunks=9)
    sample = shards[0].sample("real", 5, with_keys=True)
    shards[0].update_priorities("real", sample["key"], np.arange(5) + 2.0)
    fill(shards[0], 1, writer_id=0, start_seq=9 * CHUNK)
    before = files_state(tmp_path)
    stored = read_table(str(tmp_path), "real", capacity=40)
    assert files_state(tmp_path) == before
    assert [s.index for s in stored.shards] == [0, 1]
    for shard, part in zip(shards, stored.shards):
        data, keys, priorities = live_rows(shard)
        for name in data:
            np.testing.assert_array_equal(part.chunk[name], data[name], err_msg=name)
        np.testing.assert_array_equal(part.keys, keys)
        np.testing.assert_allclose(part.priorities, priorities)
        assert part.inserted == shard.stats()["real"]["inserted"]
        assert part.disk_bytes > 0 and part.generations["snapshot"]
    # without a capacity every row on disk is read: the snapshot plus every logged insert after it
    assert read_table(str(tmp_path), "real").rows >= stored.rows
    for shard in shards:
        shard.close()


def test_torn_tail_is_skipped_with_a_warning_and_left_in_place(tmp_path):
    shard = ReplayShard([persisted()], directory=str(tmp_path))
    fill(shard, 3, writer_id=0)
    wal = os.path.join(table_directory(str(tmp_path), 0, "real"), "wal-0.log")
    complete = os.path.getsize(wal)
    fill(shard, 1, writer_id=0, start_seq=3 * CHUNK)
    shard.close()
    with open(wal, "r+b") as f:
        f.truncate(complete + 40)  # the last record is cut in the middle
    with pytest.warns(RuntimeWarning, match=r"wal-0\.log: skipped a torn final record"):
        stored = read_table(str(tmp_path), "real")
    assert stored.rows == 3 * CHUNK
    assert os.path.getsize(wal) == complete + 40


def test_read_table_includes_the_cold_tier_rows_oldest_first_and_changes_nothing(tmp_path):
    config = TableConfig("real", 40, COLUMNS, persist=True, disk_capacity=400, disk_segment_rows=32)
    shard = ReplayShard([config], directory=str(tmp_path))
    for start in range(0, 160, 8):
        shard.insert("real", make_chunk(8, start_seq=start, writer_id=1), writer_id=1)
    shard.snapshot("real")  # writes the staged cold rows, keeps the 40 newest in the snapshot
    for start in range(160, 240, 8):
        shard.insert("real", make_chunk(8, start_seq=start, writer_id=1), writer_id=1)
    before = files_state(tmp_path)
    live = read_table(str(tmp_path), capacity=40, disk_capacity=400)  # the shard holds both LOCKs
    assert files_state(tmp_path) == before
    shard.close()
    assert live.shards[0].chunk["seq"].tolist() == list(range(240))

    root = table_directory(str(tmp_path), 0, "real")
    for leftover in ("snapshot-9.parquet.tmp", os.path.join("cold", f"segment-{240:020d}.parquet.tmp")):
        with open(os.path.join(root, leftover), "wb") as f:
            f.write(b"half written")  # a shard would remove these; readers leave them
    before = files_state(tmp_path)
    stored = read_table(str(tmp_path), capacity=40, disk_capacity=400)
    part = stored.shards[0]
    assert part.chunk["seq"].tolist() == list(range(240))
    assert part.keys.tolist() == list(range(240))
    assert read_table(str(tmp_path), capacity=40, disk_capacity=100).shards[0].chunk["seq"].tolist() == list(
        range(100, 240)
    )
    assert read_table(str(tmp_path)).shards[0].chunk["seq"].tolist() == list(range(240))  # every row on disk
    assert files_state(tmp_path) == before


def test_read_table_leaves_out_rows_removed_after_max_times_sampled(tmp_path):
    # removals logged before a snapshot (kept in it as -1) and after it (in the sampled log), while the shard lives
    config = TableConfig("real", 100, COLUMNS, persist=True, max_times_sampled=1)
    shard = ReplayShard([config], directory=str(tmp_path))
    fill(shard, 4, writer_id=0)
    removed = shard.sample("real", 5, with_keys=True)["key"].tolist()
    shard.snapshot("real")
    removed += shard.sample("real", 6, with_keys=True)["key"].tolist()
    fill(shard, 1, writer_id=0, start_seq=4 * CHUNK)
    assert len(set(removed)) == 11
    kept = [key for key in range(5 * CHUNK) if key not in removed]
    for capacity in (100, None):
        stored = read_table(str(tmp_path), "real", capacity=capacity)
        assert stored.shards[0].keys.tolist() == kept
        assert stored.shards[0].chunk["seq"].tolist() == kept  # seq counts like the keys here
        assert stored.shards[0].inserted == 5 * CHUNK
    shard.close()
    assert read_table(str(tmp_path), "real").shards[0].keys.tolist() == kept
