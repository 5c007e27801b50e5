"""Persisted replay tables read outside a running system, for export, import and inspection.

:func:`read_table` opens every shard's part of a table through the shards' own recovery
(:func:`replay.recovery.open_table` with ``read_only=True``): no LOCK is taken and no file is created, changed or
removed, so a table can be read while a live shard writes it, and the rows are those a shard recovering the same
files would hold (removals after ``max_times_sampled`` samples included). A live writer may be in the middle of
its last record: that torn tail is skipped with a warning (damaged records are skipped and reported, see
:mod:`replay.persistence`). Should a live shard compact while we read (deleting the
files we were about to open), the read starts over.

The table's configuration comes from its files: the columns from the newest snapshot or log, a prioritized sampler
when there are priorities, ``max_times_sampled`` when there are sample counts (as high as allowed, so that only
logged removals remove rows), a cold tier when ``cold/`` holds segments; capacities from the caller (a run's
config), else every row on disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from replay.cold import COLD_DIRECTORY, list_segments
from replay.persistence import KEY_FIELD, PRIORITY_FIELD, TIMES_SAMPLED_FIELD, log_schema, table_directory
from replay.recovery import SeenChunks, open_table
from replay.schema import ColumnSpec, SchemaError, columns_from_arrow_schema
from replay.table import TableConfig

__all__ = ["OfflineError", "ShardRows", "StoredTable", "read_table", "shard_indices", "table_names"]

_UNBOUNDED = 2**62
_MOST_SAMPLES = 2**31 - 2
"""``max_times_sampled`` of a table read from files with sample counts: only logged removals (-1) remove rows."""
_READ_ATTEMPTS = 5
_SHARD_RE = re.compile(r"^shard-(\d+)$")
_FILE_RE = re.compile(r"^(snapshot|wal|priorities|sampled)-(\d+)\.(parquet|log)$")


class OfflineError(ValueError):
    """Bad input to export, import or inspection; the message names the file, column or array, expected and got."""


@dataclass
class ShardRows:
    """One shard's part of a persisted table, as a shard recovering the directory would hold it."""

    index: int
    """Shard number (``shard-<index>``)."""
    chunk: dict[str, np.ndarray]
    """Rows oldest to newest (the cold tier's first)."""
    keys: np.ndarray
    """Each row's key (int64; consecutive but for rows removed after ``max_times_sampled`` samples)."""
    inserted: int
    """The shard table's insert counter."""
    priorities: np.ndarray | None
    """Priority per row as last given to ``update_priorities`` (new rows: the running maximum), prioritized
    tables only, else None."""
    disk_bytes: int
    """Bytes of the table's files in this shard (its cold tier's not included)."""
    generations: dict[str, list[int]]
    """Generations on disk per file kind (``wal``, ``priorities``, ``sampled``, ``snapshot``)."""
    seen: dict[int, SeenChunks] = field(default_factory=dict)
    """Recovered dedup state per writer id."""

    @property
    def rows(self) -> int:
        return len(next(iter(self.chunk.values()))) if self.chunk else 0


@dataclass
class StoredTable:
    """A persisted table of every shard of a replay directory."""

    directory: str
    name: str
    columns: tuple[ColumnSpec, ...]
    """The table's columns, from its files (empty when no shard has a readable file)."""
    shards: list[ShardRows]
    """One entry per shard directory ``shard-0 .. shard-<K-1>`` (empty where the shard has no files)."""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def prioritized(self) -> bool:
        return any(s.priorities is not None for s in self.shards)

    def concatenated(self) -> dict[str, np.ndarray]:
        """Every row, shard by shard (each oldest to newest)."""
        return {c.name: np.concatenate([s.chunk[c.name] for s in self.shards]) for c in self.columns}


def shard_indices(directory: str) -> list[int]:
    """Indices of the ``shard-<i>`` directories of a replay directory, ascending."""
    if not os.path.isdir(directory):
        return []
    found = (_SHARD_RE.match(name) for name in os.listdir(directory))
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(directory, m.group(0))))


def table_names(directory: str) -> list[str]:
    """Tables with a directory in any shard of a replay directory, sorted."""
    names: set[str] = set()
    for index in shard_indices(directory):
        shard = os.path.join(directory, f"shard-{index}")
        names.update(n for n in os.listdir(shard) if os.path.isdir(os.path.join(shard, n)))
    return sorted(names)


def _files(root: str) -> dict[str, list[tuple[int, str]]]:
    """A table directory's snapshots and logs per kind, newest first."""
    found: dict[str, list[tuple[int, str]]] = {"snapshot": [], "wal": [], "priorities": [], "sampled": []}
    if os.path.isdir(root):
        for name in os.listdir(root):
            match = _FILE_RE.match(name)
            if match and (match.group(1) == "snapshot") == (match.group(3) == "parquet"):
                found[match.group(1)].append((int(match.group(2)), os.path.join(root, name)))
    return {kind: sorted(paths, reverse=True) for kind, paths in found.items()}


def _newest_snapshot_names(root: str) -> list[str]:
    for _, path in _files(root)["snapshot"]:
        try:
            return pq.read_schema(path).names
        except (OSError, pa.ArrowException):
            continue  # gone or damaged
    return []


