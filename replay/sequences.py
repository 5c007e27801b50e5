"""Sequence sampling of a replay table: runs of rows that are consecutive steps of one episode.

A sequence of ``length`` rows is ``length`` consecutive keys (so it never crosses the write cursor or rows written
in between by another writer) that are consecutive steps of one episode (columns ``episode_id`` and ``step``).
:class:`Sequences` keeps, per recently used length, the sorted keys that end a valid sequence
(:class:`SequenceIndex`), up to date as rows are written and evicted, so that a sample costs O(n * length) whatever
the capacity; a mask computed at sample time would cost O(capacity) whenever a write happened since the last
sample, which between inserts and samples is nearly always.

Rows keep no chain array (8 bytes a row): an index for a new length recomputes the chains of the stored rows from
``episode_id`` and ``step`` (O(size)), and writes only need the chain of the newest row.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    from replay.storage import RingStorage
    from replay.table import TableConfig

__all__ = ["MAX_CACHED_SEQUENCE_LENGTHS", "SequenceIndex", "Sequences", "chain_lengths", "sequence_refusal"]

MAX_CACHED_SEQUENCE_LENGTHS = 4
"""Sequence lengths whose valid-start index a table maintains at once; the least recently used is dropped."""


def sequence_refusal(config: TableConfig) -> str | None:
    """Why a table with ``config`` cannot sample sequences, or None when it can: it needs scalar integer columns
    ``episode_id`` and ``step``, and rules out ``max_times_sampled`` (a sequence draw would have to count and
    remove rows) and a cold tier (rows on disk have no slots to run over)."""
    if config.max_times_sampled > 0:
        return (
            f"sequence sampling is not supported on a table with max_times_sampled > 0 (max_times_sampled="
            f"{config.max_times_sampled}); use a table without it for sequences"
        )
    if config.disk_capacity > 0:
        return (
            f"sequence sampling is not supported on a table with disk_capacity > 0 (disk_capacity="
            f"{config.disk_capacity}); use a table without a cold tier for sequences"
        )
    specs = {c.name: c for c in config.columns}
    for name in ("episode_id", "step"):
        if name not in specs or specs[name].shape != () or np.dtype(specs[name].dtype).kind not in "iu":
            return (
                f"sequence sampling needs scalar integer columns 'episode_id' and 'step', got columns "
                f"{[c.name for c in config.columns]}"
            )
    return None


def chain_lengths(episode: np.ndarray, step: np.ndarray, carried: int = 0) -> np.ndarray:
    """Backward chain length of each of consecutive rows: 1 + the previous row's chain when the previous row is the
    same episode's previous step, else 1. ``carried`` is the chain of the row before the first one when the first
    row continues it, else 0."""
    n = len(episode)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    links = np.empty(n, dtype=bool)
    links[0] = carried > 0
    links[1:] = (episode[1:] == episode[:-1]) & (step[1:] == step[:-1] + 1)
    positions = np.arange(n, dtype=np.int64)
    last_break = np.maximum.accumulate(np.where(links, -1, positions))
    return np.where(last_break < 0, positions + 1 + carried, positions - last_break + 1)


class SequenceIndex:
    """The end keys of valid sequences of one length, kept up to date as rows come and go.

    A sequence of ``length`` rows ending at key ``e`` is valid when row ``e``'s backward chain (consecutive keys
    that are consecutive steps of one episode, see :func:`chain_lengths`) is at least ``length`` long and its first
    key ``e - length + 1`` is still stored. Ends are appended in key order when rows are written (O(rows written))
    and dropped from the front when their first row is evicted (a binary search), so the sorted live range is
    ``ends[head:tail]``; the buffer holds ``2 * capacity`` keys and is compacted when the tail reaches its end.
    """

    __slots__ = ("length", "ends", "head", "tail")

    def __init__(self, length: int, capacity: int, ends: np.ndarray):
        self.length = length
        self.ends = np.empty(2 * capacity, dtype=np.int64)
        self.ends[: len(ends)] = ends
        self.head, self.tail = 0, len(ends)

    def append(self, ends: np.ndarray) -> None:
        """Add the sorted end keys of newly written rows (all newer than the stored ones)."""
        m = len(ends)
        if self.tail + m > len(self.ends):
            live = self.tail - self.head
            self.ends[:live] = self.ends[self.head : self.tail]
            self.head, self.tail = 0, live
        self.ends[self.tail : self.tail + m] = ends
        self.tail += m

    def expire(self, oldest: int) -> None:
        """Drop ends whose first row's key is below ``oldest`` (the oldest stored key)."""
        live = self.ends[self.head : self.tail]
        self.head += int(np.searchsorted(live, oldest + self.length - 1, side="left"))

    @property
    def count(self) -> int:
        """Valid start positions."""
        return self.tail - self.head

    def sample_starts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """First keys of ``n`` valid sequences drawn uniformly with replacement."""
        picks = rng.integers(self.head, self.tail, size=n, dtype=np.int64)
        return self.ends[picks] - (self.length - 1)


class Sequences:
    """The valid-end indexes of the recently used sequence lengths of one table (at most
    :data:`MAX_CACHED_SEQUENCE_LENGTHS`, least recently used dropped), kept up to date by :meth:`on_write`."""

    __slots__ = ("capacity", "last_chain", "indices")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.last_chain = 0
        """Backward chain length of the newest stored row."""
        self.indices: OrderedDict[int, SequenceIndex] = OrderedDict()

    def __len__(self) -> int:
        """Lengths with an index."""
        return len(self.indices)

    def chains(self, chunk: Mapping[str, np.ndarray], n: int, storage: RingStorage) -> np.ndarray:
        """Backward chain length of each of the ``n`` rows of a chunk about to be written: 1 + the previous key's
        chain when the previous key is the same episode's previous step, else 1 (call before the write, while the
        previous row is stored)."""
        episode = np.asarray(chunk["episode_id"][:n], dtype=np.int64)
        step = np.asarray(chunk["step"][:n], dtype=np.int64)
        carried = 0
        newest = storage.newest_slot()
        if newest is not None:
            columns = storage.columns
            if episode[0] == columns["episode_id"][newest] and step[0] == columns["step"][newest] + 1:
                carried = self.last_chain
        return chain_lengths(episode, step, carried)

    def on_write(self, chain: np.ndarray, first_key: int, oldest_key: int) -> None:
        """Rows with keys from ``first_key`` and backward chains ``chain`` were written; ``oldest_key`` is the
        oldest stored key now."""
        self.last_chain = int(chain[-1])
        for index in self.indices.values():
            index.append(first_key + np.flatnonzero(chain >= index.length))
            index.expire(oldest_key)

    def index(self, length: int, storage: RingStorage) -> SequenceIndex:
        """The valid-end index for ``length`` (an int in [1, capacity]), built in O(size) on first use."""
        index = self.indices.get(length)
        if index is None:
            slots = storage.ordered_slots()
            chain = chain_lengths(storage.columns["episode_id"][slots], storage.columns["step"][slots])
            ends = storage.oldest_key + np.flatnonzero(chain >= length)
            index = SequenceIndex(length, self.capacity, ends)
            index.expire(storage.oldest_key)
            self.indices[length] = index
            if len(self.indices) > MAX_CACHED_SEQUENCE_LENGTHS:
                self.indices.popitem(last=False)
        else:
            self.indices.move_to_end(length)
        return index

    def clear(self) -> None:
        """Forget every index (the rows are about to be replaced)."""
        self.indices.clear()
