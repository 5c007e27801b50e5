"""Minari datasets on local disk (replay/minari_io.py): written with the Arrow backend, read back row for row, and
imported like any dataset; bad datasets end in one line."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from replay.datasets import load_dataset
from replay.importer import import_dataset
from replay.minari_io import is_minari_dataset, read_minari, write_minari
from replay.stored import OfflineError, read_table

OBS_SPACE = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
ACT_SPACE = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def episodes(lengths=(4, 7, 5), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, length in enumerate(lengths):
        terminated = np.zeros(length, bool)
        truncated = np.zeros(length, bool)
        (terminated if i % 2 else truncated)[-1] = True
        out.append({"observations": rng.normal(size=(length + 1, 3)).astype(np.float32),
                    "actions": rng.uniform(-2, 2, size=(length, 1)).astype(np.float32),
                    "rewards": rng.normal(size=length).astype(np.float32),
                    "terminations": terminated, "truncations": truncated})
    return out


def test_round_trip_same_rows(tmp_path):
    written = episodes()
    data_path = write_minari(str(tmp_path), "test/pendulum/random-v0", written, OBS_SPACE, ACT_SPACE,
                             env_id="Pendulum-v1")
    assert is_minari_dataset(str(tmp_path / "test/pendulum/random-v0")) and is_minari_dataset(data_path)
    assert list((tmp_path / "test/pendulum/random-v0/data/0").glob("*.arrow"))  # the Arrow backend
    dataset = read_minari(str(tmp_path / "test/pendulum/random-v0"))
    assert dataset.source_format == "minari" and dataset.rows == 16 and dataset.episodes == 3
    expected_obs = np.concatenate([e["observations"][:-1] for e in written])
    np.testing.assert_array_equal(dataset.data["obs"], expected_obs)
    np.testing.assert_array_equal(dataset.data["next_obs"], np.concatenate([e["observations"][1:] for e in written]))
    np.testing.assert_array_equal(dataset.data["action"], np.concatenate([e["actions"] for e in written]))
    np.testing.assert_allclose(dataset.data["reward"], np.concatenate([e["rewards"] for e in written]))
    np.testing.assert_array_equal(dataset.data["terminated"], np.concatenate([e["terminations"] for e in written]))
    np.testing.assert_array_equal(dataset.data["truncated"], np.concatenate([e["truncations"] for e in written]))
    np.testing.assert_array_equal(dataset.step, np.concatenate([np.arange(n) for n in (4, 7, 5)]))

    # load_dataset and import_dataset take it like any other dataset; the imported rows are the same
    assert load_dataset(data_path).rows == 16
    result = import_dataset(str(tmp_path / "test/pendulum/random-v0"), str(tmp_path / "replay"), shards=1)
    assert result.rows == 16 and result.source_format == "minari"
    rows = read_table(str(tmp_path / "replay"), "real").concatenated()
    np.testing.assert_array_equal(np.sort(rows["obs"][:, 0]), np.sort(expected_obs[:, 0]))


def test_bad_datasets_end_in_one_line(tmp_path):
    with pytest.raises(OfflineError, match="no episodes to write"):
        write_minari(str(tmp_path), "test/empty-v0", [], OBS_SPACE, ACT_SPACE)
    write_minari(str(tmp_path), "test/a-v0", episodes(), OBS_SPACE, ACT_SPACE)
    with pytest.raises(OfflineError, match="exists already"):
        write_minari(str(tmp_path), "test/a-v0", episodes(), OBS_SPACE, ACT_SPACE)
    with pytest.raises(OfflineError, match="is not a Minari dataset"):
        read_minari(str(tmp_path))
    nan = episodes()
    nan[1]["rewards"][2] = np.nan
    write_minari(str(tmp_path), "test/nan-v0", nan, OBS_SPACE, ACT_SPACE)
    with pytest.raises(OfflineError, match=r"1 non-finite value\(s\) in 'reward'") as caught:
        load_dataset(str(tmp_path / "test/nan-v0"))
    assert "\n" not in str(caught.value)
