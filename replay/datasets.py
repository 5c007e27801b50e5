"""Offline datasets for ``dynaray replay import``: Parquet, D4RL and Minari (files or a dataset), in memory.

:func:`load_dataset` reads a file or a directory of files of one kind (in natural order: ``episode-2.npz`` before
``episode-10.npz``) into a :class:`Dataset`: the :data:`DATA_COLUMNS`, rows grouped by episode, and each row's
episode number and step. Layouts:

* Parquet with the transition columns of docs/architecture.md; ``obs``, ``action``, ``reward``, ``next_obs``,
  ``terminated`` and ``truncated`` are required, ``episode_id`` and ``step`` are used when present (rows are grouped
  by episode and ordered by step), ``policy_version``, ``writer_id``, ``seq`` and an export's ``__`` columns are
  replaced by the import. Without ``episode_id`` an episode ends at a terminated or truncated row (and at the end of
  each file).
* ``.npz`` in the D4RL layout: ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` and optionally
  ``next_observations``, one row per transition. An episode ends at a terminal or timeout (and at the end of each
  file). Without ``next_observations`` the next observation is the next row's, within its episode, and the last
  step of every episode is dropped (its next observation is unknown).
* ``.npz`` per episode in the Minari layout: ``observations`` (T+1 rows), ``actions``, ``rewards``,
  ``terminations`` and ``truncations`` (T rows each).
* A Minari dataset directory (``<id>/`` or ``<id>/data/`` with ``metadata.json``), read with the ``minari``
  package's local storage (:mod:`replay.minari_io`).

Shapes and dtypes are checked against the target table by :func:`replay.importer.import_dataset`; here the layout
is: required columns or arrays, row counts, flags, lists of one length, finite numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.export import EXPORT_KEY_FIELD, EXPORT_PRIORITY_FIELD, SHARD_FIELD
from replay.stored import OfflineError

__all__ = ["DATA_COLUMNS", "GENERATED_COLUMNS", "SOURCE_NAMES", "Dataset", "load_dataset"]

DATA_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
"""Columns an imported dataset must provide; the others of the transition row are made by the import."""
GENERATED_COLUMNS = ("episode_id", "step", "policy_version", "writer_id", "seq")
_D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
_MINARI_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
SOURCE_NAMES = {
    "parquet": {name: f"column {name!r}" for name in DATA_COLUMNS},
    "d4rl": {
        "obs": "array 'observations'",
        "action": "array 'actions'",
        "reward": "array 'rewards'",
        "next_obs": "array 'next_observations' (or 'observations')",
        "terminated": "array 'terminals'",
        "truncated": "array 'timeouts'",
    },
    "minari": {
        "obs": "array 'observations'",
        "action": "array 'actions'",
        "reward": "array 'rewards'",
        "next_obs": "array 'observations'",
        "terminated": "array 'terminations'",
        "truncated": "array 'truncations'",
    },
}
"""Where each table column comes from, per dataset layout (for error messages)."""


@dataclass
class Dataset:
    """An offline dataset in memory: the data columns plus episode structure, rows grouped by episode."""

    data: dict[str, np.ndarray]
    """The :data:`DATA_COLUMNS`, rows of one episode consecutive and in step order."""
    episode: np.ndarray
    """int64 episode number per row, 0, 1, ... in order of appearance."""
    step: np.ndarray
    """int64 step of each row within its episode."""
    source_format: str
    """``parquet``, ``d4rl`` or ``minari``."""
    files: int
    dropped_rows: int = 0
    """D4RL without ``next_observations``: last steps of episodes dropped (their next observation is unknown)."""
    dropped_terminal: int = 0
    """Of ``dropped_rows``, those that were terminal."""

    @property
    def rows(self) -> int:
        return len(self.episode)

    @property
    def episodes(self) -> int:
        return int(self.episode[-1]) + 1 if len(self.episode) else 0


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _source_files(source: str) -> tuple[str, list[str]]:
    """The kind (``parquet`` or ``npz``) and files of a dataset path."""
    if os.path.isfile(source):
        for kind in ("parquet", "npz"):
            if source.endswith("." + kind):
                return kind, [source]
        raise OfflineError(f"dataset {source!r}: expected a .parquet or .npz file, or a directory of them")
    if not os.path.isdir(source):
        raise OfflineError(f"dataset {source!r} does not exist")
    names = sorted(os.listdir(source), key=_natural_key)
    parquet = [os.path.join(source, n) for n in names if n.endswith(".parquet")]
    npz = [os.path.join(source, n) for n in names if n.endswith(".npz")]
    if parquet and npz:
        raise OfflineError(f"dataset {source!r} mixes .parquet and .npz files; expected one kind")
    if not parquet and not npz:
        raise OfflineError(f"dataset {source!r} holds no .parquet or .npz files")
    return ("parquet", parquet) if parquet else ("npz", npz)


def _is_number(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _arrow_to_numpy(path: str, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A Parquet column as a numpy array (lists of one length as a trailing dimension)."""
    column = column.combine_chunks()
    if column.null_count:
        raise OfflineError(f"{path}: column {name!r} has {column.null_count} null value(s); expected none")
    arrow_type = column.type
    wrong_type = f"{path}: column {name!r} has Arrow type {arrow_type}; expected numbers or lists of them"
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        if pa.types.is_fixed_size_list(arrow_type):
            width = arrow_type.list_size
        else:
            distinct = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
            if len(distinct) > 1:
                raise OfflineError(
                    f"{path}: column {name!r} holds lists of lengths {distinct[:5].tolist()}; expected one length"
                )
            width = int(distinct[0]) if len(distinct) else 0
        values = column.flatten()
        if values.null_count:
            raise OfflineError(f"{path}: column {name!r} has null values inside its lists; expected none")
        if not _is_number(values.type):
            raise OfflineError(wrong_type)
        return values.to_numpy(zero_copy_only=False).reshape(len(column), width)
    if not _is_number(arrow_type):
        raise OfflineError(wrong_type)
    return column.to_numpy(zero_copy_only=False)


