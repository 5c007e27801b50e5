"""ReplayShard: several tables with dedup, per-consumer rate limiting and long-poll waits.

A shard is a plain object: in process it is wrapped in ``system.handles.LocalHandle``; on Ray it runs as a
threaded actor (``max_concurrency`` > 1), so every method is thread-safe. Each table has one lock and one
condition variable; waiting inserts and samples sleep on the condition and are woken by the other side.

Waiting calls hold a thread of a threaded actor: give the actor more threads than the calls that can wait at
once (writers x in-flight inserts + sampling consumers), or samples queue behind waiting inserts until those
time out.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Mapping, Sequence

import numpy as np

from replay.rate_limiter import RateLimiter
from replay.schema import SchemaError, validate_chunk
from replay.table import Table, TableConfig

__all__ = ["ReplayShard"]

DEDUP_WINDOW = 1024
"""Chunks per writer whose keys are remembered exactly; older keys collapse into a floor."""


class _SeenChunks:
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

    def add(self, key: int) -> None:
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > DEDUP_WINDOW:
            old = self._order.popleft()
            self._keys.discard(old)
            self._floor = old if self._floor is None else max(self._floor, old)


class _TableState:
    """One table plus everything the shard keeps about it, guarded by ``cond``."""

    def __init__(self, config: TableConfig, rng: np.random.Generator):
        self.table = Table(config)
        self.cond = threading.Condition(threading.Lock())
        self.limiters = {name: RateLimiter(cfg, name=name) for name, cfg in config.limiters}
        self.unlimited_sampled: dict[str, int] = {}
        self.seen: dict[int, _SeenChunks] = {}
        self.rng = rng
        self.sampled = 0
        self.duplicates = 0
        self.inserts_waited = 0
        self.samples_waited = 0

    def insert_blocker(self, n: int) -> str | None:
        """Name of the first consumer whose limiter refuses an insert of ``n`` rows, or None."""
        for name, limiter in self.limiters.items():
            if not limiter.can_insert(n):
                return name
        return None

    def stats(self) -> dict:
        consumers = {name: lim.stats() for name, lim in self.limiters.items()}
        for name, rows in self.unlimited_sampled.items():
            consumers[name] = {"sampled": rows, "samples_per_insert": None}
        return {
            **self.table.stats(),
            "sampled": self.sampled,
            "duplicates": self.duplicates,
            "inserts_waited": self.inserts_waited,
            "samples_waited": self.samples_waited,
            "consumers": consumers,
        }


class ReplayShard:
    """Holds the tables of one replay shard; thread-safe.

    Args:
        tables: one :class:`TableConfig` per table; each needs a scalar int64 ``seq`` column (the dedup key).
        seed: seeds the samplers, together with ``index`` (non-negative ints).
        index: this shard's number among its siblings, so that shards sample different streams.
    """

    def __init__(self, tables: Sequence[TableConfig], seed: int = 0, index: int = 0):
        tables = list(tables)
        if not tables:
            raise ValueError("ReplayShard needs at least one TableConfig, got none")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"ReplayShard: duplicate table names in {names}")
        for cfg in tables:
            seq = next((c for c in cfg.columns if c.name == "seq"), None)
            if seq is None or seq.shape != () or seq.dtype != "int64":
                raise ValueError(f"ReplayShard: table {cfg.name!r} needs a scalar int64 'seq' column, got {seq}")
        self.index = index
        seeds = np.random.SeedSequence([seed, index]).spawn(len(tables))
        self._tables = {cfg.name: _TableState(cfg, np.random.default_rng(s)) for cfg, s in zip(tables, seeds)}

    def _state(self, table: str) -> _TableState:
        try:
            return self._tables[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}; this shard has tables {sorted(self._tables)}") from None

    def insert(self, table: str, chunk: Mapping[str, np.ndarray], writer_id: int, timeout: float = 0.0) -> dict:
        """Store a chunk unless it is a duplicate or a consumer's limiter holds it back for ``timeout`` seconds.

        The dedup key is ``(writer_id, chunk["seq"][0])``: a chunk with a key already stored is dropped.

        Returns:
            ``{"status": "ok" | "duplicate", "size": rows}``, or ``{"status": "not_now", "size": rows,
            "blocked_by": consumer}`` when nothing was stored because a consumer is behind its ratio.

        Raises:
            KeyError: unknown table.
            SchemaError: the chunk does not match the table, is empty, or its ``writer_id`` column differs from
                ``writer_id``; nothing is stored.
            ValueError: a consumer's limiter could never admit this many rows at once.
        """
        state = self._state(table)
        n = validate_chunk(chunk, state.table.config.columns)
        if n == 0:
            raise SchemaError(f"table {table!r}: chunk has no rows")
        writer_id = int(writer_id)
        written_by = chunk.get("writer_id")
        if written_by is not None and not (written_by == writer_id).all():
            others = np.unique(written_by[written_by != writer_id])[:5].tolist()
            raise SchemaError(
                f"table {table!r}: column 'writer_id' holds {others} but insert was called with writer_id={writer_id}"
            )
        for limiter in state.limiters.values():
            limiter.check_insert(n)
        key = int(chunk["seq"][0])

        def duplicate() -> bool:
            seen = state.seen.get(writer_id)
            return seen is not None and key in seen

        def ready() -> bool:
            return duplicate() or state.insert_blocker(n) is None

        with state.cond:
            if not ready() and timeout > 0:
                state.cond.wait_for(ready, timeout)
            if duplicate():
                state.duplicates += 1
                return {"status": "duplicate", "size": state.table.size}
            blocker = state.insert_blocker(n)
            if blocker is not None:
                state.inserts_waited += 1
                return {"status": "not_now", "size": state.table.size, "blocked_by": blocker}
            state.table.write(chunk, n)
            for limiter in state.limiters.values():
                limiter.on_insert(n)
            seen = state.seen.get(writer_id)
            if seen is None:
                seen = state.seen[writer_id] = _SeenChunks()
            seen.add(key)
            state.cond.notify_all()
            return {"status": "ok", "size": state.table.size}

    def sample(
        self, table: str, n: int, consumer: str | None = None, timeout: float = 0.0
    ) -> dict[str, np.ndarray] | None:
        """Draw ``n`` rows uniformly with replacement, or None if not admitted within ``timeout`` seconds.

        A consumer with a limiter waits for it (table at ``min_size``, not ahead of its ratio); any other
        consumer, or None, waits only for a non-empty table.

        Raises:
            KeyError: unknown table.
            ValueError: ``n < 1``, or the consumer's limiter could never admit ``n`` rows at once.
        """
        state = self._state(table)
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        limiter = state.limiters.get(consumer) if consumer is not None else None
        if limiter is not None:
            limiter.check_sample(n)

            def ready() -> bool:
                return limiter.can_sample(n)
        else:

            def ready() -> bool:
                return state.table.size > 0

        with state.cond:
            if not ready() and not (timeout > 0 and state.cond.wait_for(ready, timeout)):
                state.samples_waited += 1
                return None
            batch = state.table.gather(state.table.sample_indices(n, state.rng))
            state.sampled += n
            if limiter is not None:
                limiter.on_sample(n)
                state.cond.notify_all()
            elif consumer is not None:
                state.unlimited_sampled[consumer] = state.unlimited_sampled.get(consumer, 0) + n
            return batch

    def size(self, table: str) -> int:
        """Rows stored in ``table`` now."""
        state = self._state(table)
        with state.cond:
            return state.table.size

    def sizes(self) -> dict[str, int]:
        """Rows stored per table."""
        return {name: self.size(name) for name in self._tables}

    def stats(self) -> dict[str, dict]:
        """Per table: size, capacity, inserted, evicted, sampled, duplicates, inserts_waited (answers "not
        now"), samples_waited (answers None), and ``consumers``: per consumer ``sampled`` and
        ``samples_per_insert`` (None when unlimited), plus the limiter's lag, min_size and error_buffer."""
        out = {}
        for name, state in self._tables.items():
            with state.cond:
                out[name] = state.stats()
        return out
