"""``dynaray replay import``: datasets (replay/datasets.py) logged into a replay directory (replay/importer.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replay import ReplayShard, SchemaError, transition_columns
from replay.datasets import DATA_COLUMNS, load_dataset
from replay.export import export_table
from replay.importer import IMPORT_WRITER_ID, import_dataset
from replay.stored import OfflineError, read_table
from replay.writers import EPISODE_BITS, writer_role
from tests.replay.helpers import files_state, fill, live_rows, make_chunk, persisted, write_two_shards


def by_first_obs(data):
    order = np.argsort(data["obs"][:, 0], kind="stable")
    return {k: np.asarray(v)[order] for k, v in data.items()}


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
    for name in DATA_COLUMNS + ("step",):
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
