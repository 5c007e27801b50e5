"""Removers of a replay table: which rows leave it, and when.

:class:`FifoRemover` chooses the slots new rows overwrite (a ring cursor: the oldest rows are evicted first).
:class:`MaxTimesSampledRemover` removes a row once it has served ``max_times_sampled`` samples (Reverb's
MaxTimesSampled) and keeps the index of the live rows that samples draw from (:meth:`MaxTimesSampledRemover.sample`,
with the table's sampler). Both see slot numbers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from replay.samplers import PrioritizedSampler, UniformSampler

__all__ = ["FifoRemover", "MaxTimesSampledRemover"]


class FifoRemover:
    """Chooses the slots new rows overwrite: a ring cursor, so the oldest rows are evicted first.

    Occupied slots are always the prefix ``[0, size)``; once full, the oldest row is at ``cursor``.
    """

    __slots__ = ("capacity", "cursor", "size")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.cursor = 0
        self.size = 0

    def allocate(self, n: int) -> tuple[tuple[tuple[int, int], ...], int]:
        """Reserve ``n <= capacity`` slots; return the ``(start, stop)`` runs in write order and the rows evicted."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"cannot allocate {n} slots in a table of capacity {self.capacity}")
        first = min(n, self.capacity - self.cursor)
        runs = ((self.cursor, self.cursor + first),) if n == first else ((self.cursor, self.capacity), (0, n - first))
        evicted = max(0, self.size + n - self.capacity)
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        return runs, evicted

    def ordered_slots(self) -> np.ndarray:
        """Occupied slots from the oldest row to the newest."""
        if self.size < self.capacity:
            return np.arange(self.size, dtype=np.int64)
        return (np.arange(self.capacity, dtype=np.int64) + self.cursor) % self.capacity


