"""A replay table: a columnar numpy ring buffer with a pluggable sampler and remover.

Storage is one preallocated array per column, shape ``(capacity,) + spec.shape``; a chunk of N rows is written
with at most two slice copies per column. Which slots new rows overwrite is the remover's decision
(:class:`FifoRemover`), which slots a sample reads is the sampler's (:class:`UniformSampler` or
:class:`PrioritizedSampler`, chosen by :attr:`TableConfig.sampler`); both only see slot numbers.

Row keys: every row gets a key, the table's insert counter when the row was written (rows of a chunk get
consecutive keys, including rows of an oversized chunk that were never stored), so keys are unique and never
reused. Stored rows are exactly the keys ``[inserted - size, inserted)`` and the newest one sits just before the
write cursor, so key and slot convert into each other by arithmetic (:meth:`Table.slots_of`,
:meth:`Table.keys_of`) without a per-slot key array.

Sequences: :meth:`Table.sample_sequences` draws runs of rows that are consecutive steps of one episode and
consecutive keys (see :class:`_SequenceIndex`).

Removal after sampling: with :attr:`TableConfig.max_times_sampled` ``> 0`` a row is removed once it has been
sampled that many times (Reverb's MaxTimesSampled, :class:`MaxTimesSampledRemover`). It keeps its slot until FIFO
eviction reaches it, so keys and slots still convert by arithmetic, but it is never sampled again and no longer
counts in :attr:`Table.size`.

Non-finite values: :attr:`TableConfig.non_finite` rejects a chunk with NaN or inf in a float column (the default)
or drops those rows and counts them (:attr:`Table.dropped_non_finite`).

Larger than memory: with :attr:`TableConfig.disk_capacity` ``> 0`` the rows the ring evicts go to a
:class:`replay.cold.ColdTier` (Parquet segment files) instead of being dropped, and uniform samples draw over the
rows in memory and on disk alike. The cold tier holds the keys just below the ring's, so stored keys are still
``[inserted - size, inserted)``; only the ring's part maps to slots.

:class:`Table` is not thread-safe: :class:`replay.shard.ReplayShard` serialises access with one lock per table.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from replay.rate_limiter import RateLimiterConfig
from replay.schema import NON_FINITE_POLICIES, ColumnSpec, drop_non_finite_rows, validate_chunk

if TYPE_CHECKING:
    from replay.cold import ColdTier

__all__ = [
    "KEY_COLUMN",
    "SAMPLERS",
    "WEIGHT_COLUMN",
    "FifoRemover",
    "MaxTimesSampledRemover",
    "PrioritizedSampler",
    "SumTree",
    "Table",
    "TableConfig",
    "UniformSampler",
]

SAMPLERS = ("uniform", "prioritized")
"""Values of :attr:`TableConfig.sampler`."""
KEY_COLUMN = "key"
"""Extra batch column (int64) with each sampled row's key, returned when sampling ``with_keys``."""
WEIGHT_COLUMN = "weight"
"""Extra batch column (float32) with each sampled row's importance weight, returned with :data:`KEY_COLUMN`."""
logger = logging.getLogger(__name__)
_NO_KEYS = np.empty(0, dtype=np.int64)
_NO_KEYS.flags.writeable = False

