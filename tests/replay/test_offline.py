"""Export, import and inspection of replay tables outside a running system (replay/offline.py)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay.writers import EPISODE_BITS, writer_role
from replay import ReplayShard, SchemaError, TableConfig, arrow_schema, transition_columns
from replay.offline import (
    IMPORT_WRITER_ID,
    OfflineError,
    export_table,
    import_dataset,
    inspect_replay,
    load_dataset,
    read_table,
    run_rates,
)
from replay.persistence import TableStore, table_directory
from replay.schema import ColumnSpec, columns_from_arrow_schema
from tests.replay.helpers import COLUMNS, make_chunk

CHUNK = 8
DATA = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


def persisted(capacity=1000, sampler="uniform", every=0, columns=COLUMNS):
    return TableConfig(
        "real", capacity, columns, sampler=sampler, persist=True, snapshot_every_inserts=every, priority_exponent=0.5
    )


def fill(shard, chunks, writer_id, start_seq=0):
    for i in range(chunks):
        chunk = make_chunk(CHUNK, start_seq=start_seq + i * CHUNK, writer_id=writer_id)
        assert shard.insert("real", chunk, writer_id)["status"] == "ok"


def live_rows(shard):
    """Rows, keys and raw priorities of a shard's table, oldest to newest (under the shard's lock)."""
    state = shard._state("real")
    with state.cond:
        data, inserted, weights, _ = state.table.export()
    keys = np.arange(inserted - len(data["seq"]), inserted)
    priorities = None if weights is None else weights ** (1 / state.table.config.priority_exponent)
    return data, keys, priorities


def files_state(directory):
    """Every file under a directory with its size and modification time."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
    return out


def write_two_shards(directory, sampler="uniform", capacity=1000, every=0, chunks=6):
    """Two live shards with different writers and seq ranges; returns the open shards."""
    shards = []
    for index in range(2):
        shard = ReplayShard([persisted(capacity, sampler, every)], directory=str(directory), index=index)
        fill(shard, chunks, writer_id=index, start_seq=1000 * index)
        shards.append(shard)
    return shards


def by_first_obs(data):
    order = np.argsort(data["obs"][:, 0], kind="stable")
    return {k: np.asarray(v)[order] for k, v in data.items()}


# ---- schema inverse and read-only store --------------------------------------------------------------------------


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


# ---- reading and exporting ---------------------------------------------------------------------------------------


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


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(OfflineError, match="not a replay directory"):
        read_table(str(tmp_path), "real")
    ReplayShard([persisted()], directory=str(tmp_path)).close()
    with pytest.raises(OfflineError, match=r"has no table 'imagined'; it has \['real'\]"):
        read_table(str(tmp_path), "imagined")
    with pytest.raises(OfflineError, match="no rows on disk"):
        export_table(read_table(str(tmp_path), "real"), str(tmp_path / "out"))


# ---- importing ---------------------------------------------------------------------------------------------------


def test_round_trip_export_import_recover(tmp_path):
    shards = write_two_shards(tmp_path / "run")
    source = read_table(str(tmp_path / "run"), "real")
    export_table(source, str(tmp_path / "export"))
    for shard in shards:
        shard.close()

    result = import_dataset(str(tmp_path / "export"), str(tmp_path / "offline"), shards=3)
    assert result.rows == source.rows and len(result.rows_per_shard) == 3
    assert result.episodes == 2 * 5  # each writer's 48 rows are 5 episodes (steps 0..9, the last one 0..7)

    recovered = [
        ReplayShard([persisted(capacity=10_000)], directory=str(tmp_path / "offline"), index=i) for i in range(3)
    ]
    parts = [live_rows(s)[0] for s in recovered]
    assert [len(p["seq"]) for p in parts] == result.rows_per_shard
    assert all(len(p["seq"]) > 0 for p in parts)
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    want = source.concatenated()
    got_sorted, want_sorted = by_first_obs(got), by_first_obs(want)
    for name in DATA + ("step",):
        np.testing.assert_array_equal(got_sorted[name], want_sorted[name], err_msg=name)
    assert (got["writer_id"] == IMPORT_WRITER_ID).all() and (got["policy_version"] == -1).all()
    assert ((got["episode_id"] >> EPISODE_BITS) == IMPORT_WRITER_ID).all()
    assert writer_role(IMPORT_WRITER_ID) == "import"
    assert len(np.unique(got["episode_id"])) == 10
    for part in parts:
        assert (np.diff(part["seq"]) > 0).all()
        # whole episodes per shard, in step order: every episode's steps are consecutive rows
        for episode in np.unique(part["episode_id"]):
            rows = np.flatnonzero(part["episode_id"] == episode)
            assert (np.diff(rows) == 1).all() and (np.diff(part["step"][rows]) == 1).all()
    assert len(np.unique(got["seq"])) == len(got["seq"])
    for shard in recovered:
        shard.close()


