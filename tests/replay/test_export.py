"""``dynaray replay export``: persisted tables as plain Parquet (replay/export.py)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay import ReplayShard, TableConfig
from replay.export import export_table
from replay.inspection import inspect_replay
from replay.stored import OfflineError, read_table
from tests.replay.helpers import CHUNK, COLUMNS, fill, live_rows, persisted, write_two_shards


def test_export_is_plain_parquet_for_pyarrow_and_pandas(tmp_path):
    shards = write_two_shards(tmp_path / "replay", sampler="prioritized")
    shards[1].update_priorities("real", np.array([3, 4]), np.array([0.5, 7.0]))
    stored = read_table(str(tmp_path / "replay"), "real")
    paths = export_table(stored, str(tmp_path / "out"))
    assert [os.path.basename(p) for p in paths] == ["real-shard-0.parquet", "real-shard-1.parquet"]

    table = pq.read_table(tmp_path / "out")  # the directory as one dataset
    assert table.num_rows == 2 * 6 * CHUNK
    assert table.schema.field("obs").type == pa.list_(pa.float32(), 4)
    expected = [c.name for c in COLUMNS] + ["__shard", "__key", "__priority"]
    assert table.column_names == expected
    one = pq.read_table(paths[1])
    data, keys, priorities = live_rows(shards[1])
    np.testing.assert_array_equal(np.stack(one.column("obs").to_numpy(zero_copy_only=False)), data["obs"])
    np.testing.assert_array_equal(one.column("__key").to_numpy(), keys)
    np.testing.assert_allclose(one.column("__priority").to_numpy(), priorities)
    assert one.column("__priority").to_numpy()[3:5].tolist() == [0.5, 7.0]
    assert (one.column("__shard").to_numpy() == 1).all()

    frame = pd.read_parquet(paths[0])
    assert len(frame) == 6 * CHUNK
    assert frame["seq"].tolist() == list(range(6 * CHUNK))
    assert np.stack(frame["next_obs"].to_numpy()).shape == (6 * CHUNK, 4)
    assert frame["terminated"].dtype == bool and frame["reward"].dtype == np.float32

    with pytest.raises(OfflineError, match="already holds Parquet files"):
        export_table(stored, str(tmp_path / "out"))
    for shard in shards:
        shard.close()


def test_export_read_by_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    shards = write_two_shards(tmp_path / "replay")
    export_table(read_table(str(tmp_path / "replay"), "real"), str(tmp_path / "out"))
    pattern = str(tmp_path / "out" / "*.parquet")
    con = duckdb.connect()
    [(rows, reward, width, shards_seen)] = con.execute(
        f"SELECT count(*), sum(reward), max(len(obs)), count(DISTINCT __shard) FROM read_parquet('{pattern}')"
    ).fetchall()
    assert (rows, width, shards_seen) == (2 * 6 * CHUNK, 4, 2)
    expected = sum(live_rows(s)[0]["reward"].astype(np.float64).sum() for s in shards)
    assert reward == pytest.approx(expected)
    first = con.execute(f"SELECT obs[1] FROM read_parquet('{pattern}') WHERE __shard = 1 ORDER BY __key LIMIT 1")
    assert first.fetchall() == [(1000.0,)]
    for shard in shards:
        shard.close()


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(OfflineError, match="not a replay directory"):
        read_table(str(tmp_path), "real")
    ReplayShard([persisted()], directory=str(tmp_path)).close()
    with pytest.raises(OfflineError, match=r"has no table 'imagined'; it has \['real'\]"):
        read_table(str(tmp_path), "imagined")
    with pytest.raises(OfflineError, match="no rows on disk"):
        export_table(read_table(str(tmp_path), "real"), str(tmp_path / "out"))


def test_export_and_inspect_leave_out_rows_removed_after_max_times_sampled(tmp_path):
    config = TableConfig("real", 100, COLUMNS, persist=True, max_times_sampled=1)
    shard = ReplayShard([config], directory=str(tmp_path / "replay"))
    fill(shard, 4, writer_id=0)
    removed = set(shard.sample("real", 10, with_keys=True)["key"].tolist())
    assert len(removed) == 10 and shard.size("real") == 4 * CHUNK - 10
    export_table(read_table(str(tmp_path / "replay"), "real"), str(tmp_path / "out"))
    exported = pq.read_table(tmp_path / "out")
    assert exported.column("__key").to_pylist() == [k for k in range(4 * CHUNK) if k not in removed]
    assert inspect_replay(str(tmp_path / "replay"))["tables"]["real"]["rows"] == shard.size("real")
    shard.close()
