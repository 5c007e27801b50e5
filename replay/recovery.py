"""Opening one table of one shard: the table, its files, and what it recovers from them.

:func:`open_table` is the one code path that rebuilds a table from disk. A shard opens each of its tables with it
(read-write: it takes the directories' LOCKs, removes temp files and cuts off torn log tails); export and inspection
open tables with it read-only (:mod:`replay.stored`): no LOCK, no file created, changed or removed, so they see a
table as a shard recovering the same files would hold it, removals after ``max_times_sampled`` samples included.

Recovery (see :mod:`replay.persistence` for the files): the newest snapshot (rows, keys, priorities, sample counts,
counters, dedup state), then the logged records after it in their original order: inserts (rows and their dedup
keys), priority updates and sample counts. A cold tier indexes its segment files first, skips the evictions of keys
it already holds while the logs are replayed, and is reconciled with the rows in memory at the end
(:meth:`replay.table.Table.reconcile_cold`). Damaged files are passed over record by record (a damaged snapshot for
the one before it) and reported in ``store.recovery``; a shard that recovered damage writes a snapshot before it
serves, which moves the damaged files aside (:attr:`replay.persistence.TableStore.needs_snapshot`).

Dedup state: per writer, the first ``seq`` of the chunks it stored (:class:`SeenChunks`), so that a retried chunk is
stored once.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from replay.cold import COLD_DIRECTORY, ColdTier
from replay.persistence import InsertRecord, PriorityRecord, SnapshotImage, TableStore, table_directory
from replay.table import Table, TableConfig

__all__ = ["DEDUP_WINDOW", "OpenedTable", "SeenChunks", "open_table"]

logger = logging.getLogger(__name__)

DEDUP_WINDOW = 1024
"""Chunks per writer whose keys are remembered exactly; older keys collapse into a floor."""
_UNBOUNDED = 2**62


class SeenChunks:
    """Dedup keys (first ``seq`` of each stored chunk) of one writer in one table.

    Exact over the last :data:`DEDUP_WINDOW` chunks, so chunks that arrive out of order (concurrent calls of a
    threaded actor, a retried "not now" overtaken by the next chunk) are all stored once; keys at or below the
    largest key that left the window count as duplicates.
    """

    __slots__ = ("_keys", "_order", "_floor")

    def __init__(self) -> None:
        self._keys: set[int] = set()
        self._order: deque[int] = deque()
        self._floor: int | None = None

    def __contains__(self, key: int) -> bool:
        return key in self._keys or (self._floor is not None and key <= self._floor)

    def state(self) -> tuple[list[int], int | None]:
        """Remembered keys in arrival order and the floor, for snapshots."""
        return list(self._order), self._floor

    @classmethod
    def from_state(cls, keys: Sequence[int], floor: int | None) -> SeenChunks:
        seen = cls()
        seen._order.extend(int(k) for k in keys)
        seen._keys.update(seen._order)
        seen._floor = None if floor is None else int(floor)
        return seen

    def add(self, key: int) -> None:
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > DEDUP_WINDOW:
            old = self._order.popleft()
            self._keys.discard(old)
            self._floor = old if self._floor is None else max(self._floor, old)


@dataclass
class OpenedTable:
    """A table as :func:`open_table` opened it."""

    table: Table
    store: TableStore | None
    """The table's files (None when it is not persisted)."""
    seen: dict[int, SeenChunks] = field(default_factory=dict)
    """Recovered dedup state per writer id."""
    since_snapshot: int = 0
    """Rows logged since the newest snapshot."""

    def close(self) -> None:
        """Close the files (the logs, fsynced unless ``fsync="none"``) and release the directories."""
        if self.store is not None:
            self.store.close()
        if self.table.cold is not None:
            self.table.cold.close()


