"""A replay table: storage, a sampler and removers composed, with its configuration.

:class:`Table` puts together the parts, each in its own module and each seeing slot numbers only:

* :class:`replay.storage.RingStorage`: one preallocated numpy array per column, the insert counter (row keys), and
  the cold tier evicted rows go to (:attr:`TableConfig.disk_capacity`, :mod:`replay.cold`);
* :class:`replay.removers.FifoRemover` (inside the storage): which slots new rows overwrite, the oldest first;
* a sampler from :mod:`replay.samplers`: :class:`~replay.samplers.UniformSampler` or
  :class:`~replay.samplers.PrioritizedSampler` (:attr:`TableConfig.sampler`);
* :class:`replay.removers.MaxTimesSampledRemover` (:attr:`TableConfig.max_times_sampled`): removes a row once it
  has been sampled that many times (Reverb's MaxTimesSampled); it keeps its slot until FIFO eviction reaches it, so
  keys and slots still convert by arithmetic, but it is never sampled again and no longer counts in
  :attr:`Table.size`;
* :class:`replay.sequences.Sequences`: runs of rows that are consecutive steps of one episode
  (:meth:`Table.sample_sequences`).

Combinations that are refused, each with one error: a cold tier with a prioritized sampler or with
``max_times_sampled`` (by :class:`TableConfig`: the cold tier keeps no priorities or sample counts), and sequence
sampling with ``max_times_sampled``, a cold tier or without ``episode_id``/``step`` columns (at the call, see
:func:`replay.sequences.sequence_refusal`).

Non-finite values: :attr:`TableConfig.non_finite` rejects a chunk with NaN or inf in a float column (the default)
or drops those rows and counts them (:attr:`Table.dropped_non_finite`).

:class:`Table` is not thread-safe: :class:`replay.shard.ReplayShard` serialises access with one lock per table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from replay.rate_limiter import RateLimiterConfig
from replay.removers import MaxTimesSampledRemover
from replay.samplers import (
    SAMPLERS,
    PrioritizedSampler,
    UniformSampler,
    check_priority_update,
    normalised_weights,
)
from replay.schema import NON_FINITE_POLICIES, ColumnSpec, drop_non_finite_rows, validate_chunk
from replay.sequences import SequenceIndex, Sequences, sequence_refusal
from replay.storage import RingStorage

if TYPE_CHECKING:
    from replay.cold import ColdTier

__all__ = ["KEY_COLUMN", "WEIGHT_COLUMN", "Table", "TableConfig"]

KEY_COLUMN = "key"
"""Extra batch column (int64) with each sampled row's key, returned when sampling ``with_keys``."""
WEIGHT_COLUMN = "weight"
"""Extra batch column (float32) with each sampled row's importance weight, returned with :data:`KEY_COLUMN`."""
_NO_KEYS = np.empty(0, dtype=np.int64)
_NO_KEYS.flags.writeable = False


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
        most = self.max_times_sampled
        if not isinstance(most, int) or isinstance(most, bool) or not 0 <= most < 2**31 - 1:
            raise ValueError(
                f"TableConfig {self.name!r}: max_times_sampled must be an int in [0, 2**31 - 1) (0: never remove), "
                f"got {most!r}"
            )
        if self.non_finite not in NON_FINITE_POLICIES:
            raise ValueError(
                f"TableConfig {self.name!r}: non_finite must be one of {NON_FINITE_POLICIES}, got {self.non_finite!r}"
            )
        # the combinations that are refused: a cold tier keeps neither priorities nor sample counts
        if self.disk_capacity > 0 and self.sampler != "uniform":
            raise ValueError(
                f"TableConfig {self.name!r}: disk_capacity > 0 (a cold tier on disk) needs sampler='uniform', got "
                f"sampler={self.sampler!r} (priorities of rows on disk are not kept)"
            )
        if most > 0 and self.disk_capacity > 0:
            raise ValueError(
                f"TableConfig {self.name!r}: max_times_sampled > 0 needs disk_capacity=0, got max_times_sampled="
                f"{most} and disk_capacity={self.disk_capacity} (the cold tier keeps no sample counts)"
            )
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "limiters", tuple((name, cfg) for name, cfg in limiters))