MAX_CACHED_SEQUENCE_LENGTHS = 4
"""Sequence lengths whose valid-start index a table maintains at once; the least recently used is dropped."""


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _finite_non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class TableConfig:
    """One table of a shard: its name, capacity in rows, columns, per-consumer rate limiters and sampler."""

    name: str
    """Table name, e.g. ``"real"`` or ``"imagined"``."""
    capacity: int
    """Rows this table holds in one shard; older rows are evicted first."""
    columns: tuple[ColumnSpec, ...]
    """Row schema, e.g. :func:`replay.schema.transition_columns`. ``"key"`` and ``"weight"`` are reserved."""
    limiters: tuple[tuple[str, RateLimiterConfig], ...] = ()
    """``(consumer name, limiter)`` pairs; consumers not listed sample without rate limiting."""
    sampler: str = "uniform"
    """``"uniform"`` (with replacement) or ``"prioritized"`` (proportional to ``priority ** priority_exponent``)."""
    priority_exponent: float = 0.6
    """Alpha of prioritized replay: ``P(i) = p_i^alpha / sum_j p_j^alpha``; 0 samples uniformly."""
    importance_exponent: float = 0.4
    """Beta of prioritized replay, in [0, 1]: weights ``(N * P(i))^-beta``, normalised by the batch maximum."""
    persist: bool = False
    """Log inserts and priority updates and snapshot the table (see :mod:`replay.persistence`); only takes effect
    when the shard is given a directory."""
    snapshot_every_inserts: int = 0
    """With persistence, snapshot automatically once this many rows were inserted since the last snapshot; 0 never."""
    disk_capacity: int = 0
    """Rows this table keeps in Parquet files beyond ``capacity`` in one shard (a cold tier, :mod:`replay.cold`):
    evicted rows go there, the oldest are dropped beyond this, and uniform samples draw over memory and disk rows
    alike; 0 keeps none. Needs a shard directory and ``sampler="uniform"``, and rules out sequence sampling."""
    disk_segment_rows: int = 0
    """Rows per cold-tier segment file, which is also how many evicted rows wait in memory before a file is
    written; 0 picks about 32 MiB of raw row bytes. Capped at ``disk_capacity``."""
    max_times_sampled: int = 0
    """Remove a row once it has been sampled this many times (Reverb's MaxTimesSampled); 0 never. A removed row is
    never sampled again and leaves :attr:`Table.size`; its slot is reused when FIFO eviction reaches it. A sample
    is only served when the live rows have that many samples left. Rules out ``disk_capacity > 0`` and sequence
    sampling; costs 12 bytes a row."""
    non_finite: str = "reject"
    """What an insert does with rows holding NaN or inf in a float column: ``"reject"`` the whole chunk (a
    :class:`replay.schema.SchemaError` naming the column and rows) or ``"drop"`` those rows, store the others and
    count them as ``dropped_non_finite`` in the table's stats."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TableConfig.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.capacity, int) or isinstance(self.capacity, bool) or self.capacity < 1:
            raise ValueError(f"TableConfig {self.name!r}: capacity must be an int >= 1, got {self.capacity!r}")
        columns = tuple(self.columns)
        if not columns or not all(isinstance(c, ColumnSpec) for c in columns):
            raise ValueError(f"TableConfig {self.name!r}: columns must be a non-empty sequence of ColumnSpec")
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"TableConfig {self.name!r}: duplicate column names in {names}")
        reserved = sorted({KEY_COLUMN, WEIGHT_COLUMN} & set(names))
        if reserved:
            raise ValueError(f"TableConfig {self.name!r}: column names {reserved} are reserved for sampled batches")
        limiters = tuple(self.limiters.items() if isinstance(self.limiters, Mapping) else self.limiters)
        consumers = []
        for pair in limiters:
            if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], RateLimiterConfig):
                raise ValueError(
                    f"TableConfig {self.name!r}: limiters must be (consumer name, RateLimiterConfig) pairs, "
                    f"got {pair!r}"
                )
            consumers.append(pair[0])
        if len(set(consumers)) != len(consumers):
            raise ValueError(f"TableConfig {self.name!r}: duplicate consumer names in limiters {consumers}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"TableConfig {self.name!r}: sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not _finite_non_negative(self.priority_exponent):
            raise ValueError(
                f"TableConfig {self.name!r}: priority_exponent must be a finite number >= 0, "
                f"got {self.priority_exponent!r}"
            )
        if not _finite_non_negative(self.importance_exponent) or self.importance_exponent > 1:
            raise ValueError(
                f"TableConfig {self.name!r}: importance_exponent must be a number in [0, 1], "
                f"got {self.importance_exponent!r}"
            )
        if not isinstance(self.persist, bool):
            raise ValueError(f"TableConfig {self.name!r}: persist must be a bool, got {self.persist!r}")
        every = self.snapshot_every_inserts
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"TableConfig {self.name!r}: snapshot_every_inserts must be an int >= 0, got {every!r}")
        for field_name in ("disk_capacity", "disk_segment_rows"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TableConfig {self.name!r}: {field_name} must be an int >= 0, got {value!r}")
        if self.disk_capacity > 0 and self.sampler != "uniform":
            raise ValueError(
                f"TableConfig {self.name!r}: disk_capacity > 0 (a cold tier on disk) needs sampler='uniform', got "
                f"sampler={self.sampler!r} (priorities of rows on disk are not kept)"
            )
        most = self.max_times_sampled
        if not isinstance(most, int) or isinstance(most, bool) or not 0 <= most < 2**31 - 1:
            raise ValueError(
                f"TableConfig {self.name!r}: max_times_sampled must be an int in [0, 2**31 - 1) (0: never remove), "
                f"got {most!r}"
            )
        if most > 0 and self.disk_capacity > 0:
            raise ValueError(
                f"TableConfig {self.name!r}: max_times_sampled > 0 needs disk_capacity=0, got max_times_sampled="
                f"{most} and disk_capacity={self.disk_capacity} (the cold tier keeps no sample counts)"
            )
        if self.non_finite not in NON_FINITE_POLICIES:
            raise ValueError(
                f"TableConfig {self.name!r}: non_finite must be one of {NON_FINITE_POLICIES}, got {self.non_finite!r}"
            )
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "limiters", tuple((name, cfg) for name, cfg in limiters))


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


class UniformSampler:
    """Samples occupied slots uniformly with replacement.

    It learns occupancy from :meth:`on_write`; it relies on occupied slots forming a prefix ``[0, k)``, which
    holds for :class:`FifoRemover`.
    """

    __slots__ = ("occupied",)

    def __init__(self) -> None:
        self.occupied = 0

    def on_write(self, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` now hold new rows."""
        self.occupied = max(self.occupied, stop)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots drawn uniformly with replacement from the occupied ones."""
        if self.occupied == 0:
            raise ValueError("cannot sample from an empty table")
        return rng.integers(0, self.occupied, size=n, dtype=np.int64)

    def weights(self, slots: np.ndarray) -> np.ndarray:
        """Importance weights of sampled slots: all 1 (the sampling distribution is the uniform one)."""
        return np.ones(len(slots), dtype=np.float32)


class SumTree:
    """Array-based binary sum tree over ``size`` float64 leaves, for sampling proportional to leaf values.

    The leaf count is rounded up to a power of two ``P``; node ``i`` (1-based) has children ``2i`` and
    ``2i + 1`` and leaf ``j`` is node ``P + j``, so ``tree[1]`` is the total. Padding leaves stay 0. Parents are
    always recomputed as the sum of their two children (never adjusted by deltas), so sums carry no drift and a
    parent is positive exactly when one of its children is. Updates and samples are vectorised over a batch: one
    numpy operation per tree level, O(batch * log P) work.
    """

    __slots__ = ("size", "leaves", "depth", "tree")

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"SumTree size must be >= 1, got {size}")
        self.size = size
        self.depth = max(0, (size - 1).bit_length())
        self.leaves = 1 << self.depth
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self.tree[1])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Values of the leaves at ``indices``."""
        return self.tree[np.asarray(indices, dtype=np.int64) + self.leaves]

    def set_range(self, start: int, stop: int, value: float) -> None:
        """Set leaves ``[start, stop)`` to ``value`` and update their ancestors (contiguous slices per level)."""
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"SumTree range [{start}, {stop}) outside [0, {self.size})")
        if start == stop:
            return
        lo, hi = start + self.leaves, stop + self.leaves
        self.tree[lo:hi] = value
        for _ in range(self.depth):
            lo, hi = lo // 2, (hi - 1) // 2 + 1
            self.tree[lo:hi] = self.tree[2 * lo : 2 * hi : 2] + self.tree[2 * lo + 1 : 2 * hi : 2]

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set the leaves at distinct ``indices`` to ``values`` and update their ancestors."""
        nodes = np.asarray(indices, dtype=np.int64) + self.leaves
        self.tree[nodes] = values
        tree = self.tree
        for _ in range(self.depth):
            nodes >>= 1
            left = nodes << 1
            # a parent listed twice is written twice with the same sum, so no deduplication is needed
            tree[nodes] = tree.take(left) + tree.take(left + 1)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index of each prefix-sum position ``mass`` in ``[0, total)``, descending all of them together.

        At each level a position goes right when it is at least the left child's sum and the right child is
        non-empty (the guard keeps rounding from ever landing on a zero leaf), subtracting the left sum.
        """
        mass = np.array(mass, dtype=np.float64)
        nodes = np.ones(mass.shape, dtype=np.int64)
        tree = self.tree
        for _ in range(self.depth):
            nodes <<= 1
            left = tree.take(nodes)
            right = mass >= left
            right &= tree.take(nodes + 1) > 0
            np.subtract(mass, left, out=mass, where=right)
            nodes += right
        nodes -= self.leaves
        return nodes