def test_second_import_continues_seq_and_episode_ids(tmp_path):
    npz = tmp_path / "d4rl.npz"
    np.savez(npz, **d4rl_arrays(30, episode_ends=[9, 19, 29]))
    first = import_dataset(str(npz), str(tmp_path / "replay"))
    second = import_dataset(str(npz), str(tmp_path / "replay"))
    assert second.first_seq == first.rows
    assert second.first_episode_id == first.first_episode_id + first.episodes
    assert len(second.rows_per_shard) == 2  # the shards the directory already has
    shards = [ReplayShard([persisted()], directory=str(tmp_path / "replay"), index=i) for i in range(2)]
    seqs = np.concatenate([live_rows(s)[0]["seq"] for s in shards])
    assert sorted(seqs.tolist()) == list(range(first.rows + second.rows))
    # a live shard keeps the directory: an import is refused and writes nothing
    before = files_state(tmp_path / "replay")
    with pytest.raises(RuntimeError, match="in use by another live shard"):
        import_dataset(str(npz), str(tmp_path / "replay"))
    assert files_state(tmp_path / "replay") == before
    for shard in shards:
        shard.close()
    with pytest.raises(OfflineError, match="has 2 shards, got shards=3"):
        import_dataset(str(npz), str(tmp_path / "replay"), shards=3)


def d4rl_arrays(n, episode_ends, obs_dim=4, action_dim=2, next_obs=True, terminal_at=()):
    observations = np.arange(n * obs_dim, dtype=np.float64).reshape(n, obs_dim)
    arrays = {
        "observations": observations,
        "actions": np.full((n, action_dim), 0.5, dtype=np.float32),
        "rewards": np.arange(n, dtype=np.float32).reshape(n, 1),
        "terminals": np.isin(np.arange(n), terminal_at).astype(np.float32),
        "timeouts": np.isin(np.arange(n), [e for e in episode_ends if e not in terminal_at]),
    }
    if next_obs:
        arrays["next_observations"] = observations + 0.5
    return arrays


def test_d4rl_with_next_observations_maps_one_row_per_transition(tmp_path):
    np.savez(tmp_path / "data.npz", **d4rl_arrays(25, episode_ends=[9, 19], terminal_at=[9]))
    dataset = load_dataset(str(tmp_path / "data.npz"))
    assert dataset.source_format == "d4rl" and dataset.rows == 25 and dataset.episodes == 3
    np.testing.assert_array_equal(dataset.data["next_obs"], dataset.data["obs"] + 0.5)
    assert np.flatnonzero(dataset.data["terminated"]).tolist() == [9]
    assert np.flatnonzero(dataset.data["truncated"]).tolist() == [19]
    assert dataset.step.tolist() == list(range(10)) + list(range(10)) + list(range(5))
    assert dataset.data["reward"].shape == (25,)


