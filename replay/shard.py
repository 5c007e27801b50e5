"""ReplayShard: several tables with dedup, per-consumer rate limiting and long-poll waits.

A shard is a plain object: in process it is wrapped in ``replay.handles.LocalHandle``; on Ray it runs as a
threaded actor (``max_concurrency`` > 1), so every method is thread-safe. Each table has one lock and one
condition variable; waiting inserts and samples sleep on the condition and are woken by the other side.

Waiting calls hold a thread of a threaded actor: give the actor more threads than the calls that can wait at
once (writers x in-flight inserts + sampling consumers), or samples queue behind waiting inserts until those
time out.

Persistence (opt-in, ``directory`` plus :attr:`TableConfig.persist`): every insert and priority update of a
persisted table is written to its write-ahead log before it is applied and acknowledged, and a shard built over an
existing directory recovers the newest snapshot plus the logs after it (:mod:`replay.persistence`; the tables are
opened by :func:`replay.recovery.open_table`, the one code path that rebuilds a table from disk). What is
recovered: rows in FIFO order, insert counter and row keys, dedup state, priorities, removals after
``max_times_sampled`` samples (logged before the sample that removed the rows returns; the counts of rows not yet
removed as of the last snapshot or clean close), the ``removed`` and ``dropped_non_finite`` counters. What
restarts: the ``sampled``, ``duplicates`` and wait counters start at 0, and each rate limiter restarts from the
recovered size as if its consumer were exactly on target (``inserted = size``,
``sampled = samples_per_insert * (size - min_size)``), so neither side is blocked by history from before the restart.

Cold tier (:attr:`TableConfig.disk_capacity` ``> 0``, needs ``directory``): rows evicted from memory go to Parquet
segment files under ``<directory>/shard-<index>/<table>/cold/`` (:mod:`replay.cold`) and stay sampleable. A full
segment is written after the inserting call released the table lock, so sampling is never held up by it.
A snapshot first writes (and fsyncs) every evicted row to a segment file, so that the logs it deletes hold no row
that exists nowhere else. Recovery replays the logs, whose evictions the cold tier skips for the keys it already
holds, then checks that the cold tier ends where memory begins (:meth:`replay.table.Table.reconcile_cold`); a
table that is not persisted starts with an empty cold tier.

Snapshots and cold segments are written by one thread of the shard's own (the inserting call waits for it), never
by the threads that serve calls: pyarrow's allocator keeps a heap per thread, and a shard actor serves its calls
from 16 threads, so a Parquet writer run on each in turn kept its buffers in each (the anonymous memory of a shard
rose about 3 MB with every snapshot in a soak, up to some 20 MB in process with 16 threads; docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from replay.metrics import ShardRecorder
from replay.persistence import FSYNC_MODES, RecoveryReport, SnapshotImage
from replay.rate_limiter import RateLimiter
from replay.recovery import OpenedTable, SeenChunks, open_table
from replay.schema import SchemaError
from replay.table import TableConfig

__all__ = ["ReplayShard"]

logger = logging.getLogger(__name__)


class _TableState:
    """One table plus everything the shard keeps about it, guarded by ``cond``."""

    def __init__(self, opened: OpenedTable, rng: np.random.Generator):
        self.table = opened.table
        self.store = opened.store
        self.snapshot_lock = threading.Lock()
        self.since_snapshot = opened.since_snapshot
        self.cond = threading.Condition(threading.Lock())
        self.limiters = {name: RateLimiter(cfg, name=name) for name, cfg in self.table.config.limiters}
        if self.store is not None:
            self.restart_limiters()
        self.unlimited_sampled: dict[str, int] = {}
        self.seen: dict[int, SeenChunks] = opened.seen
        self.rng = rng
        self.sampled = 0
        self.duplicates = 0
        self.inserts_waited = 0
        self.samples_waited = 0
        self.insert_wait_s = 0.0
        self.sample_wait_s = 0.0

    def restart_limiters(self) -> None:
        """After a recovery: every consumer exactly on target for the recovered size (see the module docstring)."""
        size = self.table.size
        for limiter in self.limiters.values():
            c = limiter.config
            limiter.inserted = size
            limiter.sampled = max(0, int(c.samples_per_insert * (size - c.min_size)))

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
            "insert_wait_s": self.insert_wait_s,
            "sample_wait_s": self.sample_wait_s,
            "consumers": consumers,
            **(self.store.recovery if self.store is not None else RecoveryReport()).stats(),
        }


class ReplayShard:
    """Holds the tables of one replay shard; thread-safe.

    Args:
        tables: one :class:`TableConfig` per table; each needs a scalar int64 ``seq`` column (the dedup key).
        seed: seeds the samplers, together with ``index`` (non-negative ints).
        index: this shard's number among its siblings, so that shards sample different streams.
        directory: where tables with ``persist=True`` keep their logs and snapshots
            (``<directory>/shard-<index>/<table>/``) and tables with ``disk_capacity > 0`` their cold tier (its
            ``cold/`` subdirectory); None (default) persists nothing. Existing files are recovered.
        fsync: ``"none"`` (records reach the OS before an insert is acknowledged: a killed process loses nothing),
            ``"every_insert"`` (also ``os.fsync`` before acknowledging: survives power loss) or ``"interval"``
            (``os.fsync`` at most ``fsync_interval_ms`` after a write: on the insert path, and from a timer after
            the last write of a burst).
        fsync_interval_ms: see ``fsync``.
        metrics: makes the shard's Prometheus recorder, ``metrics(index, self.stats)``, in the shard's process
            (``replay.metrics.ShardRecorder``, the default, records nothing).

    Raises:
        ValueError: a table has ``disk_capacity > 0`` but no ``directory`` was given.
        RuntimeError: another live shard uses the same table directory.
        SchemaError: files on disk do not match a table's configuration.
    """

    def __init__(
        self,
        tables: Sequence[TableConfig],
        seed: int = 0,
        index: int = 0,
        directory: str | None = None,
        fsync: str = "none",
        fsync_interval_ms: int = 100,
        metrics: Callable[[int, Callable[[], Mapping]], ShardRecorder] = ShardRecorder,
    ):
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
        if fsync not in FSYNC_MODES:
            raise ValueError(f"ReplayShard: fsync must be one of {FSYNC_MODES}, got {fsync!r}")
        cold_tables = [cfg.name for cfg in tables if cfg.disk_capacity > 0]
        if cold_tables and directory is None:
            raise ValueError(
                f"ReplayShard: tables {cold_tables} have disk_capacity > 0 and keep rows on disk, which needs a "
                f"directory; got directory=None"
            )
        self.index = index
        self.directory = directory
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"replay-shard-{index}-files")
        """The one thread that writes snapshots and cold segments (module docstring)."""
        seeds = np.random.SeedSequence([seed, index]).spawn(len(tables))
        self._tables: dict[str, _TableState] = {}
        try:
            for cfg, s in zip(tables, seeds):
                opened = open_table(directory, index, cfg, fsync=fsync, fsync_interval_ms=fsync_interval_ms)
                state = self._tables[cfg.name] = _TableState(opened, np.random.default_rng(s))
                if state.store is not None and state.store.needs_snapshot:
                    # damaged files: a snapshot of what was recovered, before anything is logged, lets them move aside
                    self._on_writer(self._snapshot, state)
        except BaseException:
            self.close()
            raise
        self._metrics = metrics(index, self.stats)  # Prometheus, read from stats() every few seconds

    def _state(self, table: str) -> _TableState:
        try:
            return self._tables[table]
        except KeyError:
            raise KeyError(f"unknown table {table!r}; this shard has tables {sorted(self._tables)}") from None

    def insert(self, table: str, chunk: Mapping[str, np.ndarray], writer_id: int, timeout: float = 0.0) -> dict:
        """Store a chunk unless it is a duplicate or a consumer's limiter holds it back for ``timeout`` seconds.

        The dedup key is ``(writer_id, chunk["seq"][0])``: a chunk with a key already stored is dropped. On a
        table with ``non_finite="drop"`` rows holding NaN or inf are left out and counted (``dropped_non_finite``
        in :meth:`stats`); a chunk left without rows is acknowledged with nothing stored, and its dedup key is
        still recorded.

        Returns:
            ``{"status": "ok" | "duplicate", "size": rows}`` (``"ok"`` adds ``"dropped_non_finite": rows`` when
            rows were dropped), or ``{"status": "not_now", "size": rows, "blocked_by": consumer}`` when nothing was
            stored because a consumer is behind its ratio.

        Raises:
            KeyError: unknown table.
            SchemaError: the chunk does not match the table, is empty, or its ``writer_id`` column differs from
                ``writer_id``, or (``non_finite="reject"``, the default) it holds NaN or inf in a float column;
                nothing is stored.
            ValueError: a consumer's limiter could never admit this many rows at once.
        """
        state = self._state(table)
        original = chunk
        chunk, n, dropped = state.table.prepare(chunk)
        if n + dropped == 0:
            raise SchemaError(f"table {table!r}: chunk has no rows")
        writer_id = int(writer_id)
        written_by = original.get("writer_id")
        if written_by is not None and not (written_by == writer_id).all():
            others = np.unique(written_by[written_by != writer_id])[:5].tolist()
            raise SchemaError(
                f"table {table!r}: column 'writer_id' holds {others} but insert was called with writer_id={writer_id}"
            )
        for limiter in state.limiters.values():
            limiter.check_insert(n)
        key = int(original["seq"][0])
        store = state.store

        def duplicate() -> bool:
            seen = state.seen.get(writer_id)
            return seen is not None and key in seen

        def ready() -> bool:
            return duplicate() or n == 0 or state.insert_blocker(n) is None

        with state.cond:
            if not ready() and timeout > 0:
                waited_from = time.perf_counter()
                state.cond.wait_for(ready, timeout)
                state.insert_wait_s += time.perf_counter() - waited_from
            if duplicate():
                state.duplicates += 1
                return {"status": "duplicate", "size": state.table.size}
            blocker = state.insert_blocker(n) if n else None
            if blocker is not None:
                state.inserts_waited += 1
                return {"status": "not_now", "size": state.table.size, "blocked_by": blocker}
            if store is not None:
                # logged (and flushed) before it is applied
                store.append_insert(chunk, writer_id, key, dropped, first_key=state.table.inserted)
                state.since_snapshot += n
            state.table.write(chunk, n, dropped)
            for limiter in state.limiters.values():
                limiter.on_insert(n)
            seen = state.seen.get(writer_id)
            if seen is None:
                seen = state.seen[writer_id] = SeenChunks()
            seen.add(key)
            state.cond.notify_all()
            result = {"status": "ok", "size": state.table.size}
            if dropped:
                result["dropped_non_finite"] = dropped
            every = state.table.config.snapshot_every_inserts
            due = store is not None and every > 0 and state.since_snapshot >= every
            spill = state.table.cold is not None and state.table.cold.has_pending
        if spill:
            self._on_writer(self._write_cold, state)
        if due:
            self._auto_snapshot(state)
        return result

    def _on_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the shard's file-writing thread; waits for it and returns or raises what it did."""
        return self._writer.submit(fn, *args).result()

    @staticmethod
    def _write_cold(state: _TableState) -> None:
        """Write the cold tier's full segments after an acknowledged insert, outside the table lock; skipped if
        another thread is at it, and a failure only logs (the rows stay sampleable in memory and the next insert
        tries again)."""
        try:
            state.table.cold.flush(guard=state.cond, blocking=False)
        except Exception:  # noqa: BLE001 - the insert succeeded; report and go on
            logger.exception("writing a cold-tier segment of replay table %r failed", state.table.name)

    def _auto_snapshot(self, state: _TableState) -> None:
        """Snapshot after an acknowledged insert; skipped if one is running, and a failure only logs (the data
        is safe in the logs, and the next insert tries again)."""
        if not state.snapshot_lock.acquire(blocking=False):
            return
        try:
            self._on_writer(self._snapshot, state)
        except Exception:  # noqa: BLE001 - the insert succeeded; report and go on
            logger.exception("automatic snapshot of replay table %r failed", state.table.name)
        finally:
            state.snapshot_lock.release()

    def snapshot(self, table: str) -> dict:
        """Write a Parquet snapshot of a persisted table, start a new log generation and delete the files older
        than the previous snapshot (see :meth:`replay.persistence.TableStore.prune`).

        Sampling and inserting go on while the file is written: the rows are copied and the logs rotated under
        the table lock, and inserts after that go to the new generation's log. Waits for a snapshot in progress.

        Returns:
            ``{"generation": g, "rows": rows, "inserted": counter, "path": file, "removed": [deleted files]}``.

        Raises:
            KeyError: unknown table.
            ValueError: the table is not persisted.
        """
        state = self._state(table)
        if state.store is None:
            raise ValueError(
                f"table {table!r} is not persisted (needs TableConfig.persist=True and a ReplayShard directory)"
            )
        with state.snapshot_lock:
            return self._on_writer(self._snapshot, state)

    @staticmethod
    def _snapshot(state: _TableState) -> dict:
        """The snapshot itself; call with ``state.snapshot_lock`` held."""
        with state.cond:
            if state.store.closed:
                raise RuntimeError(f"replay table {state.table.name!r}: persistence was closed")
            rows, inserted, priorities, max_priority = state.table.export()
            times_sampled = state.table.times_sampled()
            removed, dropped = state.table.removed, state.table.dropped_non_finite
            seen = {w: s.state() for w, s in state.seen.items()}
            generation = state.store.rotate()
            state.since_snapshot = 0
        if state.table.cold is not None:
            # every row evicted before the copy must be in a segment file before older logs are deleted
            state.table.cold.flush(guard=state.cond, include_staged=True)
        image = SnapshotImage(rows, inserted, priorities, max_priority, seen, times_sampled, removed, dropped)
        path = state.store.write_snapshot(generation, image)
        removed = state.store.prune(generation)
        n = len(next(iter(rows.values())))
        return {"generation": generation, "rows": n, "inserted": inserted, "path": path, "removed": removed}

    def checkpoint_marker(self) -> dict[str, dict]:
        """Where each table stands, for a whole-system checkpoint: per table ``inserted`` (its insert counter),
        ``persisted``, and ``limiters`` (per consumer the rate limiter's ``inserted`` and ``sampled`` rows). The
        logs of persisted tables are fsynced first, so every row acknowledged before this call survives a crash
        of the machine, whatever ``fsync`` mode the shard runs with."""
        out = {}
        for name, state in self._tables.items():
            with state.cond:
                if state.store is not None and not state.store.closed:
                    state.store.sync()
                out[name] = {"inserted": state.table.inserted, "persisted": state.store is not None,
                             "limiters": {consumer: {"inserted": limiter.inserted, "sampled": limiter.sampled}
                                          for consumer, limiter in state.limiters.items()}}
        return out

    def restore_accounting(self, marker: Mapping[str, Mapping]) -> None:
        """Continue each consumer's rate limiter from a checkpoint's :meth:`checkpoint_marker`: the rows it had
        sampled then, and the rows inserted then plus those the table holds past the marker (inserted after the
        checkpoint and recovered from the logs), so that the consumers owe exactly what their ratios say over the
        whole run. Tables and consumers the marker does not name keep their accounting."""
        for name, saved in marker.items():
            state = self._tables.get(name)
            if state is None:
                continue
            with state.cond:
                since = max(0, state.table.inserted - int(saved["inserted"]))
                for consumer, accounting in saved["limiters"].items():
                    limiter = state.limiters.get(consumer)
                    if limiter is not None:
                        limiter.inserted = int(accounting["inserted"]) + since
                        limiter.sampled = int(accounting["sampled"])
                state.cond.notify_all()

    def close(self) -> None:
        """Close the logs of persisted tables (fsynced unless ``fsync="none"``) and release their directories.

        A table with ``max_times_sampled`` first logs the sample counts of its live rows, so that a clean restart
        keeps them exactly. Inserts into a persisted table fail afterwards; sampling still works. Cold tiers stop
        writing segment files (rows evicted afterwards stay in memory). Idempotent.
        """
        for state in self._tables.values():
            if state.store is not None:
                with state.snapshot_lock, state.cond:
                    if not state.store.closed:
                        self._log_sample_counts(state)
                    state.store.close()
            if state.table.cold is not None:
                state.table.cold.close(guard=state.cond)

    @staticmethod
    def _log_sample_counts(state: _TableState) -> None:
        """Log the counts of live rows sampled at least once (``max_times_sampled``); a failure only logs, since
        the counts are a bound on future samples, not data. Call with ``state.cond`` held."""
        keys, counts = state.table.sampled_rows()
        if len(keys) == 0:
            return
        try:
            state.store.append_times_sampled(keys, counts, state.table.inserted)
        except Exception:  # noqa: BLE001 - closing goes on; the counts of the last snapshot remain
            logger.exception("logging the sample counts of replay table %r failed", state.table.name)

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

        if ready():
            return True
        if timeout > 0:
            waited_from = time.perf_counter()
            admitted = state.cond.wait_for(ready, timeout)
            state.sample_wait_s += time.perf_counter() - waited_from
            if admitted:
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

    @staticmethod
    def _batches_granted(state: _TableState, n: int, batches: int, limiter: RateLimiter | None) -> int:
        """The most whole batches of ``n`` rows, up to ``batches``, that the table and the limiter admit at once
        (at least 1: call after one batch was admitted). Call with ``state.cond`` held."""
        granted = batches
        while granted > 1 and not (
            state.table.can_sample(granted * n) and (limiter is None or limiter.can_sample(granted * n))
        ):
            granted -= 1
        return granted

    def sample(
        self,
        table: str,
        n: int,
        consumer: str | None = None,
        timeout: float = 0.0,
        with_keys: bool = False,
        batches: int = 1,
    ) -> dict[str, np.ndarray] | None:
        """Draw ``n`` rows with replacement by the table's sampler, or None if not admitted within ``timeout`` s.

        With ``batches`` > 1 the call draws up to ``batches`` whole batches of ``n`` rows at once (``k * n`` rows,
        ``k`` the most the limiter and the table admit now, at least 1; a call waits only for the first batch):
        what a learner's :class:`replay.client.SampleStream` asks for to pay one call per ``k`` batches. The
        limiter counts the ``k * n`` rows, exactly as ``k`` calls of ``n`` rows would; importance weights are
        normalised over all ``k * n`` rows (the stream renormalises each batch).

        A consumer with a limiter waits for it (table at ``min_size``, not ahead of its ratio); any other
        consumer, or None, waits only for a non-empty table. On a table with ``max_times_sampled`` every call
        also waits until the live rows have ``n`` samples left; rows that reach the limit are removed, and on a
        persisted table their removal is logged before the batch is returned. With ``with_keys`` the batch also
        has columns ``key`` (int64 row keys of this shard, for :meth:`update_priorities`) and ``weight`` (float32
        importance weights; all 1 for a uniform table).

        Raises:
            KeyError: unknown table.
            ValueError: ``n < 1`` or ``batches < 1``; the consumer's limiter could never admit ``n`` rows at once;
                or, with ``max_times_sampled``, ``n`` is above ``max_times_sampled * capacity`` (never left at once).
        """
        state = self._state(table)
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        batches = int(batches)
        if batches < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        config = state.table.config
        most = config.max_times_sampled * config.capacity
        if most and n > most:
            raise ValueError(
                f"table {table!r}: a sample of {n} rows can never be served: with max_times_sampled="
                f"{config.max_times_sampled} and capacity={config.capacity} at most {most} samples are left at once"
            )
        limiter = self._limiter(state, n, consumer)
        with state.cond:
            if not self._admit(state, n, limiter, timeout, lambda: state.table.can_sample(n)):
                return None
            rows = n * self._batches_granted(state, n, batches, limiter) if batches > 1 else n
            batch = state.table.sample(rows, state.rng, with_keys=with_keys)
            removed = state.table.last_removed
            if len(removed) and state.store is not None and not state.store.closed:
                state.store.append_times_sampled(removed, np.full(len(removed), -1), state.table.inserted)
            self._account(state, rows, consumer, limiter)
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
                columns, or has ``max_times_sampled`` or a cold tier; or the consumer's limiter could never admit
                ``n * length`` rows at once.
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

        Keys of rows already evicted (their slot now holds a newer row) or removed (``max_times_sampled``) are
        silently ignored; of a key given
        twice the last priority wins. On a uniform table nothing is updated. Returns the rows updated.

        Raises:
            KeyError: unknown table.
            ValueError: keys and priorities are not 1-D of one length, or a priority is negative or not finite;
                nothing is updated then.
        """
        state = self._state(table)
        with state.cond:
            if state.store is None or not state.table.prioritized:
                return state.table.update_priorities(keys, priorities)
            keys, priorities = state.table.check_priorities(keys, priorities)
            if len(keys):
                state.store.append_priorities(keys, priorities, state.table.inserted)
            return state.table.update_priorities(keys, priorities)

    def size(self, table: str) -> int:
        """Rows stored in ``table`` now (sampleable: in memory plus in its cold tier)."""
        state = self._state(table)
        with state.cond:
            return state.table.size

    def sizes(self) -> dict[str, int]:
        """Rows stored per table."""
        return {name: self.size(name) for name in self._tables}

    def stats(self) -> dict[str, dict]:
        """Per table: size, capacity, inserted, evicted, removed (rows removed after ``max_times_sampled``
        samples, part of evicted), dropped_non_finite, sampled, duplicates, inserts_waited (answers "not now"),
        samples_waited (answers None), insert_wait_s and sample_wait_s (seconds calls waited in the long poll),
        and ``consumers``: per consumer ``sampled`` and
        ``samples_per_insert`` (None when unlimited), plus the limiter's lag, min_size and error_buffer. A table
        with a cold tier also reports memory_rows, disk_rows, staged_rows, disk_files, disk_bytes, spilled and
        disk_capacity (see :meth:`replay.table.Table.stats`); its size is memory_rows + disk_rows + staged_rows.
        What the last recovery found (0 for a table not persisted): corrupt_files, corrupt_records,
        rows_lost_to_corruption and recovered_duplicates (:meth:`replay.persistence.RecoveryReport.stats`)."""
        out = {}
        for name, state in self._tables.items():
            with state.cond:
                out[name] = state.stats()
        return out