class PrioritizedSampler:
    """Samples occupied slots with probability proportional to ``priority ** alpha`` (Reverb's Prioritized).

    A :class:`SumTree` over the slots holds ``priority ** alpha``; unoccupied slots hold 0, and an evicted row's
    slot loses its priority when FIFO eviction overwrites it with the new row. New rows get the largest priority
    seen so far (a running maximum starting at 1.0, raised by :meth:`update`), so every row is likely to be sampled
    at least once before its priority is learnt. When every stored priority is 0 the sampler falls back to uniform
    over occupied slots (weights then all 1).

    Args:
        capacity: slots of the table.
        alpha: priority exponent (0 samples uniformly).
        beta: importance exponent of :meth:`weights`.
    """

    __slots__ = ("alpha", "beta", "tree", "occupied", "max_priority")

    def __init__(self, capacity: int, alpha: float, beta: float):
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.tree = SumTree(capacity)
        self.occupied = 0
        self.max_priority = 1.0

    def on_write(self, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` now hold new rows: give them the maximum priority."""
        self.occupied = max(self.occupied, stop)
        self.tree.set_range(start, stop, self.max_priority**self.alpha)

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of distinct occupied ``slots`` (finite, >= 0, checked by the caller)."""
        if len(slots) == 0:
            return
        priorities = np.asarray(priorities, dtype=np.float64)
        self.tree.set(slots, priorities**self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        """``priority ** alpha`` of ``slots`` as stored in the tree."""
        return self.tree.get(slots)

    def restore(self, slots: np.ndarray, weights: np.ndarray, max_priority: float) -> None:
        """Set the tree values (``priority ** alpha``) of occupied ``slots`` directly, and the running maximum."""
        if len(slots):
            self.tree.set(slots, np.asarray(weights, dtype=np.float64))
        self.max_priority = float(max_priority)

    def remove(self, slots: np.ndarray) -> None:
        """Never sample the rows at distinct ``slots`` again (their tree values become 0) until they are rewritten."""
        if len(slots):
            self.tree.set(slots, np.zeros(len(slots), dtype=np.float64))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots drawn with replacement, each with probability ``tree[slot] / total`` (O(n log capacity))."""
        if self.occupied == 0:
            raise ValueError("cannot sample from an empty table")
        total = self.tree.total
        if total <= 0:
            return rng.integers(0, self.occupied, size=n, dtype=np.int64)
        return self.tree.find(rng.random(n) * total)

    def weights(self, slots: np.ndarray) -> np.ndarray:
        """Importance weights ``(N * P(i))^-beta / max_batch``, N the occupied slots, as float32.

        Normalising by the largest weight in the batch keeps every weight in (0, 1]. With all priorities 0 the
        sample was uniform and the weights are all 1.
        """
        total = self.tree.total
        if total <= 0:
            return np.ones(len(slots), dtype=np.float32)
        weights = (self.occupied * self.tree.get(slots) / total) ** -self.beta
        return (weights / weights.max()).astype(np.float32)


def _chain_lengths(episode: np.ndarray, step: np.ndarray, carried: int = 0) -> np.ndarray:
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


class _SequenceIndex:
    """The end keys of valid sequences of one length, kept up to date as rows come and go.

    A sequence of ``length`` rows ending at key ``e`` is valid when row ``e``'s backward chain (consecutive keys
    that are consecutive steps of one episode, see :func:`_chain_lengths`) is at least ``length`` long and its first
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


class Table:
    """Columnar ring buffer of ``config.capacity`` rows with FIFO eviction and uniform or prioritized sampling.

    Args:
        config: the table's configuration.
        cold: the cold tier rows evicted from the ring go to; required exactly when ``config.disk_capacity > 0``
            (:class:`replay.shard.ReplayShard` makes it under its directory).
    """

    def __init__(self, config: TableConfig, cold: ColdTier | None = None):
        if (config.disk_capacity > 0) != (cold is not None):
            raise ValueError(
                f"table {config.name!r} has disk_capacity={config.disk_capacity}: a cold tier is needed exactly "
                f"when disk_capacity > 0, got {'one' if cold is not None else 'none'} (ReplayShard makes it under "
                f"its directory)"
            )
        if cold is not None and (cold.columns != config.columns or cold.disk_capacity != config.disk_capacity):
            raise ValueError(
                f"table {config.name!r}: the cold tier was made for disk_capacity={cold.disk_capacity} and columns "
                f"{[c.name for c in cold.columns]}, the table has disk_capacity={config.disk_capacity} and columns "
                f"{[c.name for c in config.columns]}"
            )
        self.config = config
        self._cold = cold
        self._storage = {c.name: np.zeros((config.capacity,) + c.shape, dtype=c.np_dtype) for c in config.columns}
        self._remover = FifoRemover(config.capacity)
        if config.sampler == "prioritized":
            self._sampler: UniformSampler | PrioritizedSampler = PrioritizedSampler(
                config.capacity, config.priority_exponent, config.importance_exponent
            )
        else:
            self._sampler = UniformSampler()
        self._counter = (
            MaxTimesSampledRemover(config.capacity, config.max_times_sampled) if config.max_times_sampled else None
        )
        self._drop_non_finite = config.non_finite == "drop"
        self._inserted = 0
        self.dropped_non_finite = 0
        """Rows dropped at insert for holding NaN or inf (``non_finite="drop"``); they got no key."""
        self.last_removed = _NO_KEYS
        """Keys of the rows the last :meth:`sample` removed (``max_times_sampled``), for the shard's log."""
        specs = {c.name: c for c in config.columns}
        self._episodic = cold is None and self._counter is None and all(
            name in specs and specs[name].shape == () and np.dtype(specs[name].dtype).kind in "iu"
            for name in ("episode_id", "step")
        )
        self._last_chain = 0
        """Backward chain length of the newest stored row. Rows keep no chain array (8 bytes a row): a sequence index
        for a new length recomputes the chains from ``episode_id`` and ``step``."""
        self._sequences: OrderedDict[int, _SequenceIndex] = OrderedDict()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def cold(self) -> ColdTier | None:
        """The cold tier on disk, if the table has one."""
        return self._cold

    @property
    def size(self) -> int:
        """Rows stored now (and sampleable): in memory plus in the cold tier; rows removed after
        ``max_times_sampled`` samples do not count."""
        if self._counter is not None:
            return self._counter.count
        if self._cold is None:
            return self._remover.size
        return self._remover.size + self._cold.size

    @property
    def memory_size(self) -> int:
        """Slots of the in-memory ring in use (all of :attr:`size` without a cold tier or ``max_times_sampled``;
        with it, also the slots of removed rows not yet overwritten)."""
        return self._remover.size

    @property
    def inserted(self) -> int:
        """Rows ever written, including rows evicted since."""
        return self._inserted

    @property
    def evicted(self) -> int:
        """Rows evicted by FIFO (from memory, or from the cold tier when it has one), never stored (oversized
        chunk), or removed after ``max_times_sampled`` samples; ``inserted - evicted == size``."""
        return self._inserted - self.size

    @property
    def removed(self) -> int:
        """Rows removed after ``max_times_sampled`` samples (part of :attr:`evicted`); 0 without it."""
        return 0 if self._counter is None else self._counter.removed

    @property
    def oldest_key(self) -> int:
        """Key of the oldest stored row (equals :attr:`inserted` when the table is empty); with
        ``max_times_sampled``, of the oldest row in the ring, which may have been removed."""
        if self._counter is not None:
            return self._inserted - self._remover.size
        return self._inserted - self.size

    @property
    def prioritized(self) -> bool:
        """Whether this table samples by priority."""
        return isinstance(self._sampler, PrioritizedSampler)

    def insert(self, chunk: Mapping[str, np.ndarray]) -> int:
        """Validate and write a chunk; return the rows written (rows dropped for NaN or inf not included).

        Raises :class:`SchemaError` and stores nothing (see :meth:`prepare`).
        """
        chunk, n, dropped = self.prepare(chunk)
        self.write(chunk, n, dropped)
        return n

    def prepare(self, chunk: Mapping[str, np.ndarray]) -> tuple[Mapping[str, np.ndarray], int, int]:
        """Validate a chunk for this table; return the rows to write, their count and the rows dropped.

        With ``non_finite="drop"`` rows holding NaN or inf are left out (:func:`replay.schema.drop_non_finite_rows`);
        nothing is counted until :meth:`write`.

        Raises:
            SchemaError: the chunk does not match the table's columns, or (``non_finite="reject"``) has
                non-finite values.
        """
        if self._drop_non_finite:
            return drop_non_finite_rows(chunk, self.config.columns)
        return chunk, validate_chunk(chunk, self.config.columns), 0

    def write(self, chunk: Mapping[str, np.ndarray], n: int, dropped_non_finite: int = 0) -> None:
        """Write ``n`` rows of a chunk that already passed :meth:`prepare` at the cursor, and count
        ``dropped_non_finite`` rows that :meth:`prepare` left out of it.

        Rows wrap around the end of the buffer; the oldest stored rows are evicted. Of a chunk larger than the
        capacity only the newest ``capacity`` rows are kept (the rest count as evicted).
        """
        if dropped_non_finite:
            self.dropped_non_finite += dropped_non_finite
        if n == 0:
            return
        skip = max(0, n - self.capacity)
        if self._cold is not None:
            self._spill(chunk, n, skip)
        chain = self._chunk_chain(chunk, n)[skip:] if self._episodic else None
        runs, _ = self._remover.allocate(n - skip)
        src = skip
        for start, stop in runs:
            end = src + stop - start
            for name, store in self._storage.items():
                store[start:stop] = chunk[name][src:end]
            self._sampler.on_write(start, stop)
            if self._counter is not None:
                self._counter.on_write(start, stop)
            src = end
        first_key = self._inserted + skip
        self._inserted += n
        if chain is not None:
            self._last_chain = int(chain[-1])
            for index in self._sequences.values():
                index.append(first_key + np.flatnonzero(chain >= index.length))
                index.expire(self.oldest_key)
        if self._cold is not None and not self._cold.write_behind and self._cold.has_pending:
            self._cold.flush()

    def _spill(self, chunk: Mapping[str, np.ndarray], n: int, skip: int) -> None:
        """Hand the cold tier the rows a write of ``n`` rows is about to evict, oldest first: the oldest rows in
        memory, then the ``skip`` first rows of an oversized chunk (they are older than the rows kept)."""
        stored = self._remover.size
        evict = max(0, stored + n - skip - self.capacity)
        key = self._inserted - stored
        oldest = (self._remover.cursor - stored) % self.capacity
        while evict > 0:
            stop = min(oldest + evict, self.capacity)
            self._cold.append({name: store[oldest:stop] for name, store in self._storage.items()}, key, stop - oldest)
            key += stop - oldest
            evict -= stop - oldest
            oldest = 0
        if skip:
            self._cold.append({name: chunk[name][:skip] for name in self._storage}, self._inserted, skip)

    def _chunk_chain(self, chunk: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Backward chain length of each chunk row: 1 + the previous key's chain when the previous key is the
        same episode's previous step, else 1 (computed before the write, while the previous row is stored)."""
        episode = np.asarray(chunk["episode_id"][:n], dtype=np.int64)
        step = np.asarray(chunk["step"][:n], dtype=np.int64)
        carried = 0
        if self._remover.size > 0:
            prev = (self._remover.cursor - 1) % self.capacity
            if episode[0] == self._storage["episode_id"][prev] and step[0] == self._storage["step"][prev] + 1:
                carried = self._last_chain
        return _chain_lengths(episode, step, carried)

    def slots_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of row ``keys`` and a mask of the keys still stored in memory (evicted, removed, cold or future
        keys are False)."""
        keys = np.asarray(keys, dtype=np.int64)
        stored = (keys >= self._inserted - self._remover.size) & (keys < self._inserted)
        slots = (self._remover.cursor - (self._inserted - keys)) % self.capacity
        if self._counter is not None:
            stored &= self._counter.is_live(slots)
        return slots, stored

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """Keys of the rows stored at occupied ``slots``."""
        slots = np.asarray(slots, dtype=np.int64)
        return self._inserted - 1 - (self._remover.cursor - 1 - slots) % self.capacity

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots of stored rows, drawn by the table's sampler (with replacement).

        Raises:
            ValueError: the table has a cold tier (its rows have no slots; use :meth:`sample`), or
                ``max_times_sampled`` (draws must be counted; use :meth:`sample`).
        """
        if self._cold is not None:
            raise ValueError(f"table {self.name!r} keeps rows on disk, which have no slots; use sample()")
        if self._counter is not None:
            raise ValueError(
                f"table {self.name!r} has max_times_sampled={self.config.max_times_sampled}, so every draw must be "
                f"counted; use sample()"
            )
        return self._sampler.sample(n, rng)

    def can_sample(self, n: int) -> bool:
        """Whether :meth:`sample` can draw ``n`` rows now: the table has rows and, with ``max_times_sampled``,
        its live rows have ``n`` samples left."""
        if self._counter is not None:
            return self._counter.budget >= n
        return self.size > 0

    def sample(self, n: int, rng: np.random.Generator, with_keys: bool = False) -> dict[str, np.ndarray]:
        """``n`` rows drawn by the table's sampler; ``with_keys`` adds :data:`KEY_COLUMN` (int64 row keys) and
        :data:`WEIGHT_COLUMN` (float32 importance weights, all 1 for a uniform table).

        With a cold tier each row is drawn uniformly over all :attr:`size` rows, in memory and on disk. With
        ``max_times_sampled`` see :meth:`_sample_counted`.

        Raises:
            ValueError: the table is empty, or (``max_times_sampled``) its live rows have fewer than ``n`` samples
                left (see :meth:`can_sample`).
        """
        if self._counter is not None:
            return self._sample_counted(n, rng, with_keys)
        if self._cold is not None and self._cold.size > 0:
            return self._sample_with_cold(n, rng, with_keys)
        slots = self._sampler.sample(n, rng)
        batch = self.gather(slots)
        if with_keys:
            batch[KEY_COLUMN] = self.keys_of(slots)
            batch[WEIGHT_COLUMN] = self._sampler.weights(slots)
        return batch

    def _sample_counted(self, n: int, rng: np.random.Generator, with_keys: bool) -> dict[str, np.ndarray]:
        """A sample that counts every row drawn and removes the rows that reach ``max_times_sampled``.

        As drawing one row at a time from the rows live at that moment: ``n`` rows are drawn among the live ones
        (uniformly, or by priority), each row keeps as many of its draws as it has samples left, and the rejected
        draws are drawn again among the rows still live, until all ``n`` are accepted. The keys of the removed
        rows are left in :attr:`last_removed`. Importance weights use each draw's probability when it was made
        (``N`` the live rows then).
        """
        counter = self._counter
        if n > counter.budget:
            raise ValueError(
                f"table {self.name!r}: cannot sample {n} rows: its {counter.count} live rows have {counter.budget} "
                f"samples left (max_times_sampled={self.config.max_times_sampled})"
            )
        prioritized = self.prioritized
        slots, scaled = self._draw_live(n, rng)
        accepted, gone = counter.admit(slots)
        removed = [gone]
        if prioritized:
            self._sampler.remove(gone)
        todo = None if accepted is None else np.flatnonzero(~accepted)
        while todo is not None and len(todo):
            drawn, drawn_scaled = self._draw_live(len(todo), rng)
            accepted, gone = counter.admit(drawn)
            removed.append(gone)
            if prioritized:
                self._sampler.remove(gone)
            if accepted is None:
                accepted = np.ones(len(todo), dtype=bool)
            done = todo[accepted]
            slots[done] = drawn[accepted]
            if scaled is not None:
                scaled[done] = drawn_scaled[accepted] if drawn_scaled is not None else 1.0
            todo = todo[~accepted]
        gone = np.concatenate(removed) if len(removed) > 1 else removed[0]
        self.last_removed = self.keys_of(gone) if len(gone) else _NO_KEYS
        batch = self.gather(slots)
        if with_keys:
            batch[KEY_COLUMN] = self.keys_of(slots)
            if scaled is None:
                batch[WEIGHT_COLUMN] = np.ones(n, dtype=np.float32)
            else:
                weights = scaled**-self._sampler.beta
                batch[WEIGHT_COLUMN] = (weights / weights.max()).astype(np.float32)
        return batch

    def _draw_live(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` live slots (``max_times_sampled``) drawn by the sampler, and for prioritized draws ``N * P(slot)``
        (``N`` the live rows); uniform draws, and prioritized ones when every live priority is 0, give None."""
        counter = self._counter
        if self.prioritized:
            tree = self._sampler.tree
            total = tree.total
            if total > 0:
                slots = tree.find(rng.random(n) * total)
                return slots, counter.count * tree.get(slots) / total
        return counter.draw(n, rng), None

    def _sample_with_cold(self, n: int, rng: np.random.Generator, with_keys: bool) -> dict[str, np.ndarray]:
        """Uniform over the cold tier's rows (positions ``[0, cold)``, oldest first) and the ring's slots."""
        cold = self._cold.size
        picks = rng.integers(0, cold + self._remover.size, size=n, dtype=np.int64)
        from_cold = picks < cold
        cold_at = np.flatnonzero(from_cold)
        warm_at = np.flatnonzero(~from_cold)
        slots = picks[warm_at] - cold
        cold_rows, cold_keys = self._cold.gather(picks[cold_at])
        batch = {}
        for name, store in self._storage.items():
            column = np.empty((n,) + store.shape[1:], dtype=store.dtype)
            column[warm_at] = store.take(slots, axis=0)
            column[cold_at] = cold_rows[name]
            batch[name] = column
        if with_keys:
            keys = np.empty(n, dtype=np.int64)
            keys[warm_at] = self.keys_of(slots)
            keys[cold_at] = cold_keys
            batch[KEY_COLUMN] = keys
            batch[WEIGHT_COLUMN] = np.ones(n, dtype=np.float32)
        return batch

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Set the priorities of the rows with ``keys``; return how many rows were updated.

        Keys no longer stored (evicted: their slot holds a newer row) are ignored; of a key given twice the last
        priority wins. A uniform table validates the arguments and updates nothing (returns 0), so a learner can
        treat both kinds of table alike.

        Raises:
            ValueError: ``keys`` and ``priorities`` are not 1-D of the same length, keys are not integers, or a
                priority is negative or not finite; nothing is updated then.
        """
        keys, priorities = self.check_priorities(keys, priorities)
        if not self.prioritized:
            return 0
        slots, stored = self.slots_of(keys)
        slots, priorities = slots[stored], priorities[stored]
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        self._sampler.update(slots[last], priorities[last])
        return len(last)

    def check_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate the arguments of :meth:`update_priorities`; return them as int64 keys and float64 priorities.

        Raises:
            ValueError: as :meth:`update_priorities`.
        """
        return check_priority_update(keys, priorities, f"table {self.name!r}", "nothing was updated")

    def priorities(self, keys: np.ndarray) -> np.ndarray:
        """``priority ** alpha`` of stored rows with ``keys`` (as the sum tree holds it; prioritized tables only)."""
        if not self.prioritized:
            raise ValueError(f"table {self.name!r} uses sampler {self.config.sampler!r}, which keeps no priorities")
        slots, stored = self.slots_of(keys)
        if not stored.all():
            raise KeyError(f"table {self.name!r}: keys {np.asarray(keys)[~stored][:5].tolist()} are not stored")
        return self._sampler.priorities(slots)

    def _sequence_index(self, length: int) -> _SequenceIndex:
        """The valid-end index for ``length``, built in O(size) on first use and maintained on every write."""
        if self._counter is not None:
            raise ValueError(
                f"table {self.name!r}: sequence sampling is not supported on a table with max_times_sampled > 0 "
                f"(max_times_sampled={self.config.max_times_sampled}); use a table without it for sequences"
            )
        if self._cold is not None:
            raise ValueError(
                f"table {self.name!r}: sequence sampling is not supported on a table with disk_capacity > 0 "
                f"(disk_capacity={self.config.disk_capacity}); use a table without a cold tier for sequences"
            )
        if not self._episodic:
            raise ValueError(
                f"table {self.name!r}: sequence sampling needs scalar integer columns 'episode_id' and 'step', "
                f"got columns {[c.name for c in self.config.columns]}"
            )
        is_int = isinstance(length, (int, np.integer)) and not isinstance(length, bool)
        if not is_int or not 1 <= length <= self.capacity:
            raise ValueError(
                f"table {self.name!r}: sequence length must be an int in [1, capacity={self.capacity}], got {length!r}"
            )
        length = int(length)
        index = self._sequences.get(length)
        if index is None:
            slots = self.ordered_slots()
            chain = _chain_lengths(self._storage["episode_id"][slots], self._storage["step"][slots])
            ends = self.oldest_key + np.flatnonzero(chain >= length)
            index = _SequenceIndex(length, self.capacity, ends)
            index.expire(self.oldest_key)
            self._sequences[length] = index
            if len(self._sequences) > MAX_CACHED_SEQUENCE_LENGTHS:
                self._sequences.popitem(last=False)
        else:
            self._sequences.move_to_end(length)
        return index

    def sequence_starts(self, length: int) -> int:
        """How many valid sequences of ``length`` rows start in the stored rows.

        Raises:
            ValueError: the table has no ``episode_id``/``step`` columns, or ``length`` is not in [1, capacity].
        """
        return self._sequence_index(length).count

    def sample_sequences(self, n: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """``n`` sequences of ``length`` rows, columns shaped ``(n, length) + spec.shape``, or None if none exists.

        A sequence is ``length`` consecutive keys (so it never crosses the write cursor or rows written in
        between by another writer) that are consecutive steps of one episode. Starts are uniform over all valid
        ones, with replacement, whatever the table's sampler.

        Validity is maintained incrementally rather than computed at sample time: each write records every row's
        backward chain length (O(rows written)) and appends the rows that end a valid sequence to a sorted index
        per cached length, and evictions drop index entries from the front by binary search. A sample is then
        O(n * length) regardless of capacity, where a mask computed at sample time would cost O(capacity)
        whenever a write happened since the last sample, which between inserts and samples is nearly always.
        """
        index = self._sequence_index(length)
        if index.count == 0:
            return None
        starts = index.sample_starts(n, rng)
        slots, _ = self.slots_of(starts[:, None] + np.arange(length, dtype=np.int64))
        return self.gather(slots)

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Copy the rows at ``indices`` out of every column (shape ``indices.shape + spec.shape``)."""
        return {name: store.take(indices, axis=0) for name, store in self._storage.items()}

    def ordered_slots(self) -> np.ndarray:
        """Slots of the stored rows from the oldest to the newest."""
        return self._remover.ordered_slots()

    def export(self) -> tuple[dict[str, np.ndarray], int, np.ndarray | None, float | None]:
        """A copy of the rows in memory oldest to newest, the insert counter (the rows have keys
        ``[inserted - memory_size, inserted)``), and for a prioritized table each row's ``priority ** alpha`` and
        the sampler's running maximum priority (else None, None). Rows of a cold tier are not included: they are
        in its files already."""
        slots = self.ordered_slots()
        rows = self.gather(slots)
        if self.prioritized:
            return rows, self._inserted, self._sampler.priorities(slots).copy(), self._sampler.max_priority
        return rows, self._inserted, None, None

    def times_sampled(self) -> np.ndarray | None:
        """With ``max_times_sampled``: how often each row of :meth:`export` was sampled (int32, oldest to newest),
        -1 for rows already removed; else None."""
        if self._counter is None:
            return None
        counts = self._counter.counts[self.ordered_slots()]
        return np.where(counts >= self._counter.max_times, -1, counts).astype(np.int32)

    def sampled_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and sample counts (int32) of the live rows sampled at least once (``max_times_sampled``; else
        none), in no particular order."""
        if self._counter is None:
            return _NO_KEYS, np.empty(0, dtype=np.int32)
        slots = self._counter.live[: self._counter.count].astype(np.int64)
        counts = self._counter.counts[slots]
        sampled = counts > 0
        return self.keys_of(slots[sampled]), counts[sampled]

    def set_times_sampled(self, keys: np.ndarray, counts: np.ndarray) -> int:
        """Set how often the rows with ``keys`` were sampled (a count of -1 or ``>= max_times_sampled`` removes
        the row), as recovery replays them; keys not stored (evicted, removed) are skipped, of a key given twice
        the last count wins. Returns the rows removed. Only for tables with ``max_times_sampled``.

        Raises:
            ValueError: the table has no ``max_times_sampled``, or keys and counts differ in length.
        """
        if self._counter is None:
            raise ValueError(f"table {self.name!r} has max_times_sampled=0 and counts no samples")
        keys, counts = np.asarray(keys, dtype=np.int64), np.asarray(counts, dtype=np.int64)
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError(f"table {self.name!r}: keys {keys.shape} and counts {counts.shape} must be 1-D alike")
        slots, stored = self.slots_of(keys)
        slots, counts = slots[stored], counts[stored]
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        gone = self._counter.set(slots[last], counts[last])
        if self.prioritized:
            self._sampler.remove(gone)
        return len(gone)

    def restore(
        self,
        rows: Mapping[str, np.ndarray],
        inserted: int,
        priorities: np.ndarray | None = None,
        max_priority: float | None = None,
        times_sampled: np.ndarray | None = None,
        removed: int = 0,
        dropped_non_finite: int = 0,
    ) -> None:
        """Load what :meth:`export` returned into this empty table: afterwards it stores ``rows`` with the keys
        ``[inserted - len(rows), inserted)`` and, if given (prioritized tables), their priorities; with
        ``max_times_sampled``, also their sample counts (:meth:`times_sampled`; -1 marks a removed row) and the
        ``removed`` counter. ``dropped_non_finite`` restores that counter. A cold tier keeps what it recovered from
        its files (see :meth:`reconcile_cold`).

        Raises:
            ValueError: the table is not empty, there are more rows than the capacity or than ``inserted``, or
                ``priorities`` or ``times_sampled`` has the wrong length.
            SchemaError: ``rows`` does not match the table's columns.
        """
        if self._inserted or self._remover.size:
            raise ValueError(f"table {self.name!r}: restore needs an empty table, it has inserted {self._inserted}")
        n = validate_chunk(rows, self.config.columns)
        if n > self.capacity or n > inserted:
            raise ValueError(
                f"table {self.name!r}: cannot restore {n} rows with inserted={inserted} into capacity {self.capacity}"
            )
        if priorities is not None and len(priorities) != n:
            raise ValueError(f"table {self.name!r}: {len(priorities)} priorities for {n} rows")
        if times_sampled is not None and len(times_sampled) != n:
            raise ValueError(f"table {self.name!r}: {len(times_sampled)} sample counts for {n} rows")
        self._sequences.clear()
        self._inserted = inserted - n
        self.write(rows, n, dropped_non_finite)
        if self.prioritized and priorities is not None:
            self._sampler.restore(
                np.arange(n, dtype=np.int64), priorities, 1.0 if max_priority is None else max_priority
            )
        if self._counter is not None:
            if times_sampled is not None:
                self.set_times_sampled(np.arange(inserted - n, inserted, dtype=np.int64), times_sampled)
            self._counter.removed = removed

    def reconcile_cold(self) -> None:
        """After a recovery, make the cold tier end exactly where the rows in memory begin, with a warning for
        anything that does not fit: cold rows with keys the table never inserted (files of another run: all
        removed), cold rows also in memory (dropped from the cold tier), or keys missing in between (lost)."""
        cold = self._cold
        if cold is None:
            return
        first_in_memory = self._inserted - self._remover.size
        where = f"cold tier of table {self.name!r} in {cold.directory}"
        if cold.end_key > self._inserted:
            _warn(
                f"{where} holds keys up to {cold.end_key - 1}, but the table recovered only {self._inserted} "
                f"inserts: its files belong to another run and were removed"
            )
            cold.clear()
        elif cold.end_key > first_in_memory:
            dropped = cold.drop_from(first_in_memory)
            _warn(f"{where}: dropped {dropped} row(s) with keys >= {first_in_memory}, which are also in memory")
        elif cold.size and cold.end_key < first_in_memory:
            _warn(f"{where}: rows with keys [{cold.end_key}, {first_in_memory}) are missing (lost)")

    def stats(self) -> dict:
        """size, capacity, inserted, evicted, removed (the part of evicted removed after ``max_times_sampled``
        samples), dropped_non_finite; with a cold tier also memory_rows, disk_capacity and the tier's
        :meth:`replay.cold.ColdTier.stats` (disk_rows, staged_rows, disk_files, disk_bytes, spilled)."""
        out = {
            "size": self.size,
            "capacity": self.capacity,
            "inserted": self._inserted,
            "evicted": self.evicted,
            "removed": self.removed,
            "dropped_non_finite": self.dropped_non_finite,
        }
        if self._cold is not None:
            out["memory_rows"] = self._remover.size
            out["disk_capacity"] = self.config.disk_capacity
            out.update(self._cold.stats())
        return out


def check_priority_update(
    keys: np.ndarray, priorities: np.ndarray, where: str, outcome: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``update_priorities`` call: 1-D integer keys >= 0, finite priorities >= 0 of the same length.

    Returns int64 keys and float64 priorities. Errors start with ``where`` and end with ``outcome``.
    """
    keys, priorities = np.asarray(keys), np.asarray(priorities)
    if keys.ndim != 1 or priorities.shape != keys.shape:
        raise ValueError(
            f"{where}: update_priorities needs 1-D keys and priorities of the same length, got shapes {keys.shape} "
            f"and {priorities.shape}; {outcome}"
        )
    if keys.size and keys.dtype.kind not in "iu":
        raise ValueError(f"{where}: keys must be integers from a with_keys sample, got dtype {keys.dtype}; {outcome}")
    if keys.size and keys.min() < 0:
        first = int(np.flatnonzero(keys < 0)[0])
        raise ValueError(
            f"{where}: keys must be >= 0 (from a with_keys sample), got keys[{first}] = {int(keys[first])}; {outcome}"
        )
    if priorities.size and priorities.dtype.kind not in "biuf":
        raise ValueError(f"{where}: priorities must be numbers, got dtype {priorities.dtype}; {outcome}")
    priorities = priorities.astype(np.float64)
    bad = ~np.isfinite(priorities) | (priorities < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}: priorities must be finite and >= 0; {int(bad.sum())} of {len(priorities)} are not, e.g. "
            f"priorities[{first}] = {float(priorities[first])!r} (key {int(keys[first])}); {outcome}"
        )
    return keys.astype(np.int64), priorities
