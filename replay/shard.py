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
from typing import Callable, Mapping, Sequence

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

    @staticmethod
    def _limiter(state: _TableState, rows: int, consumer: str | None) -> RateLimiter | None:
        """The consumer's limiter (None when unlimited), after checking it could ever admit ``rows`` rows."""
        limiter = state.limiters.get(consumer) if consumer is not None else None
        if limiter is not None:
            limiter.check_sample(rows)
        return limiter

    @staticmethod
    def _admit(
        state: _TableState, rows: int, limiter: RateLimiter | None, timeout: float, available: Callable[[], bool]
    ) -> bool:
        """Wait up to ``timeout`` s until ``available()`` (the table can serve the sample) and the limiter, if
        any, admits ``rows``; count a refusal. Call with ``state.cond`` held."""

        def ready() -> bool:
            return available() and (limiter is None or limiter.can_sample(rows))

        if ready() or (timeout > 0 and state.cond.wait_for(ready, timeout)):
            return True
        state.samples_waited += 1
        return False

    @staticmethod
    def _account(state: _TableState, rows: int, consumer: str | None, limiter: RateLimiter | None) -> None:
        """Count ``rows`` sampled rows for the table and the consumer; call with ``state.cond`` held."""
        state.sampled += rows
        if limiter is not None:
            limiter.on_sample(rows)
            state.cond.notify_all()
        elif consumer is not None:
            state.unlimited_sampled[consumer] = state.unlimited_sampled.get(consumer, 0) + rows

    def sample(
        self, table: str, n: int, consumer: str | None = None, timeout: float = 0.0, with_keys: bool = False
    ) -> dict[str, np.ndarray] | None:
        """Draw ``n`` rows with replacement by the table's sampler, or None if not admitted within ``timeout`` s.

        A consumer with a limiter waits for it (table at ``min_size``, not ahead of its ratio); any other
        consumer, or None, waits only for a non-empty table. With ``with_keys`` the batch also has columns
        ``key`` (int64 row keys of this shard, for :meth:`update_priorities`) and ``weight`` (float32 importance
        weights; all 1 for a uniform table).

        Raises:
            KeyError: unknown table.
            ValueError: ``n < 1``, or the consumer's limiter could never admit ``n`` rows at once.
        """
        state = self._state(table)
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        limiter = self._limiter(state, n, consumer)
        with state.cond:
            if not self._admit(state, n, limiter, timeout, lambda: state.table.size > 0):
                return None
            batch = state.table.sample(n, state.rng, with_keys=with_keys)
            self._account(state, n, consumer, limiter)
            return batch

    def sample_sequences(
        self, table: str, n: int, length: int, consumer: str | None = None, timeout: float = 0.0
    ) -> dict[str, np.ndarray] | None:
        """Draw ``n`` sequences of ``length`` rows, columns shaped ``(n, length) + spec.shape``, or None.

        Each sequence is ``length`` rows inserted one after another into this shard that are consecutive steps
        of one episode (see :meth:`replay.table.Table.sample_sequences`); starts are uniform over the valid ones,
        with replacement. Rate limiting counts ``n * length`` rows. A call waits up to ``timeout`` seconds for
        the limiter and for at least one valid start, and answers None ("not now") if either is missing.

        Raises:
            KeyError: unknown table.
            ValueError: ``n < 1``; ``length`` not in [1, capacity]; the table has no ``episode_id``/``step``
                columns; or the consumer's limiter could never admit ``n * length`` rows at once.
        """
        state = self._state(table)
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        with state.cond:
            state.table.sequence_starts(length)
        rows = n * int(length)
        limiter = self._limiter(state, rows, consumer)
        with state.cond:
            if not self._admit(state, rows, limiter, timeout, lambda: state.table.sequence_starts(length) > 0):
                return None
            batch = state.table.sample_sequences(n, length, state.rng)
            self._account(state, rows, consumer, limiter)
            return batch

    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Set the priorities of rows by their keys (the ``key`` column of a ``with_keys`` sample of this shard).

        Keys of rows already evicted (their slot now holds a newer row) are silently ignored; of a key given
        twice the last priority wins. On a uniform table nothing is updated. Returns the rows updated.

        Raises:
            KeyError: unknown table.
            ValueError: keys and priorities are not 1-D of one length, or a priority is negative or not finite;
                nothing is updated then.
        """
        state = self._state(table)
        with state.cond:
            return state.table.update_priorities(keys, priorities)

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