def _check_finite(path: str, name: str, values: np.ndarray) -> None:
    if values.dtype.kind != "f" or values.ndim == 0 or values.size == 0:
        return
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise OfflineError(
            f"{path}: {name}: non-finite values (NaN or inf) in {len(bad)} row(s), first at row {int(bad[0])}; "
            f"expected finite numbers"
        )


def _read_parquet(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """The columns of Parquet files, concatenated, plus ``__file_end`` (True at each file's last row)."""
    ignored = {SHARD_FIELD, EXPORT_KEY_FIELD, EXPORT_PRIORITY_FIELD, "policy_version", "seq"}
    allowed = set(DATA_COLUMNS) | set(GENERATED_COLUMNS) | ignored
    parts: list[dict[str, np.ndarray]] = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise OfflineError(f"{path}: not a readable Parquet file ({exc})") from None
        missing = [n for n in DATA_COLUMNS if n not in table.column_names]
        unexpected = [n for n in table.column_names if n not in allowed]
        if missing or unexpected:
            problems = [f"missing column(s) {missing}"] if missing else []
            problems += [f"unexpected column(s) {unexpected}"] if unexpected else []
            raise OfflineError(
                f"{path}: {' and '.join(problems)}; expected columns {list(DATA_COLUMNS)}, optionally "
                f"{list(GENERATED_COLUMNS)}"
            )
        part = {}
        for arrow_field in table.schema:
            name = arrow_field.name
            if name in ignored:
                continue
            values = _arrow_to_numpy(path, name, table.column(name))
            raw = (arrow_field.metadata or {}).get(b"shape")
            if raw is not None and values.ndim == 2:
                shape = tuple(json.loads(raw))
                if math.prod(shape) == values.shape[1]:
                    values = values.reshape((len(values),) + shape)
            _check_finite(path, f"column {name!r}", values)
            part[name] = values
        if parts and part.keys() != parts[0].keys() - {"__file_end"}:
            raise OfflineError(
                f"{path}: columns {sorted(part)} differ from those of {paths[0]} "
                f"({sorted(parts[0].keys() - {'__file_end'})}); expected one set of columns in every file"
            )
        part["__file_end"] = np.arange(table.num_rows) == table.num_rows - 1
        parts.append(part)
    out = {}
    for name in parts[0]:
        shapes = {p[name].shape[1:] for p in parts}
        if len(shapes) > 1:
            raise OfflineError(f"column {name!r}: files disagree on the value shape ({sorted(shapes)})")
        out[name] = np.concatenate([p[name] for p in parts])
    return out


def _episodes_from_ends(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Episode number and step per row, given where episodes end (the last row always ends one)."""
    n = len(ends)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ends = ends.copy()
    ends[-1] = True
    episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    starts = np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1])
    step = np.arange(n, dtype=np.int64) - starts[episode]
    return episode, step


def _group_episodes(data: dict[str, np.ndarray], path: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Rows grouped by episode (``writer_id`` and ``episode_id``, in order of first appearance) and ordered by
    ``step``; or, without ``episode_id``, episodes ending at terminated/truncated rows (and at each file's end) in
    file order, ``step`` counted within them."""
    n = len(data["obs"])
    if "episode_id" not in data:
        for flag in ("terminated", "truncated"):
            if data[flag].dtype != np.bool_ or data[flag].ndim != 1:
                raise OfflineError(
                    f"{path}: column {flag!r}: expected bool of shape (N,), got {data[flag].dtype} {data[flag].shape}"
                )
        episode, step = _episodes_from_ends(data["terminated"] | data["truncated"] | data["__file_end"])
        return {k: data[k] for k in DATA_COLUMNS}, episode, step
    ids = data["episode_id"]
    for name in ("episode_id", "writer_id"):
        values = data.get(name, ids)
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise OfflineError(
                f"{path}: column {name!r}: expected integers of shape (N,), got {values.dtype} {values.shape}"
            )
    writers = data.get("writer_id", np.zeros_like(ids))
    unique, first, inverse = np.unique(np.stack([writers, ids], axis=1), axis=0, return_index=True,
                                       return_inverse=True)
    rank = np.empty(len(unique), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(unique))
    episode = rank[inverse.reshape(-1)]
    if "step" in data:
        step = data["step"]
        if step.ndim != 1 or step.dtype.kind not in "iu":
            raise OfflineError(f"{path}: column 'step': expected integers of shape (N,), got {step.dtype} {step.shape}")
        order = np.lexsort((step, episode))
        step = step[order].astype(np.int64)
        episode = episode[order]
        repeated = np.flatnonzero((np.diff(episode) == 0) & (np.diff(step) == 0))
        if len(repeated):
            row = order[repeated[0] + 1]
            raise OfflineError(
                f"{path}: episode_id {int(ids[row])} (writer_id {int(writers[row])}) has step "
                f"{int(step[repeated[0]])} more than once; expected each (writer_id, episode_id, step) once"
            )
    else:
        order = np.argsort(episode, kind="stable")
        episode = episode[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(episode)) + 1]) if n else np.zeros(0, dtype=np.int64)
        step = np.arange(n, dtype=np.int64) - starts[episode] if n else np.zeros(0, dtype=np.int64)
    return {k: data[k][order] for k in DATA_COLUMNS}, episode, step