class Table:
    """A replay table of ``config.capacity`` rows in memory: FIFO eviction, the configured sampler and removers.

    Args:
        config: the table's configuration.
        cold: the cold tier rows evicted from the ring go to; required exactly when ``config.disk_capacity > 0``
            (:func:`replay.recovery.open_table` makes it under the shard's directory).
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
        self._storage = RingStorage(config.name, config.columns, config.capacity, cold)
        self._sampler: UniformSampler | PrioritizedSampler = (
            PrioritizedSampler(config.capacity, config.priority_exponent, config.importance_exponent)
            if config.sampler == "prioritized"
            else UniformSampler()
        )
        self._counter = (
            MaxTimesSampledRemover(config.capacity, config.max_times_sampled) if config.max_times_sampled else None
        )
        self._sequences = Sequences(config.capacity) if sequence_refusal(config) is None else None
        self._drop_non_finite = config.non_finite == "drop"
        self.dropped_non_finite = 0
        """Rows dropped at insert for holding NaN or inf (``non_finite="drop"``); they got no key."""
        self.last_removed = _NO_KEYS
        """Keys of the rows the last :meth:`sample` removed (``max_times_sampled``), for the shard's log."""

    # ---- sizes and counters ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def cold(self) -> ColdTier | None:
        """The cold tier on disk, if the table has one."""
        return self._storage.cold

    @property
    def size(self) -> int:
        """Rows stored now (and sampleable): in memory plus in the cold tier; rows removed after
        ``max_times_sampled`` samples do not count."""
        return self._counter.count if self._counter is not None else self._storage.rows

    @property
    def memory_size(self) -> int:
        """Slots of the in-memory ring in use (all of :attr:`size` without a cold tier or ``max_times_sampled``;
        with it, also the slots of removed rows not yet overwritten)."""
        return self._storage.size

    @property
    def inserted(self) -> int:
        """Rows ever written, including rows evicted since."""
        return self._storage.inserted

    @property
    def evicted(self) -> int:
        """Rows evicted by FIFO (from memory, or from the cold tier when it has one), never stored (oversized
        chunk), or removed after ``max_times_sampled`` samples; ``inserted - evicted == size``."""
        return self.inserted - self.size

    @property
    def removed(self) -> int:
        """Rows removed after ``max_times_sampled`` samples (part of :attr:`evicted`); 0 without it."""
        return 0 if self._counter is None else self._counter.removed

    @property
    def oldest_key(self) -> int:
        """Key of the oldest stored row (equals :attr:`inserted` when the table is empty); with
        ``max_times_sampled``, of the oldest row in the ring, which may have been removed."""
        return self.inserted - (self.memory_size if self._counter is not None else self.size)

    @property
    def prioritized(self) -> bool:
        """Whether this table samples by priority."""
        return isinstance(self._sampler, PrioritizedSampler)

    # ---- writing -----------------------------------------------------------------------------------------------

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
        first_key = self.inserted + skip
        # chains are computed before the write, while the previous row is still stored
        chain = self._sequences.chains(chunk, n, self._storage)[skip:] if self._sequences is not None else None
        for start, stop in self._storage.write(chunk, n):
            self._sampler.on_write(start, stop)
            if self._counter is not None:
                self._counter.on_write(start, stop)
        if chain is not None:
            self._sequences.on_write(chain, first_key, self.oldest_key)

    # ---- keys and slots ----------------------------------------------------------------------------------------

    def slots_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of row ``keys`` and a mask of the keys still stored in memory (evicted, removed, cold or future
        keys are False)."""
        slots, stored = self._storage.slots_of(keys)
        if self._counter is not None:
            stored &= self._counter.is_live(slots)
        return slots, stored

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """Keys of the rows stored at occupied ``slots``."""
        return self._storage.keys_of(slots)

    def ordered_slots(self) -> np.ndarray:
        """Slots of the stored rows from the oldest to the newest."""
        return self._storage.ordered_slots()

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Copy the rows at ``indices`` out of every column (shape ``indices.shape + spec.shape``)."""
        return self._storage.gather(indices)

    # ---- sampling ----------------------------------------------------------------------------------------------

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots of stored rows, drawn by the table's sampler (with replacement).

        Raises:
            ValueError: the table has a cold tier (its rows have no slots; use :meth:`sample`), or
                ``max_times_sampled`` (draws must be counted; use :meth:`sample`).
        """
        if self.cold is not None:
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
        ``max_times_sampled`` every draw is counted and rows that reach the limit are removed (their keys are
        left in :attr:`last_removed`), as drawing one row at a time from the rows live at that moment (see
        :meth:`replay.removers.MaxTimesSampledRemover.sample`); importance weights use each draw's probability
        when it was made.

        Raises:
            ValueError: the table is empty, or (``max_times_sampled``) its live rows have fewer than ``n`` samples
                left (see :meth:`can_sample`).
        """
        if self.cold is not None and self.cold.size > 0:
            batch, keys = self._storage.gather_positions(rng.integers(0, self._storage.rows, size=n, dtype=np.int64))
            weights = np.ones(n, dtype=np.float32)
        elif self._counter is not None:
            slots, scaled = self._sample_counted(n, rng)
            batch, keys = self.gather(slots), self.keys_of(slots)
            weights = np.ones(n, dtype=np.float32) if scaled is None else normalised_weights(scaled, self._sampler.beta)
        else:
            slots = self._sampler.sample(n, rng)
            batch = self.gather(slots)
            if not with_keys:
                return batch
            keys, weights = self.keys_of(slots), self._sampler.weights(slots)
        if with_keys:
            batch[KEY_COLUMN] = keys
            batch[WEIGHT_COLUMN] = weights
        return batch

    def _sample_counted(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """Slots of a counted sample (``max_times_sampled``) and ``N * P`` of each draw (None: uniform draws);
        the keys of the rows it removed are left in :attr:`last_removed`."""
        counter = self._counter
        if n > counter.budget:
            raise ValueError(
                f"table {self.name!r}: cannot sample {n} rows: its {counter.count} live rows have {counter.budget} "
                f"samples left (max_times_sampled={self.config.max_times_sampled})"
            )
        slots, scaled, gone = counter.sample(n, rng, self._sampler)
        self.last_removed = self.keys_of(gone) if len(gone) else _NO_KEYS
        return slots, scaled

    def sequence_starts(self, length: int) -> int:
        """How many valid sequences of ``length`` rows start in the stored rows.

        Raises:
            ValueError: the table cannot sample sequences (:func:`replay.sequences.sequence_refusal`), or
                ``length`` is not in [1, capacity].
        """
        return self._sequence_index(length).count

    def sample_sequences(self, n: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """``n`` sequences of ``length`` rows, columns shaped ``(n, length) + spec.shape``, or None if none exists.

        A sequence is ``length`` consecutive keys that are consecutive steps of one episode (see
        :mod:`replay.sequences`). Starts are uniform over all valid ones, with replacement, whatever the table's
        sampler. O(n * length) regardless of capacity.
        """
        index = self._sequence_index(length)
        if index.count == 0:
            return None
        starts = index.sample_starts(n, rng)
        slots, _ = self.slots_of(starts[:, None] + np.arange(length, dtype=np.int64))
        return self.gather(slots)

    def _sequence_index(self, length: int) -> SequenceIndex:
        if self._sequences is None:
            raise ValueError(f"table {self.name!r}: {sequence_refusal(self.config)}")
        is_int = isinstance(length, (int, np.integer)) and not isinstance(length, bool)
        if not is_int or not 1 <= length <= self.capacity:
            raise ValueError(
                f"table {self.name!r}: sequence length must be an int in [1, capacity={self.capacity}], got {length!r}"
            )
        return self._sequences.index(int(length), self._storage)

    # ---- priorities --------------------------------------------------------------------------------------------

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

    # ---- sample counts (max_times_sampled) ---------------------------------------------------------------------

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
        self._sampler.remove(gone)
        return len(gone)

    # ---- copies out and in -------------------------------------------------------------------------------------

    def export(self) -> tuple[dict[str, np.ndarray], int, np.ndarray | None, float | None]:
        """A copy of the rows in memory oldest to newest, the insert counter (the rows have keys
        ``[inserted - memory_size, inserted)``), and for a prioritized table each row's ``priority ** alpha`` and
        the sampler's running maximum priority (else None, None). Rows of a cold tier are not included: they are
        in its files already. Rows removed after ``max_times_sampled`` samples are (see :meth:`times_sampled`)."""
        slots = self.ordered_slots()
        rows = self.gather(slots)
        if self.prioritized:
            return rows, self.inserted, self._sampler.priorities(slots).copy(), self._sampler.max_priority
        return rows, self.inserted, None, None

    def contents(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
        """Every stored row oldest to newest (the cold tier's first; rows removed after ``max_times_sampled``
        samples left out), the rows' keys, and for a prioritized table each row's ``priority ** alpha`` (else
        None): what the table holds, for exports and inspection."""
        slots = self.ordered_slots()
        if self._counter is not None:
            slots = slots[self._counter.is_live(slots)]
        rows, keys = self.gather(slots), self.keys_of(slots)
        weights = self._sampler.priorities(slots).copy() if self.prioritized else None
        cold = self.cold
        if cold is not None and cold.size:
            cold_rows, cold_keys = cold.gather(np.arange(cold.size, dtype=np.int64))
            rows = {name: np.concatenate([cold_rows[name], values]) for name, values in rows.items()}
            keys = np.concatenate([cold_keys, keys])
        return rows, keys, weights

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
        if self.inserted or self.memory_size:
            raise ValueError(f"table {self.name!r}: restore needs an empty table, it has inserted {self.inserted}")
        n = validate_chunk(rows, self.config.columns)
        if n > self.capacity or n > inserted:
            raise ValueError(
                f"table {self.name!r}: cannot restore {n} rows with inserted={inserted} into capacity {self.capacity}"
            )
        if priorities is not None and len(priorities) != n:
            raise ValueError(f"table {self.name!r}: {len(priorities)} priorities for {n} rows")
        if times_sampled is not None and len(times_sampled) != n:
            raise ValueError(f"table {self.name!r}: {len(times_sampled)} sample counts for {n} rows")
        if self._sequences is not None:
            self._sequences.clear()
        self._storage.inserted = inserted - n
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
        """After a recovery, make the cold tier end exactly where the rows in memory begin (see
        :meth:`replay.storage.RingStorage.reconcile_cold`)."""
        self._storage.reconcile_cold()

    def stats(self) -> dict:
        """size, capacity, inserted, evicted, removed (the part of evicted removed after ``max_times_sampled``
        samples), dropped_non_finite; with a cold tier also memory_rows, disk_capacity and the tier's
        :meth:`replay.cold.ColdTier.stats` (disk_rows, staged_rows, disk_files, disk_bytes, spilled)."""
        out = {
            "size": self.size,
            "capacity": self.capacity,
            "inserted": self.inserted,
            "evicted": self.evicted,
            "removed": self.removed,
            "dropped_non_finite": self.dropped_non_finite,
        }
        if self.cold is not None:
            out["memory_rows"] = self.memory_size
            out["disk_capacity"] = self.config.disk_capacity
            out.update(self.cold.stats())
        return out
