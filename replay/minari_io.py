"""Minari datasets (the Farama offline-RL format) on local disk: written by ``dynaray collect``, read by
``dynaray replay import`` and ``dynaray train offline``.

A Minari dataset is a directory ``<root>/<dataset id>/data/`` holding ``metadata.json`` and one sub-directory per
episode (Arrow backend: ``<episode>/part-0.arrow``; the HDF5 backend is read too when ``h5py`` is installed). Each
episode has ``observations`` (T + 1 rows), ``actions``, ``rewards``, ``terminations`` and ``truncations`` (T rows).
Only the ``minari`` package's local storage classes are used: nothing is downloaded, no remote is asked.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from replay.datasets import DATA_COLUMNS, Dataset
from replay.stored import OfflineError

__all__ = ["MinariEpisode", "is_minari_dataset", "minari_data_path", "read_minari", "write_minari"]

MinariEpisode = dict
"""One episode to write: ``observations`` (T + 1, ...), ``actions`` (T, ...), ``rewards``, ``terminations`` and
``truncations`` (T,)."""


def minari_data_path(path: str) -> str | None:
    """The ``data`` directory of the Minari dataset at ``path`` (the dataset directory or its ``data``), or None when
    ``path`` is not one."""
    for candidate in (os.path.join(path, "data"), path):
        meta = os.path.join(candidate, "metadata.json")
        if os.path.isfile(meta):
            try:
                with open(meta) as handle:
                    content = json.load(handle)
            except (OSError, ValueError):
                continue
            if isinstance(content, dict) and "data_format" in content and "total_episodes" in content:
                return candidate
    return None


def is_minari_dataset(path: str) -> bool:
    """Whether ``path`` is a Minari dataset directory (or its ``data`` directory)."""
    return os.path.isdir(path) and minari_data_path(path) is not None


def _minari():
    try:
        import minari
    except ImportError:
        raise OfflineError("reading or writing Minari datasets needs the 'minari' package: pip install -c "
                           "constraints.txt minari") from None
    return minari


@contextmanager
def _datasets_root(root: str) -> Iterator[None]:
    """Minari places new datasets under ``$MINARI_DATASETS_PATH``: point it at ``root`` for the call."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = os.path.abspath(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


def write_minari(root: str, dataset_id: str, episodes: Sequence[MinariEpisode], observation_space: Any,
                 action_space: Any, env_id: str | None = None, algorithm_name: str | None = None,
                 description: str | None = None) -> str:
    """Write ``episodes`` as the Minari dataset ``dataset_id`` (e.g. ``dynaray/pendulum/random-v0``) under ``root``
    with the Arrow backend; return its ``data`` directory. ``env_id``: a registered gymnasium id recorded as the
    dataset's env (None for an env gymnasium does not know; the spaces are recorded either way).

    Raises:
        OfflineError: no episodes, the dataset exists already, or minari is not installed.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    if not episodes:
        raise OfflineError(f"Minari dataset {dataset_id!r}: no episodes to write")
    target = os.path.join(root, dataset_id)
    if os.path.exists(target):
        raise OfflineError(f"Minari dataset {target!r} exists already; expected a new dataset id or root")
    buffers = [
        EpisodeBuffer(id=i, observations=np.asarray(e["observations"]), actions=np.asarray(e["actions"]),
                      rewards=np.asarray(e["rewards"], dtype=np.float64),
                      terminations=np.asarray(e["terminations"], dtype=bool),
                      truncations=np.asarray(e["truncations"], dtype=bool), infos={})
        for i, e in enumerate(episodes)
    ]
    env = None
    if env_id is not None:
        import gymnasium as gym

        try:
            env = gym.spec(env_id)
        except gym.error.Error:
            env = None
    with _datasets_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari asks for author, e-mail, permalink: not ours to give
        dataset = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, observation_space=observation_space, action_space=action_space,
            algorithm_name=algorithm_name, description=description, data_format="arrow",
        )
    return str(dataset.spec.data_path)


def read_minari(path: str) -> Dataset:
    """A local Minari dataset (its directory or its ``data`` directory) as a :class:`Dataset` (episodes in id order).

    Raises:
        OfflineError: not a Minari dataset, minari missing, unreadable files, or episodes of the wrong layout.
    """
    data_path = minari_data_path(path)
    if data_path is None:
        raise OfflineError(f"{path!r} is not a Minari dataset: no data/metadata.json with data_format")
    _minari()
    from minari.dataset.minari_dataset import MinariDataset

    try:
        dataset = MinariDataset(data_path)
        episodes = list(dataset.iterate_episodes())
    except Exception as exc:  # minari raises many kinds for a damaged dataset
        raise OfflineError(f"Minari dataset {path!r} cannot be read: {type(exc).__name__}: {exc}".splitlines()[0]) \
            from None
    columns: dict[str, list[np.ndarray]] = {name: [] for name in DATA_COLUMNS}
    episode_numbers, steps = [], []
    for number, episode in enumerate(episodes):
        observations = np.asarray(episode.observations)
        length = len(episode.actions)
        if not isinstance(episode.observations, np.ndarray) or len(observations) != length + 1:
            raise OfflineError(
                f"Minari dataset {path!r}: episode {episode.id}: observations of shape {np.shape(observations)}, "
                f"expected an array of len(actions) + 1 = {length + 1} rows (Box observations)"
            )
        columns["obs"].append(observations[:-1])
        columns["next_obs"].append(observations[1:])
        columns["action"].append(np.asarray(episode.actions))
        columns["reward"].append(np.asarray(episode.rewards))
        columns["terminated"].append(np.asarray(episode.terminations, dtype=bool))
        columns["truncated"].append(np.asarray(episode.truncations, dtype=bool))
        episode_numbers.append(np.full(length, number, dtype=np.int64))
        steps.append(np.arange(length, dtype=np.int64))
    if not episodes:
        raise OfflineError(f"Minari dataset {path!r} has no episodes")
    data = {name: np.concatenate(parts) for name, parts in columns.items()}
    for name in ("obs", "next_obs", "action", "reward"):
        bad = int((~np.isfinite(data[name].astype(np.float64))).sum())
        if bad:
            raise OfflineError(f"Minari dataset {path!r}: {bad} non-finite value(s) in {name!r}; expected finite "
                               f"numbers")
    return Dataset(data, np.concatenate(episode_numbers), np.concatenate(steps), "minari", len(episodes))