def file_columns(root: str) -> tuple[ColumnSpec, ...] | None:
    """A table's columns from the newest snapshot, else the newest readable log; None without readable files."""
    files = _files(root)
    for _, path in files["snapshot"]:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException):
            continue  # gone or damaged
        return columns_from_arrow_schema(schema, skip=(KEY_FIELD, PRIORITY_FIELD, TIMES_SAMPLED_FIELD))
    for _, path in files["wal"]:
        schema = log_schema(path)
        if schema is None:
            continue  # gone, empty, torn or damaged before its schema: no rows in it
        return columns_from_arrow_schema(schema)
    return None


def _stored_config(
    name: str,
    columns: tuple[ColumnSpec, ...],
    roots: Iterable[str],
    capacity: int | None,
    disk_capacity: int | None,
) -> TableConfig:
    """The configuration to read a table with (see the module docstring)."""
    prioritized = counted = cold = False
    for root in roots:
        files = _files(root)
        snapshot = _newest_snapshot_names(root)
        prioritized |= bool(files["priorities"]) or PRIORITY_FIELD in snapshot
        counted |= bool(files["sampled"]) or TIMES_SAMPLED_FIELD in snapshot
        cold |= bool(list_segments(os.path.join(root, COLD_DIRECTORY)))
    if disk_capacity is None:
        disk_capacity = _UNBOUNDED if cold else 0
    return TableConfig(
        name,
        capacity if capacity is not None else 1,
        columns,
        sampler="prioritized" if prioritized else "uniform",
        priority_exponent=1.0,  # the sum tree then holds the priorities themselves
        persist=True,
        disk_capacity=disk_capacity,
        max_times_sampled=_MOST_SAMPLES if counted else 0,
    )


def _disk_bytes(root: str) -> int:
    total = 0
    if os.path.isdir(root):
        for entry in os.scandir(root):
            try:
                total += entry.stat().st_size if entry.is_file() else 0
            except FileNotFoundError:
                continue
    return total


def _read_shard(directory: str, index: int, config: TableConfig, fit_to_disk: bool) -> ShardRows:
    opened = open_table(directory, index, config, read_only=True, fit_to_disk=fit_to_disk)
    try:
        rows, keys, weights = opened.table.contents()
        priorities = None if weights is None else weights ** (1.0 / config.priority_exponent)
        root = opened.store.root
        return ShardRows(
            index, rows, keys, opened.table.inserted, priorities, _disk_bytes(root), opened.store.generations(),
            opened.seen,
        )
    finally:
        opened.close()


def _empty_shard(index: int, columns: Sequence[ColumnSpec], root: str) -> ShardRows:
    chunk = {c.name: np.zeros((0,) + c.shape, dtype=c.np_dtype) for c in columns}
    generations: dict[str, list[int]] = {"wal": [], "priorities": [], "sampled": [], "snapshot": []}
    return ShardRows(index, chunk, np.zeros(0, dtype=np.int64), 0, None, _disk_bytes(root), generations)


def read_table(
    directory: str, table: str = "real", capacity: int | None = None, disk_capacity: int | None = None
) -> StoredTable:
    """Read a persisted table of every shard of a replay directory, read-only (see the module docstring).

    Args:
        directory: the replay directory (holding ``shard-<i>/<table>/``).
        table: the table's name.
        capacity: rows per shard the table holds in memory (``TableConfig.capacity``); a shard's files can hold
            more (rows logged since the last snapshot), of which the newest are kept, as a shard recovering them
            would. None keeps every row of the snapshot and logs.
        disk_capacity: rows per shard its cold tier holds (``TableConfig.disk_capacity``; 0: none); None keeps
            every cold-tier row on disk (older than every row of the snapshot and logs), if there is a cold tier.

    Raises:
        OfflineError: no shard directories, or no shard has the table.
        SchemaError: the shards' files disagree on the columns, or a file is not a replay file.
    """
    indices = shard_indices(directory)
    if not indices:
        raise OfflineError(f"{directory!r} is not a replay directory: no shard-<i> directories in it")
    roots = {i: table_directory(directory, i, table) for i in range(max(indices) + 1)}
    if not any(os.path.isdir(root) for root in roots.values()):
        raise OfflineError(f"replay directory {directory!r} has no table {table!r}; it has {table_names(directory)}")
    columns: tuple[ColumnSpec, ...] = ()
    where = ""
    readable = []
    for i, root in roots.items():
        found = file_columns(root)
        if found is None:
            continue
        readable.append(i)
        if not columns:
            columns, where = found, root
        elif found != columns:
            raise SchemaError(f"table {table!r}: {root} has columns {list(found)}, but {where} has {list(columns)}")
    if not columns:
        return StoredTable(directory, table, (), [_empty_shard(i, (), root) for i, root in roots.items()])
    config = _stored_config(table, columns, [roots[i] for i in readable], capacity, disk_capacity)
    shards = []
    for i, root in roots.items():
        if i not in readable:
            shards.append(_empty_shard(i, columns, root))
            continue
        for attempt in range(_READ_ATTEMPTS):
            try:
                shards.append(_read_shard(directory, i, config, fit_to_disk=capacity is None))
                break
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise OfflineError(
                        f"{root}: files disappeared while reading {_READ_ATTEMPTS} times (a live shard compacting "
                        f"fast?); try again"
                    ) from None
    return StoredTable(directory, table, columns, shards)