class MaxTimesSampledRemover:
    """Removes a row once it has served ``max_times`` samples (Reverb's MaxTimesSampled) and indexes the live rows.

    Per slot an int32 count of the samples its row has served; a slot without a live row (never written, or its
    row removed) holds ``max_times``. A removed row keeps its slot until FIFO eviction overwrites it, so keys and
    slots still convert by arithmetic; only live slots are sampled. They are kept densely in ``live[:count]``, each
    one's index there in ``position``: a write appends, a removal moves the last live slot into the hole
    (swap-remove), both O(1) per slot and vectorised, and a uniform draw over the live rows is one
    ``rng.integers`` and one take. 12 bytes per slot.

    ``budget`` is how many more samples the live rows can serve (the sum of ``max_times - count``); a sample of
    ``n`` rows needs ``n <= budget``, since a row drawn more often than it has samples left is drawn again
    elsewhere (see :meth:`admit`).
    """

    __slots__ = ("max_times", "counts", "live", "position", "count", "budget", "removed")

    def __init__(self, capacity: int, max_times: int):
        if max_times < 1:
            raise ValueError(f"max_times must be >= 1, got {max_times}")
        index = np.int32 if capacity < 2**31 else np.int64
        self.max_times = max_times
        self.counts = np.full(capacity, max_times, dtype=np.int32)
        self.live = np.zeros(capacity, dtype=index)
        self.position = np.zeros(capacity, dtype=index)
        self.count = 0
        """Live rows."""
        self.budget = 0
        """Samples the live rows can still serve."""
        self.removed = 0
        """Rows removed because they reached ``max_times`` samples."""

    def on_write(self, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` now hold new rows that were never sampled (a live row there was evicted)."""
        counts = self.counts[start:stop]
        fresh = np.flatnonzero(counts == self.max_times) + start
        # a live row's allowance grows from max_times - count to max_times, an empty slot's from 0
        self.budget += int(counts.sum(dtype=np.int64))
        counts[:] = 0
        end = self.count + len(fresh)
        self.live[self.count : end] = fresh
        self.position[fresh] = np.arange(self.count, end)
        self.count = end

    def is_live(self, slots: np.ndarray) -> np.ndarray:
        """Whether each of ``slots`` holds a live row."""
        return self.counts[slots] < self.max_times

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` live slots drawn uniformly with replacement (there must be live rows)."""
        return self.live.take(rng.integers(0, self.count, size=n, dtype=np.int64)).astype(np.int64)

    def admit(self, slots: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Count the draws ``slots`` as samples, in order; return which were accepted and the slots removed.

        A row keeps only as many of its draws as it has samples left (its first ones); the others are rejected,
        for the caller to draw again among the rows still live, so a batch never holds a row more often than
        allowed. Rows that reach ``max_times`` are removed. Returns ``(None, removed)`` when every draw was
        accepted (the common case), else ``(accepted mask, removed)``.
        """
        n = len(slots)
        ordered = np.sort(slots)
        if n < 2 or (ordered[1:] != ordered[:-1]).all():
            counts = self.counts[slots]
            if (counts < self.max_times).all():
                # every slot drawn once and live: the common case, without grouping
                counts += 1
                self.counts[slots] = counts
                self.budget -= n
                gone = slots[counts >= self.max_times]
                self._remove(gone)
                return None, gone
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        first = np.ones(n, dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        unique = ordered[starts]
        drawn = np.diff(np.append(starts, n))
        left = np.maximum(self.max_times - self.counts[unique], 0)
        group = np.cumsum(first) - 1
        # a draw is accepted while its rank among the draws of its slot (in draw order: the sort is stable) is
        # below the samples its row has left
        accepted = np.empty(n, dtype=bool)
        accepted[order] = np.arange(n) - starts[group] < left[group]
        taken = np.minimum(drawn, left)
        self.counts[unique] += taken.astype(np.int32)
        self.budget -= int(taken.sum())
        gone = unique[(left > 0) & (self.counts[unique] >= self.max_times)]
        self._remove(gone)
        return (None if accepted.all() else accepted), gone

    def sample(
        self, n: int, rng: np.random.Generator, sampler: UniformSampler | PrioritizedSampler
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``n`` slots drawn among the live rows by ``sampler``, each draw counted, as drawing one row at a time.

        Each row keeps as many of its draws as it has samples left (:meth:`admit`); the rejected draws are drawn
        again among the rows still live, until all ``n`` are accepted (needs ``n <= budget``). Returns the slots,
        ``N * P(draw)`` of each draw when it was made for importance weights (``N`` the live rows then; None for
        uniform draws) and the slots of the rows removed, which the sampler has forgotten.
        """
        slots, scaled = sampler.draw_live(n, rng, self)
        accepted, gone = self.admit(slots)
        removed = [gone]
        sampler.remove(gone)
        todo = None if accepted is None else np.flatnonzero(~accepted)
        while todo is not None and len(todo):
            drawn, drawn_scaled = sampler.draw_live(len(todo), rng, self)
            accepted, gone = self.admit(drawn)
            removed.append(gone)
            sampler.remove(gone)
            if accepted is None:
                accepted = np.ones(len(todo), dtype=bool)
            done = todo[accepted]
            slots[done] = drawn[accepted]
            if scaled is not None:
                scaled[done] = drawn_scaled[accepted] if drawn_scaled is not None else 1.0
            todo = todo[~accepted]
        return slots, scaled, np.concatenate(removed) if len(removed) > 1 else removed[0]

    def set(self, slots: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Set the sample counts of distinct ``slots`` (-1 or ``>= max_times``: remove the row); slots without a
        live row are skipped (a removed row stays removed). Returns the slots removed."""
        live = self.is_live(slots)
        slots = np.asarray(slots, dtype=np.int64)[live]
        counts = np.asarray(counts, dtype=np.int64)[live]
        new = np.where(counts < 0, self.max_times, np.minimum(counts, self.max_times))
        self.budget -= int((new - self.counts[slots]).sum())
        self.counts[slots] = new
        gone = slots[new >= self.max_times]
        self._remove(gone)
        return gone

    def _remove(self, gone: np.ndarray) -> None:
        """Take the distinct slots ``gone`` (live until now, their counts already at ``max_times``) out of the live
        index: the live slots behind the new end move into the holes left in front of it."""
        if len(gone) == 0:
            return
        end = self.count - len(gone)
        holes = self.position[gone]
        holes = holes[holes < end]
        tail = self.live[end : self.count]
        movers = tail[self.counts[tail] < self.max_times]
        self.live[holes] = movers
        self.position[movers] = holes
        self.count = end
        self.removed += len(gone)