def test_d4rl_without_next_observations_derives_them_and_drops_last_steps(tmp_path):
    np.savez(tmp_path / "data.npz", **d4rl_arrays(25, episode_ends=[9, 19], terminal_at=[9], next_obs=False))
    dataset = load_dataset(str(tmp_path / "data.npz"))
    assert dataset.rows == 22 and dataset.episodes == 3
    assert (dataset.dropped_rows, dataset.dropped_terminal) == (3, 1)
    obs = np.arange(25 * 4, dtype=np.float32).reshape(25, 4)
    kept = np.array([i for i in range(25) if i not in (9, 19, 24)])
    np.testing.assert_array_equal(dataset.data["obs"], obs[kept])
    np.testing.assert_array_equal(dataset.data["next_obs"], obs[kept + 1])
    assert not dataset.data["terminated"].any() and not dataset.data["truncated"].any()
    result = import_dataset(dataset, str(tmp_path / "replay"))
    assert result.rows == 22 and result.episodes == 3


def test_minari_episode_directory(tmp_path):
    source = tmp_path / "episodes"
    source.mkdir()
    for i, steps in enumerate([5, 3, 12]):  # episode-10 sorts after episode-2
        observations = np.arange((steps + 1) * 3, dtype=np.float32).reshape(steps + 1, 3) + 100 * i
        np.savez(
            source / f"episode-{[0, 2, 10][i]}.npz",
            observations=observations,
            actions=np.zeros((steps, 1), dtype=np.float32),
            rewards=np.ones(steps),
            terminations=np.arange(steps) == steps - 1 if i != 2 else np.zeros(steps, dtype=bool),
            truncations=np.zeros(steps, dtype=bool) if i != 2 else np.arange(steps) == steps - 1,
        )
    dataset = load_dataset(str(source))
    assert dataset.source_format == "minari" and dataset.files == 3 and dataset.episodes == 3
    assert dataset.rows == 20
    assert dataset.episode.tolist() == [0] * 5 + [1] * 3 + [2] * 12
    np.testing.assert_array_equal(dataset.data["next_obs"][:5], dataset.data["obs"][:5] + 3)
    assert dataset.data["obs"][8, 0] == 200  # the third file is episode-10
    result = import_dataset(dataset, str(tmp_path / "replay"), shards=1)
    assert result.rows_per_shard == [20]
    stored = read_table(str(tmp_path / "replay"), "real")
    assert stored.columns == transition_columns((3,), (1,))
    assert stored.shards[0].chunk["terminated"].sum() == 2 and stored.shards[0].chunk["truncated"].sum() == 1