def _flags(path: str, name: str, values: np.ndarray, rows: int) -> np.ndarray:
    """A D4RL/Minari flag array as bool (bool, or numbers that are all 0 or 1), shape (rows,)."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (rows,):
        raise OfflineError(f"{path}: array {name!r}: expected shape ({rows},), got {values.shape}")
    if values.dtype == np.bool_:
        return values
    if values.dtype.kind not in "iuf":
        raise OfflineError(f"{path}: array {name!r}: expected bool or 0/1 numbers, got dtype {values.dtype}")
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise OfflineError(
            f"{path}: array {name!r}: expected bool or 0/1 values, got {values[row].item()!r} at row {row}"
        )
    return values != 0


def _rows_array(path: str, name: str, values: np.ndarray, rows: int, scalar: bool = False) -> np.ndarray:
    if scalar and values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim < 1 or len(values) != rows or (scalar and values.ndim != 1):
        expected = f"({rows},)" if scalar else f"({rows}, ...)"
        raise OfflineError(f"{path}: array {name!r}: expected shape {expected}, got {values.shape}")
    return values


def _read_npz(path: str) -> tuple[str, dict[str, np.ndarray], np.ndarray, np.ndarray, int, int]:
    """One .npz file: its layout, the data columns, episode number and step per row, rows dropped (terminal)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise OfflineError(f"{path}: not a readable .npz file ({exc})") from None
    for name in ("observations", "next_observations", "actions", "rewards"):
        if name in arrays:
            _check_finite(path, f"array {name!r}", arrays[name])
    if all(k in arrays for k in _MINARI_KEYS):
        steps = len(arrays["actions"])
        observations = arrays["observations"]
        if observations.ndim < 1 or len(observations) != steps + 1:
            raise OfflineError(
                f"{path}: array 'observations' has shape {observations.shape}; the Minari layout needs "
                f"len(actions) + 1 = {steps + 1} rows"
            )
        data = {
            "obs": observations[:-1],
            "action": _rows_array(path, "actions", arrays["actions"], steps),
            "reward": _rows_array(path, "rewards", arrays["rewards"], steps, scalar=True),
            "next_obs": observations[1:],
            "terminated": _flags(path, "terminations", arrays["terminations"], steps),
            "truncated": _flags(path, "truncations", arrays["truncations"], steps),
        }
        return "minari", data, np.zeros(steps, dtype=np.int64), np.arange(steps, dtype=np.int64), 0, 0
    missing = [k for k in _D4RL_KEYS if k not in arrays]
    if missing:
        raise OfflineError(
            f"{path}: missing array(s) {missing}; the D4RL layout needs {list(_D4RL_KEYS)} (next_observations "
            f"optional), the Minari layout {list(_MINARI_KEYS)}; got {sorted(arrays)}"
        )
    observations = arrays["observations"]
    rows = len(observations) if observations.ndim else 0
    data = {
        "obs": observations,
        "action": _rows_array(path, "actions", arrays["actions"], rows),
        "reward": _rows_array(path, "rewards", arrays["rewards"], rows, scalar=True),
        "terminated": _flags(path, "terminals", arrays["terminals"], rows),
        "truncated": _flags(path, "timeouts", arrays["timeouts"], rows),
    }
    ends = data["terminated"] | data["truncated"]
    if "next_observations" in arrays:
        data["next_obs"] = _rows_array(path, "next_observations", arrays["next_observations"], rows)
        episode, step = _episodes_from_ends(ends)
        return "d4rl", {k: data[k] for k in DATA_COLUMNS}, episode, step, 0, 0
    ends = ends.copy()
    if rows:
        ends[-1] = True
    keep = ~ends
    data["next_obs"] = np.concatenate([observations[1:], observations[:1]]) if rows else observations
    episode, step = _episodes_from_ends(ends)
    kept = {k: data[k][keep] for k in DATA_COLUMNS}
    episode, step = episode[keep], step[keep]
    if len(episode):  # renumber: episodes of one step vanished
        episode = np.concatenate([[0], np.cumsum(np.diff(episode) != 0)]).astype(np.int64)
    dropped = int(ends.sum())
    return "d4rl", kept, episode, step, dropped, int((data["terminated"] & ends).sum())


