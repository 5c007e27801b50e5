"""A replay table: a columnar numpy ring buffer with a pluggable sampler and remover.

Storage is one preallocated array per column, shape ``(capacity,) + spec.shape``; a chunk of N rows is written
with at most two slice copies per column. Which slots new rows overwrite is the remover's decision
(:class:`FifoRemover`), which slots a sample reads is the sampler's (:class:`UniformSampler`); both only see slot
numbers, so a prioritized sampler can replace the uniform one without touching storage.

:class:`Table` is not thread-safe: :class:`replay.shard.ReplayShard` serialises access with one lock per table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from replay.rate_limiter import RateLimiterConfig
from replay.schema import ColumnSpec, validate_chunk

__all__ = ["FifoRemover", "Table", "TableConfig", "UniformSampler"]


@dataclass(frozen=True)
class TableConfig:
    """One table of a shard: its name, capacity in rows, columns, and per-consumer rate limiters."""

    name: str
    """Table name, e.g. ``"real"`` or ``"imagined"``."""
    capacity: int
    """Rows this table holds in one shard; older rows are evicted first."""
    columns: tuple[ColumnSpec, ...]
    """Row schema, e.g. :func:`replay.schema.transition_columns`."""
    limiters: tuple[tuple[str, RateLimiterConfig], ...] = ()
    """``(consumer name, limiter)`` pairs; consumers not listed sample without rate limiting."""

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


class Table:
    """Columnar ring buffer of ``config.capacity`` rows with FIFO eviction and uniform sampling."""

    def __init__(self, config: TableConfig):
        self.config = config
        self._storage = {c.name: np.zeros((config.capacity,) + c.shape, dtype=c.np_dtype) for c in config.columns}
        self._remover = FifoRemover(config.capacity)
        self._sampler = UniformSampler()
        self._inserted = 0
        self._evicted = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def capacity(self) -> int:
        return self.config.capacity

    @property
    def size(self) -> int:
        """Rows stored now."""
        return self._remover.size

    @property
    def inserted(self) -> int:
        """Rows ever written, including rows evicted since."""
        return self._inserted

    @property
    def evicted(self) -> int:
        """Rows removed to make room; ``inserted - evicted == size``."""
        return self._evicted

    def insert(self, chunk: Mapping[str, np.ndarray]) -> int:
        """Validate and write a chunk; return its row count. Raises :class:`SchemaError` and stores nothing."""
        n = validate_chunk(chunk, self.config.columns)
        self.write(chunk, n)
        return n

    def write(self, chunk: Mapping[str, np.ndarray], n: int) -> None:
        """Write ``n`` rows of a chunk that already passed :func:`validate_chunk` at the cursor.

        Rows wrap around the end of the buffer; the oldest stored rows are evicted. Of a chunk larger than the
        capacity only the newest ``capacity`` rows are kept (the rest count as evicted).
        """
        skip = max(0, n - self.capacity)
        runs, evicted = self._remover.allocate(n - skip)
        src = skip
        for start, stop in runs:
            end = src + stop - start
            for name, store in self._storage.items():
                store[start:stop] = chunk[name][src:end]
            self._sampler.on_write(start, stop)
            src = end
        self._inserted += n
        self._evicted += evicted + skip

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots of stored rows, drawn by the table's sampler (uniform with replacement)."""
        return self._sampler.sample(n, rng)

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Copy the rows at ``indices`` out of every column."""
        return {name: store.take(indices, axis=0) for name, store in self._storage.items()}

    def ordered_slots(self) -> np.ndarray:
        """Slots of the stored rows from the oldest to the newest."""
        return self._remover.ordered_slots()

    def stats(self) -> dict:
        """size, capacity, inserted, evicted."""
        return {"size": self.size, "capacity": self.capacity, "inserted": self._inserted, "evicted": self._evicted}