def open_table(
    directory: str | None,
    shard_index: int,
    config: TableConfig,
    *,
    read_only: bool = False,
    fit_to_disk: bool = False,
    fsync: str = "none",
    fsync_interval_ms: int = 100,
) -> OpenedTable:
    """Make the table of ``config`` for shard ``shard_index`` and recover what its files under ``directory`` hold.

    Args:
        directory: the shards' directory: a persisted table (``config.persist``) keeps its files under
            ``<directory>/shard-<shard_index>/<table>/`` (:func:`replay.persistence.table_directory`), a table with
            ``disk_capacity > 0`` its cold tier in ``cold/`` there. None: nothing on disk.
        shard_index: the shard's number.
        config: the table's configuration.
        read_only: only read the files (the table must be persisted and its directory exist); see the module
            docstring. The table is then for reading: its store refuses writes and its cold tier writes no file.
        fit_to_disk: (read-only) make the table's capacity the rows the snapshot and logs hold, so that it keeps
            all of them, and keep only the cold tier's rows older than those.
        fsync, fsync_interval_ms: the logs' durability (:class:`replay.persistence.TableStore`).

    Raises:
        ValueError: ``disk_capacity > 0`` without a directory, or ``read_only``/``fit_to_disk`` without a
            persisted table (``fit_to_disk`` also needs ``read_only``).
        RuntimeError: another live shard uses the table's directory.
        FileNotFoundError: ``read_only`` and the table's directory does not exist, or a file went away while it
            was read (a live shard compacting).
        SchemaError: the files do not match the table's configuration.
    """
    persisted = directory is not None and config.persist
    if (read_only or fit_to_disk) and not persisted:
        raise ValueError(
            f"table {config.name!r}: read_only and fit_to_disk open a persisted table, got persist={config.persist} "
            f"and directory={directory!r}"
        )
    if fit_to_disk and not read_only:
        raise ValueError(f"table {config.name!r}: fit_to_disk needs read_only=True")
    if config.disk_capacity > 0 and directory is None:
        raise ValueError(
            f"table {config.name!r} has disk_capacity={config.disk_capacity} and keeps rows on disk, which needs a "
            f"directory; got directory=None"
        )
    root = table_directory(directory, shard_index, config.name) if directory is not None else None
    store = cold = None
    try:
        if persisted:
            store = TableStore(
                root,
                replace(config, capacity=_UNBOUNDED) if fit_to_disk else config,
                fsync=fsync,
                fsync_interval_ms=fsync_interval_ms,
                read_only=read_only,
            )
        if config.disk_capacity > 0:
            cold = ColdTier(
                os.path.join(root, COLD_DIRECTORY),
                config.name,
                config.columns,
                config.disk_capacity,
                config.disk_segment_rows,
                recover=persisted,
                write_behind=True,
                read_only=read_only,
            )
        if store is None:
            return OpenedTable(Table(config, cold), None)
        snapshot, records = store.recover()
        if fit_to_disk:
            records = list(records)
            config = _fitted(config, snapshot, records, cold)
        opened = OpenedTable(Table(config, cold), store)
        _recover(opened, snapshot, records)
        return opened
    except BaseException:
        if store is not None:
            store.close()
        if cold is not None:
            cold.close()
        raise


def _fitted(config: TableConfig, snapshot: SnapshotImage | None, records: list, cold: ColdTier | None) -> TableConfig:
    """``config`` with the capacity of every row of ``snapshot`` and the logged inserts; the cold tier forgets the
    rows from the snapshot's first key on (they are in memory then)."""
    first_key, rows = 0, 0
    if snapshot is not None:
        rows = len(next(iter(snapshot.chunk.values())))
        first_key = snapshot.inserted - rows
    rows += sum(record.rows for record in records if isinstance(record, InsertRecord))
    if cold is not None and cold.end_key > first_key:
        cold.drop_from(first_key)
    return replace(config, capacity=max(1, rows))


def _recover(opened: OpenedTable, snapshot: SnapshotImage | None, records: Iterable) -> None:
    """Rebuild a persisted table from its snapshot and logs (see :mod:`replay.persistence`)."""
    table = opened.table
    if snapshot is not None:
        priorities = snapshot.priorities
        alpha, stored_alpha = table.config.priority_exponent, snapshot.priority_exponent
        if priorities is not None and stored_alpha and stored_alpha != alpha:
            # written with another priority_exponent: p ** stored_alpha -> p ** alpha (with 0, p is lost: all 1)
            priorities = priorities ** (alpha / stored_alpha)
        table.restore(
            snapshot.chunk,
            snapshot.inserted,
            priorities,
            snapshot.max_priority,
            snapshot.times_sampled,
            snapshot.removed,
            snapshot.dropped_non_finite,
        )
        opened.seen = {w: SeenChunks.from_state(keys, floor) for w, (keys, floor) in snapshot.seen.items()}
    cold = table.cold
    for record in records:
        if cold is not None and opened.store.recovery.gaps and not opened.store.read_only:
            damaged = {d.path: d.ranges for d in opened.store.recovery.damaged}
            raise RuntimeError(
                f"replay table {table.name!r} in {opened.store.root}: damaged files (byte ranges: {damaged}) lost rows "
                f"(first key, rows: {opened.store.recovery.gaps}), so the rows after them would get lower keys, which "
                f"the segments of its cold tier do not follow; no file was moved or deleted. Restore the damaged "
                f"files, or move {cold.directory} aside to start without the cold rows (they stay in its files)"
            )
        if isinstance(record, InsertRecord):
            table.write(record.chunk, record.rows, record.dropped_non_finite)
            if cold is not None and cold.has_pending:
                cold.flush()
            if record.dedup_key is not None:
                seen = opened.seen.get(record.writer_id)
                if seen is None:
                    seen = opened.seen[record.writer_id] = SeenChunks()
                seen.add(record.dedup_key)
            opened.since_snapshot += record.rows
        elif isinstance(record, PriorityRecord):
            table.update_priorities(record.keys, record.priorities)
        else:
            table.set_times_sampled(record.keys, record.counts)
    table.reconcile_cold()
    if snapshot is not None or table.inserted:
        damage = opened.store.recovery.summary()
        logger.info(
            "replay table %r recovered from %s: %d rows, inserted %d%s",
            table.name,
            opened.store.root,
            table.size,
            table.inserted,
            f" ({damage})" if damage else "",
        )