def load_dataset(source: str) -> Dataset:
    """Read an offline dataset (see the module docstring for the layouts) into memory.

    Shapes and dtypes are checked against the table later (:func:`import_dataset`); here the layout is: required
    columns or arrays, row counts, flags, lists of one length.

    Raises:
        OfflineError: what is wrong, naming the file and the column or array.
    """
    from replay.minari_io import is_minari_dataset, read_minari

    if is_minari_dataset(source):
        return read_minari(source)
    kind, paths = _source_files(source)
    if kind == "parquet":
        data, episode, step = _group_episodes(_read_parquet(paths), source)
        return Dataset(data, episode, step, "parquet", len(paths))
    datas, episodes, steps = [], [], []
    formats = set()
    dropped = dropped_terminal = offset = 0
    for path in paths:
        layout, data, episode, step, n, t = _read_npz(path)
        formats.add(layout)
        datas.append(data)
        episodes.append(episode + offset)
        steps.append(step)
        offset += int(episode[-1]) + 1 if len(episode) else 0
        dropped += n
        dropped_terminal += t
    if len(formats) > 1:
        raise OfflineError(f"dataset {source!r} mixes the D4RL and Minari layouts; expected one")
    layout = formats.pop()
    for name in DATA_COLUMNS:
        shapes = {d[name].shape[1:] for d in datas}
        if len(shapes) > 1:
            raise OfflineError(
                f"dataset {source!r}: {SOURCE_NAMES[layout][name]} has different value shapes in different files "
                f"({sorted(shapes)}); expected one"
            )
    data = {name: np.concatenate([d[name] for d in datas]) for name in DATA_COLUMNS}
    return Dataset(
        data, np.concatenate(episodes), np.concatenate(steps), layout, len(paths), dropped, dropped_terminal
    )