def write_parquet(path, n=20, drop=(), **replace):
    chunk = make_chunk(n)
    arrays = {}
    for name, values in {**chunk, **replace}.items():
        if name in drop:
            continue
        if isinstance(values, pa.Array):
            arrays[name] = values
        elif values.ndim == 2:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        else:
            arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", r"missing column\(s\) \['next_obs'\]"),
        ("dtype", r"column 'reward' has Arrow type string; expected numbers"),
        ("bool", r"column 'terminated': dtype int64 cannot be cast safely to bool"),
        ("shape", r"column 'action': expected shape \(N, 2\), got \(20, 3\)"),
        ("nan", r"column 'reward': non-finite values \(NaN or inf\) in 1 row\(s\), first at row 7"),
        ("unexpected", r"unexpected column\(s\) \['rewards'\]"),
        ("lists", r"column 'obs' holds lists of lengths \[3, 4\]"),
    ],
)
def test_bad_parquet_is_refused_by_name_and_nothing_is_written(tmp_path, kind, message):
    # the target already holds a table with action shape (2,), so a dataset must match it
    target = tmp_path / "replay"
    shard = ReplayShard([persisted()], directory=str(target))
    fill(shard, 1, writer_id=0)
    shard.close()
    path = str(tmp_path / "bad.parquet")
    reward = np.arange(20, dtype=np.float32)
    reward[7] = np.nan
    obs_lists = pa.array([[0.0] * (3 if i == 5 else 4) for i in range(20)], pa.list_(pa.float32()))
    variants = {
        "missing": dict(drop=("next_obs",)),
        "dtype": dict(reward=pa.array([str(i) for i in range(20)])),
        "bool": dict(terminated=np.zeros(20, dtype=np.int64)),
        "shape": dict(action=np.ones((20, 3), dtype=np.float32)),
        "nan": dict(reward=reward),
        "unexpected": dict(rewards=np.zeros(20, dtype=np.float32)),
        "lists": dict(obs=obs_lists),
    }
    write_parquet(path, **variants[kind])
    before = files_state(target)
    with pytest.raises((OfflineError, SchemaError), match=message):
        import_dataset(path, str(target))
    assert files_state(target) == before
    if kind != "shape":  # a fresh table would take the dataset's shapes
        with pytest.raises((OfflineError, SchemaError), match=message):
            import_dataset(path, str(tmp_path / "fresh"))
        assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rewards=np.where(np.arange(10) == 4, np.inf, 0.0)), r"array 'rewards': non-finite .* first at row 4"),
        (dict(actions=np.zeros((10, 3))), (r"column 'action': expected shape \(N, 2\), got \(9, 3\) "
                                           r"\(from array 'actions'\)")),
        (dict(actions=np.zeros((9, 2))), r"array 'actions': expected shape \(10, \.\.\.\), got \(9, 2\)"),
        (dict(terminals=np.full(10, 0.5)), r"array 'terminals': expected bool or 0/1 values, got 0.5 at row 0"),
        (dict(timeouts=None), r"missing array\(s\) \['timeouts'\]"),
        (dict(observations=np.array(["a"] * 10)), r"column 'obs': dtype <U1 cannot be cast safely to float32"),
    ],
)
def test_bad_npz_is_refused_by_name_and_nothing_is_written(tmp_path, change, message):
    target = tmp_path / "replay"
    shard = ReplayShard([persisted()], directory=str(target))
    fill(shard, 1, writer_id=0)
    shard.close()
    arrays = {k: v for k, v in {**d4rl_arrays(10, [9], next_obs=False), **change}.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    before = files_state(target)
    with pytest.raises((OfflineError, SchemaError), match=message):
        import_dataset(str(tmp_path / "bad.npz"), str(target))
    assert files_state(target) == before


def test_bad_sources(tmp_path):
    with pytest.raises(OfflineError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OfflineError, match="holds no .parquet or .npz files"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(OfflineError, match="expected a .parquet or .npz file"):
        load_dataset(str(tmp_path / "notes.txt"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(OfflineError, match="not a readable Parquet file"):
        load_dataset(str(tmp_path / "broken.parquet"))


def test_parquet_without_episode_ids_splits_at_flags_and_file_ends(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(2):
        write_parquet(tmp_path / "data" / f"part-{i}.parquet", n=15, drop=("episode_id", "step"))
    dataset = load_dataset(str(tmp_path / "data"))
    # truncated at seq 9 in each file of 15 rows: episodes 0..9 and 10..14 per file
    assert dataset.episodes == 4
    assert dataset.step.tolist() == (list(range(10)) + list(range(5))) * 2


# ---- inspection --------------------------------------------------------------------------------------------------


def test_inspect_counts_sizes_and_column_stats(tmp_path):
    shards = write_two_shards(tmp_path, chunks=3)
    report = inspect_replay(str(tmp_path))
    table = report["tables"]["real"]
    assert report["shards"] == 2 and table["rows"] == 48 and table["inserted"] == 48
    assert [s["rows"] for s in table["shards"]] == [24, 24]
    assert table["disk_bytes"] == sum(s["disk_bytes"] for s in table["shards"]) > 0
    assert table["episodes"] == 6 and table["truncated"] == 4 and table["terminated"] == 0 and table["writers"] == 2
    stats = {s.name: s for s in table["columns"]}
    assert (stats["reward"].min, stats["reward"].max, stats["reward"].nan) == (0.0, 1023.0, 0)
    assert stats["obs"].component_means[0] == 0.0 and stats["obs"].shape == (4,)
    assert stats["truncated"].true == 4 and stats["seq"].max == 1023
    assert report["rates"] is None
    with pytest.raises(OfflineError, match=r"no table\(s\) \['imagined'\]"):
        inspect_replay(str(tmp_path), tables=["imagined"])
    for shard in shards:
        shard.close()


def test_run_rates_from_metrics():
    metrics = pa.table(
        {
            "env_steps": [100, 200],
            "wall_time_s": [5.0, 10.0],
            "env_steps_per_s": [20.0, 22.0],
            "policy_total_updates": [300, 800],
            "policy_updates_per_s": [60.0, 100.0],
            "replay_insert_rows_per_s": [float("nan"), 21.0],
        }
    )
    rates = run_rates(metrics)
    assert rates["env_steps"] == 200 and rates["wall_time_s"] == 10.0
    assert rates["overall"] == {
        "env_steps_per_s": 20.0,
        "policy_updates_per_s": 80.0,
        "policy_updates_per_env_step": 4.0,
    }
    assert rates["per_report"]["policy_updates_per_s"] == {"mean": 80.0, "last": 100.0}
    assert rates["per_report"]["replay_insert_rows_per_s"] == {"mean": 21.0, "last": 21.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_rates(metrics.slice(0, 0))["overall"] == {}


def test_import_continues_seq_past_evicted_imports(tmp_path):
    np.savez(tmp_path / "d.npz", **d4rl_arrays(20, episode_ends=[9, 19]))
    first = import_dataset(str(tmp_path / "d.npz"), str(tmp_path / "replay"), shards=1)
    # a run over the directory evicts every imported row and compacts: only the snapshot's dedup keys remember them
    shard = ReplayShard([persisted(capacity=16)], directory=str(tmp_path / "replay"))
    fill(shard, 2, writer_id=0)
    shard.snapshot("real")
    assert not (live_rows(shard)[0]["writer_id"] == IMPORT_WRITER_ID).any()
    shard.close()
    second = import_dataset(str(tmp_path / "d.npz"), str(tmp_path / "replay"))
    assert second.first_seq > first.first_seq


def test_parquet_rows_are_grouped_by_episode_and_ordered_by_step(tmp_path):
    chunk = make_chunk(30)
    order = np.random.default_rng(1).permutation(30)
    arrays = {}
    for name, values in chunk.items():
        values = values[order]
        arrays[name] = (
            pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            if values.ndim == 2 else pa.array(values)
        )
    pq.write_table(pa.table(arrays), tmp_path / "shuffled.parquet")
    dataset = load_dataset(str(tmp_path / "shuffled.parquet"))
    assert dataset.episodes == 3 and dataset.step.tolist() == list(range(10)) * 3
    # episodes in order of their first row in the file
    firsts = sorted(range(3), key=lambda e: np.flatnonzero(chunk["episode_id"][order] == e)[0])
    assert dataset.data["obs"][::10, 0].tolist() == [10.0 * e for e in firsts]


def test_read_table_includes_the_cold_tier_rows_oldest_first(tmp_path):
    config = TableConfig("real", 40, COLUMNS, persist=True, disk_capacity=400, disk_segment_rows=32)
    shard = ReplayShard([config], directory=str(tmp_path))
    for start in range(0, 160, 8):
        shard.insert("real", make_chunk(8, start_seq=start, writer_id=1), writer_id=1)
    shard.snapshot("real")  # writes the staged cold rows, keeps the 40 newest in the snapshot
    for start in range(160, 240, 8):
        shard.insert("real", make_chunk(8, start_seq=start, writer_id=1), writer_id=1)
    shard.close()

    stored = read_table(str(tmp_path), capacity=40 + 400)
    part = stored.shards[0]
    assert part.chunk["seq"].tolist() == list(range(240))
    assert part.keys.tolist() == list(range(240))
    assert read_table(str(tmp_path), capacity=40 + 100).shards[0].chunk["seq"].tolist() == list(range(100, 240))
