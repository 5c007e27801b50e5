"""Storage of a replay table: a columnar numpy ring of rows and its link to the cold tier on disk.

One preallocated array per column, shape ``(capacity,) + spec.shape``; a chunk of N rows is written with at most
two slice copies per column, at the slots :class:`replay.removers.FifoRemover` hands out (oldest rows first).

Row keys: every row gets a key, the insert counter when the row was written (rows of a chunk get consecutive
keys, including rows of an oversized chunk that were never stored), so keys are unique and never reused. The ring
holds exactly the keys ``[inserted - size, inserted)`` and the newest one sits just before the write cursor, so key
and slot convert into each other by arithmetic (:meth:`RingStorage.slots_of`, :meth:`RingStorage.keys_of`) without
a per-slot key array.

Cold tier: with a :class:`replay.cold.ColdTier` the rows the ring evicts are handed to it (Parquet segment files)
instead of being dropped. It holds the keys just below the ring's, so the stored keys are still
``[inserted - rows, inserted)``; only the ring's part maps to slots, and :meth:`RingStorage.gather_positions`
reads rows by position over both (cold rows first).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from replay.removers import FifoRemover
from replay.schema import ColumnSpec

if TYPE_CHECKING:
    from replay.cold import ColdTier

__all__ = ["RingStorage"]

logger = logging.getLogger(__name__)


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class RingStorage:
    """Columns of ``capacity`` rows in a FIFO ring, the insert counter, and the cold tier evicted rows go to.

    Args:
        name: the table's name, for messages.
        columns: the row schema.
        capacity: rows the ring holds.
        cold: where evicted rows go; None drops them.
    """

    __slots__ = ("name", "capacity", "columns", "fifo", "cold", "inserted")

    def __init__(self, name: str, columns: Sequence[ColumnSpec], capacity: int, cold: ColdTier | None = None):
        self.name = name
        self.capacity = capacity
        self.columns = {c.name: np.zeros((capacity,) + c.shape, dtype=c.np_dtype) for c in columns}
        self.fifo = FifoRemover(capacity)
        self.cold = cold
        self.inserted = 0
        """Rows ever written (the next row's key), including rows evicted since."""

    @property
    def size(self) -> int:
        """Slots of the ring in use."""
        return self.fifo.size

    @property
    def rows(self) -> int:
        """Rows stored: in the ring plus in the cold tier."""
        return self.fifo.size + (self.cold.size if self.cold is not None else 0)

    @property
    def oldest_key(self) -> int:
        """Key of the oldest row in the ring (:attr:`inserted` when it is empty)."""
        return self.inserted - self.fifo.size

    def newest_slot(self) -> int | None:
        """Slot of the newest row, None when the ring is empty."""
        return (self.fifo.cursor - 1) % self.capacity if self.fifo.size else None

    # ---- writing -----------------------------------------------------------------------------------------------

    def write(self, chunk: Mapping[str, np.ndarray], n: int) -> tuple[tuple[int, int], ...]:
        """Write the ``n`` rows of a validated chunk at the cursor, evicting the oldest rows (to the cold tier, if
        any); return the ``(start, stop)`` slot runs written. Of a chunk larger than the ring only the newest
        ``capacity`` rows are kept (the others go straight to the cold tier, or are dropped)."""
        skip = max(0, n - self.capacity)
        if self.cold is not None:
            self._spill(chunk, n, skip)
        runs, _ = self.fifo.allocate(n - skip)
        src = skip
        for start, stop in runs:
            end = src + stop - start
            for name, store in self.columns.items():
                store[start:stop] = chunk[name][src:end]
            src = end
        self.inserted += n
        if self.cold is not None and not self.cold.write_behind and self.cold.has_pending:
            self.cold.flush()
        return runs

    def _spill(self, chunk: Mapping[str, np.ndarray], n: int, skip: int) -> None:
        """Hand the cold tier the rows a write of ``n`` rows is about to evict, oldest first: the oldest rows in
        the ring, then the ``skip`` first rows of an oversized chunk (they are older than the rows kept)."""
        stored = self.fifo.size
        evict = max(0, stored + n - skip - self.capacity)
        key = self.inserted - stored
        oldest = (self.fifo.cursor - stored) % self.capacity
        while evict > 0:
            stop = min(oldest + evict, self.capacity)
            self.cold.append({name: store[oldest:stop] for name, store in self.columns.items()}, key, stop - oldest)
            key += stop - oldest
            evict -= stop - oldest
            oldest = 0
        if skip:
            self.cold.append({name: chunk[name][:skip] for name in self.columns}, self.inserted, skip)

    # ---- keys and reading ----------------------------------------------------------------------------------------

    def slots_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of row ``keys`` and a mask of the keys in the ring (evicted, cold or future keys are False)."""
        keys = np.asarray(keys, dtype=np.int64)
        stored = (keys >= self.inserted - self.fifo.size) & (keys < self.inserted)
        slots = (self.fifo.cursor - (self.inserted - keys)) % self.capacity
        return slots, stored

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """Keys of the rows at occupied ``slots``."""
        slots = np.asarray(slots, dtype=np.int64)
        return self.inserted - 1 - (self.fifo.cursor - 1 - slots) % self.capacity

    def ordered_slots(self) -> np.ndarray:
        """Occupied slots from the oldest row to the newest."""
        return self.fifo.ordered_slots()

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Copy the rows at ``slots`` out of every column (shape ``slots.shape + spec.shape``)."""
        return {name: store.take(slots, axis=0) for name, store in self.columns.items()}

    def gather_positions(self, positions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rows and keys at ``positions`` over every stored row, oldest first: ``[0, cold rows)`` in the cold tier,
        the rest in the ring (which is full whenever the cold tier holds rows)."""
        n = len(positions)
        cold = self.cold.size
        from_cold = positions < cold
        cold_at = np.flatnonzero(from_cold)
        warm_at = np.flatnonzero(~from_cold)
        slots = positions[warm_at] - cold
        cold_rows, cold_keys = self.cold.gather(positions[cold_at])
        batch = {}
        for name, store in self.columns.items():
            column = np.empty((n,) + store.shape[1:], dtype=store.dtype)
            column[warm_at] = store.take(slots, axis=0)
            column[cold_at] = cold_rows[name]
            batch[name] = column
        keys = np.empty(n, dtype=np.int64)
        keys[warm_at] = self.keys_of(slots)
        keys[cold_at] = cold_keys
        return batch, keys

    # ---- recovery ----------------------------------------------------------------------------------------------

    def reconcile_cold(self) -> None:
        """After a recovery, make the cold tier end exactly where the ring begins, with a warning for anything
        that does not fit: cold rows with keys never inserted (files of another run: all removed), cold rows also
        in the ring (dropped from the cold tier), or keys missing in between (lost)."""
        cold = self.cold
        if cold is None:
            return
        first_in_memory = self.oldest_key
        where = f"cold tier of table {self.name!r} in {cold.directory}"
        if cold.end_key > self.inserted:
            _warn(
                f"{where} holds keys up to {cold.end_key - 1}, but the table recovered only {self.inserted} "
                f"inserts: its files belong to another run and were removed"
            )
            cold.clear()
        elif cold.end_key > first_in_memory:
            dropped = cold.drop_from(first_in_memory)
            _warn(f"{where}: dropped {dropped} row(s) with keys >= {first_in_memory}, which are also in memory")
        elif cold.size and cold.end_key < first_in_memory:
            _warn(f"{where}: rows with keys [{cold.end_key}, {first_in_memory}) are missing (lost)")
