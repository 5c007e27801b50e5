"""ReplayClient: inserts spread over shards with bounded in-flight calls, samples split across shards.

Written once against ``replay.handles``: shards are ``LocalHandle``-wrapped :class:`ReplayShard` objects in
process or Ray actor handles. In process a shard call cannot wait (it would block the only thread), so shard
calls get ``timeout=0`` and the client retries with a short backoff; on Ray each call long-polls for
``config.long_poll_s`` and the client retries "not now" answers until its own deadline.

A client may be shared by threads (inserts and samples are guarded separately), but one per role is the norm.

Row keys across shards: a shard's row key (its table's insert counter when the row was written) is made unique
over the client's ``K`` shards as ``key = local_key * K + shard``, ``shard`` being the shard's position in the
client's shard list; :meth:`ReplayClient.update_priorities` decodes ``shard = key % K`` and
``local_key = key // K``. Keys are only meaningful to a client with the same shard list.

Shard restarts: a shard actor that dies is restarted by Ray (``max_restarts``) and recovers its persisted tables.
A call that fails because its shard died is retried, not raised: an insert goes to the same shard again with the
same chunk (the shard deduplicates by writer id and first ``seq``, so an insert that was logged before the crash
is stored once), a sample part moves on to the next shard, a priority update is sent again (updates are
idempotent). Only a shard that keeps failing for ``config.shard_restart_timeout_s`` raises :class:`ReplayTimeout`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from replay.config import ReplayConfig
from replay.table import KEY_COLUMN, WEIGHT_COLUMN, check_priority_update
from replay.handles import get, is_actor_failure, wait

__all__ = ["PendingSample", "ReplayClient", "ReplayTimeout", "SampleStream", "StreamedSample"]

SIZE_REFRESH_S = 0.5
"""How often a sampling client refreshes its view of shard sizes (asynchronously, between samples)."""

_BACKOFF_MIN_S = 0.001
_BACKOFF_MAX_S = 0.02
_DIAGNOSE_TIMEOUT_S = 5.0
_SHARD_DOWN_BACKOFF_S = 0.05
MAX_INFLIGHT_PRIORITY_UPDATES = 64
"""Priority-update calls a client keeps unacknowledged before :meth:`ReplayClient.update_priorities` waits."""


class ReplayTimeout(RuntimeError):
    """A replay insert, flush or sample did not complete before its deadline.

    The message names the table, the consumer, how long the client waited, and the likely cause.
    """


@dataclass(eq=False)
class _InflightInsert:
    shard: int
    table: str
    chunk: Mapping[str, np.ndarray]
    writer_id: int
    rows: int
    ref: Any
    blocked_by: str | None = None
    answered: bool = False


@dataclass(eq=False)
class _SamplePart:
    shard: int
    n: int
    ref: Any
    result: dict[str, np.ndarray] | None = None
    refused: int = 0


def _rows(chunk: Mapping[str, np.ndarray]) -> int:
    for column in chunk.values():
        return int(np.shape(column)[0])
    return 0


class _Backoff:
    """Sleeps between retry rounds when shard calls do not wait themselves (in process, or long_poll_s=0)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.delay = _BACKOFF_MIN_S

    def sleep(self, deadline: float) -> None:
        if self.enabled:
            time.sleep(max(0.0, min(self.delay, deadline - time.monotonic())))
            self.delay = min(2 * self.delay, _BACKOFF_MAX_S)

    def reset(self) -> None:
        self.delay = _BACKOFF_MIN_S


class ReplayClient:
    """Talks to ``K`` replay shards for one role.

    Args:
        shards: shard handles (``LocalHandle`` or Ray actor handles of :class:`ReplayShard`).
        config: timeouts, in-flight bound and long-poll time.
        local: True when the shards run in this process (shard calls then never wait).
        seed: seeds the rounding of sample splits.
    """

    def __init__(self, shards: Sequence[Any], config: ReplayConfig, local: bool, seed: int = 0):
        if not shards:
            raise ValueError("ReplayClient needs at least one shard handle, got none")
        self._shards = list(shards)
        self.config = config
        self.local = bool(local)
        self._call_timeout = 0.0 if self.local else float(config.long_poll_s)
        self._rng = np.random.default_rng(seed)
        self._inflight: list[_InflightInsert] = []
        self._next_shard: dict[int, int] = {}
        self._insert_lock = threading.Lock()
        self._sizes_lock = threading.Lock()
        self._sizes: dict[str, list[int | None]] = {}
        self._size_refresh: dict[str, list[Any]] = {}
        self._size_refreshed_at: dict[str, float] = {}
        self._priority_lock = threading.Lock()
        self._priority_updates: dict[Any, tuple[int, str, np.ndarray, np.ndarray]] = {}
        self._outage_lock = threading.Lock()
        self._down_since: dict[int, float] = {}
        self._streams: dict[tuple[str, int, str | None, bool], SampleStream] = {}
        self._streams_lock = threading.Lock()
        self.shard_failures = 0
        """Calls that failed because their shard's actor died (each was retried)."""

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    # ----------------------------------------------------------------------------------------------- inserts

    def insert(self, table: str, chunk: Mapping[str, np.ndarray], writer_id: int) -> None:
        """Submit a chunk without waiting for it to be stored.

        Shards are chosen round robin per writer, starting at ``writer_id % K``; strict rotation keeps the
        shards' insert streams equal, which is what per-shard rate limiters and size-proportional sampling
        rely on. When ``max_inflight_inserts`` calls are in flight this blocks until one is acknowledged ("not
        now" answers are resubmitted to the same shard with the same chunk, hence the same dedup key). Errors
        of earlier inserts (a chunk that does not match the table) are raised here or by :meth:`flush`.

        Raises:
            ReplayTimeout: no slot freed within ``config.insert_timeout_s``.
        """
        deadline = time.monotonic() + self.config.insert_timeout_s
        with self._insert_lock:
            self._drain(self.config.max_inflight_inserts - 1, deadline, self.config.insert_timeout_s)
            writer_id = int(writer_id)
            shard = self._next_shard.get(writer_id, writer_id % len(self._shards))
            self._next_shard[writer_id] = (shard + 1) % len(self._shards)
            pending = _InflightInsert(shard, table, chunk, writer_id, _rows(chunk), ref=None)
            pending.ref = self._submit_insert(pending)
            self._inflight.append(pending)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every in-flight insert is stored (or found duplicate), resubmitting "not now" answers.

        Raises:
            ReplayTimeout: inserts still unacknowledged after ``timeout`` (default ``config.insert_timeout_s``).
        """
        timeout = self.config.insert_timeout_s if timeout is None else float(timeout)
        with self._insert_lock:
            self._drain(0, time.monotonic() + timeout, timeout)

    def inflight(self) -> int:
        """Insert calls submitted and not yet acknowledged."""
        return len(self._inflight)

    def pending_rows(self) -> int:
        """Rows in insert calls not yet acknowledged."""
        return sum(p.rows for p in self._inflight)

    def _submit_insert(self, pending: _InflightInsert) -> Any:
        handle = self._shards[pending.shard]
        return handle.insert.remote(pending.table, pending.chunk, pending.writer_id, timeout=self._call_timeout)

    def _reap_inserts(self, wait_s: float) -> bool:
        """Process answered inserts, waiting up to ``wait_s`` for one; return whether any was resubmitted."""
        if not self._inflight:
            return False
        by_ref = {p.ref: p for p in self._inflight}
        refs = list(by_ref)
        ready, _ = wait(refs, num_returns=1 if wait_s > 0 else len(refs), timeout=wait_s)
        resubmitted = False
        for ref in ready:
            pending = by_ref[ref]
            try:
                ack = get(ref)
            except BaseException as exc:
                if is_actor_failure(exc):
                    self._retry_after_failure(pending.shard, exc, on_give_up=lambda: self._inflight.remove(pending))
                    pending.ref = self._submit_insert(pending)
                    resubmitted = True
                    continue
                self._inflight.remove(pending)
                raise
            self._shard_answered(pending.shard)
            pending.answered = True
            self._remember_size(pending.table, pending.shard, ack["size"])
            if ack["status"] == "not_now":
                pending.blocked_by = ack.get("blocked_by")
                pending.ref = self._submit_insert(pending)
                resubmitted = True
            else:
                self._inflight.remove(pending)
        return resubmitted

    def _drain(self, max_left: int, deadline: float, timeout: float) -> None:
        """Reap inserts until at most ``max_left`` are in flight; ReplayTimeout at ``deadline``."""
        backoff = _Backoff(self._call_timeout == 0)
        self._reap_inserts(0.0)
        while len(self._inflight) > max_left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplayTimeout(self._insert_timeout_message(timeout))
            wait_s = 0.0 if self.local else remaining
            before = len(self._inflight)
            resubmitted = self._reap_inserts(wait_s)
            if len(self._inflight) < before:
                backoff.reset()
            elif resubmitted or self.local:
                backoff.sleep(deadline)

    def _insert_timeout_message(self, waited: float) -> str:
        tables = sorted({p.table for p in self._inflight})
        blockers = sorted({p.blocked_by for p in self._inflight if p.blocked_by})
        shards = sorted({p.shard for p in self._inflight})
        head = (
            f"{len(self._inflight)} insert(s) ({self.pending_rows()} rows) into table(s) {tables} on shard(s) "
            f"{shards} not acknowledged after waiting {waited:.3g} s"
        )
        if blockers:
            return (
                f"{head}: rate limiter: consumer(s) {blockers} are behind their samples-per-insert ratio, so the "
                f"shards answer 'not now' (are those consumers sampling, and at the configured rate?)"
            )
        if any(not p.answered for p in self._inflight):
            return f"{head}: the shard(s) did not answer (overloaded, dead, or all their threads busy waiting?)"
        return head

    # ----------------------------------------------------------------------------------------------- samples

    def submit_sample(
        self,
        table: str,
        n: int,
        consumer: str | None = None,
        with_keys: bool = False,
        sequence_length: int | None = None,
    ) -> PendingSample:
        """Start sampling ``n`` rows (or ``n`` sequences), split over shards in proportion to their last known sizes.

        The split rounds the proportional quotas systematically (each shard gets the floor or the ceiling of
        its quota, and exactly its quota in expectation); shards known to be empty get no rows unless all are,
        then the split is even. When some shard size is not known yet this makes one blocking :meth:`sizes`
        call; later sizes are refreshed asynchronously every :data:`SIZE_REFRESH_S`.

        Args:
            with_keys: add columns ``key`` (int64, unique over shards, see the module docstring) and ``weight``
                (float32 importance weights, 1 on uniform tables), for :meth:`update_priorities`.
            sequence_length: sample ``n`` sequences of this many rows with
                :meth:`replay.shard.ReplayShard.sample_sequences` instead; columns are ``(n, length, ...)``, parts
                concatenated along axis 0. Not combinable with ``with_keys``.
        """
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        if sequence_length is not None:
            if isinstance(sequence_length, bool) or not isinstance(sequence_length, (int, np.integer)):
                raise ValueError(f"sequence_length must be an int or None, got {sequence_length!r}")
            if sequence_length < 1:
                raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
            if with_keys:
                raise ValueError("with_keys=True is not supported with sequence_length: sequences carry no keys")
            sequence_length = int(sequence_length)
        counts = self._split(n, self._known_sizes(table))
        parts = [(shard, int(count)) for shard, count in enumerate(counts) if count > 0]
        return PendingSample(self, table, n, consumer, parts, bool(with_keys), sequence_length)

    def sample(
        self,
        table: str,
        n: int,
        consumer: str | None = None,
        with_keys: bool = False,
        sequence_length: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Sample ``n`` rows or sequences (blocking): ``submit_sample(...).result()``."""
        return self.submit_sample(table, n, consumer, with_keys, sequence_length).result()

    def submit_batch(
        self, table: str, n: int, consumer: str | None = None, with_keys: bool = False
    ) -> PendingSample | StreamedSample:
        """Start getting one learner batch of ``n`` rows, as ``config.learner_sampling`` says: ``split`` is
        :meth:`submit_sample`; ``one_shard`` (the default) takes the batch from this client's
        :class:`SampleStream` for ``(table, n, consumer, with_keys)``, which draws whole batches from one shard
        chosen in proportion to its size, ``config.sample_batches_per_call`` of them per shard call, and keeps
        ``config.sample_calls_in_flight`` calls in flight. Either answer has ``done()`` and ``result()``."""
        if self.config.learner_sampling == "split":
            return self.submit_sample(table, n, consumer, with_keys)
        return self.stream(table, n, consumer, with_keys).submit()

    def stream(self, table: str, n: int, consumer: str | None = None, with_keys: bool = False) -> SampleStream:
        """This client's :class:`SampleStream` of batches of ``n`` rows of ``table`` for ``consumer`` (made on
        first use, with ``config.sample_batches_per_call`` and ``config.sample_calls_in_flight``)."""
        n = int(n)
        if n < 1:
            raise ValueError(f"sample size must be >= 1, got {n}")
        key = (table, n, consumer, bool(with_keys))
        with self._streams_lock:
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = SampleStream(
                    self, table, n, consumer, bool(with_keys), self.config.sample_batches_per_call,
                    self.config.sample_calls_in_flight,
                )
            return stream

    def pick_shard(self, table: str) -> int:
        """A shard drawn with probability proportional to its last known size of ``table`` (uniformly when all are
        known to be empty); sizes are known and refreshed as for :meth:`submit_sample`."""
        weights = np.cumsum(np.asarray(self._known_sizes(table), dtype=np.float64))
        if weights[-1] <= 0:
            return int(self._rng.integers(len(self._shards)))
        return int(np.searchsorted(weights, self._rng.random() * weights[-1], side="right"))

    # ------------------------------------------------------------------------------------------- priorities

    def update_priorities(self, table: str, keys: np.ndarray, priorities: np.ndarray) -> None:
        """Send new priorities for sampled rows to their shards without waiting for them to be applied.

        ``keys`` are the ``key`` column of a ``with_keys`` sample from this client; each goes to shard
        ``key % K`` as ``key // K``. Keys of rows evicted since are ignored by the shards. The calls are
        fire-and-forget: their refs are kept (at most :data:`MAX_INFLIGHT_PRIORITY_UPDATES`; past that this
        waits for the oldest) and reaped without blocking on every call, so an error of an earlier update (an
        unknown table, a dead shard) is raised by a later :meth:`update_priorities` or by
        :meth:`flush_priorities`.

        Raises:
            ValueError: keys and priorities are not 1-D of one length, a key is negative, or a priority is
                negative or not finite; nothing is sent then.
            ReplayTimeout: the oldest update was not acknowledged within ``config.insert_timeout_s``.
        """
        keys, priorities = check_priority_update(keys, priorities, f"table {table!r}", "nothing was sent")
        k = len(self._shards)
        shards = keys % k
        with self._priority_lock:
            self._reap_priorities(MAX_INFLIGHT_PRIORITY_UPDATES - 1)
            for shard in np.unique(shards).tolist():
                mine = shards == shard
                self._send_priorities(shard, table, keys[mine] // k, priorities[mine])

    def _send_priorities(self, shard: int, table: str, keys: np.ndarray, priorities: np.ndarray) -> None:
        ref = self._shards[shard].update_priorities.remote(table, keys, priorities)
        self._priority_updates[ref] = (shard, table, keys, priorities)

    def flush_priorities(self, timeout: float | None = None) -> None:
        """Block until every priority update sent is applied, raising the first error of any of them.

        Raises:
            ReplayTimeout: updates still unacknowledged after ``timeout`` (default ``config.insert_timeout_s``).
        """
        with self._priority_lock:
            self._reap_priorities(0, timeout)

    def _reap_priorities(self, max_left: int, timeout: float | None = None) -> None:
        """Drop acknowledged priority updates (raising an error one of them had), then wait for the oldest ones
        until at most ``max_left`` are in flight. Call with ``_priority_lock`` held."""
        if not self._priority_updates:
            return
        pending = list(self._priority_updates)
        ready, _ = wait(pending, num_returns=len(pending), timeout=0.0)
        self._collect_priorities(ready)
        timeout = self.config.insert_timeout_s if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        while len(self._priority_updates) > max_left:
            excess = len(self._priority_updates) - max_left
            oldest = list(self._priority_updates)[:excess]
            ready, _ = wait(oldest, num_returns=excess, timeout=max(0.0, deadline - time.monotonic()))
            self._collect_priorities(ready)
            if len(ready) < excess and time.monotonic() >= deadline:
                raise ReplayTimeout(
                    f"{len(self._priority_updates)} priority update(s) in flight, {excess - len(ready)} of the "
                    f"oldest {excess} not acknowledged after waiting {timeout:.3g} s (shards overloaded or dead?)"
                )

    def _collect_priorities(self, ready: list[Any]) -> None:
        """Forget the answered updates in ``ready`` one by one, raising the first error among them (the refs after
        it stay, so their errors surface on a later call); an update whose shard died is sent again."""
        for ref in ready:
            shard, table, keys, priorities = self._priority_updates.pop(ref)
            try:
                get(ref)
            except BaseException as exc:
                if not is_actor_failure(exc):
                    raise
                self._retry_after_failure(shard, exc)
                self._send_priorities(shard, table, keys, priorities)
            else:
                self._shard_answered(shard)

    # ------------------------------------------------------------------------------------------ shard outages

    def _retry_after_failure(self, shard: int, exc: BaseException, on_give_up=None) -> None:
        """Note that a call to ``shard`` failed because its actor died, pause briefly, and return so that the
        caller retries; raise ReplayTimeout once the shard has failed every call for ``shard_restart_timeout_s``
        (calling ``on_give_up`` first)."""
        now = time.monotonic()
        with self._outage_lock:
            since = self._down_since.setdefault(shard, now)
            self.shard_failures += 1
        if now - since > self.config.shard_restart_timeout_s:
            if on_give_up is not None:
                on_give_up()
            raise ReplayTimeout(
                f"replay shard {shard} failed every call for {now - since:.3g} s (its actor died and was not "
                f"restarted: max_restarts used up, or its node is gone?): {exc}"
            ) from exc
        time.sleep(_SHARD_DOWN_BACKOFF_S)

    def _shard_answered(self, shard: int) -> None:
        if self._down_since:
            with self._outage_lock:
                self._down_since.pop(shard, None)

    def _ask_each(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every shard and wait for all answers, retrying shards that died meanwhile."""
        refs = [getattr(h, method).remote(*args) for h in self._shards]
        answers = []
        for shard, ref in enumerate(refs):
            while True:
                try:
                    answers.append(get(ref))
                    break
                except BaseException as exc:
                    if not is_actor_failure(exc):
                        raise
                    self._retry_after_failure(shard, exc)
                    ref = getattr(self._shards[shard], method).remote(*args)
            self._shard_answered(shard)
        return answers

    # --------------------------------------------------------------------------------------------- shard state

    def sizes(self, table: str) -> list[int]:
        """Rows of ``table`` in every shard (blocking)."""
        sizes = [int(s) for s in self._ask_each("size", table)]
        with self._sizes_lock:
            self._sizes[table] = list(sizes)
            self._size_refreshed_at[table] = time.monotonic()
        return sizes

    def stats(self) -> list[dict]:
        """Every shard's :meth:`ReplayShard.stats` (blocking)."""
        return self._ask_each("stats")

    def _remember_size(self, table: str, shard: int, size: int) -> None:
        with self._sizes_lock:
            known = self._sizes.setdefault(table, [None] * len(self._shards))
            known[shard] = int(size)

    def _known_sizes(self, table: str) -> list[int]:
        with self._sizes_lock:
            refs = self._size_refresh.get(table)
            if refs is not None:
                ready, _ = wait(refs, num_returns=len(refs), timeout=0.0)
                if len(ready) == len(refs):
                    del self._size_refresh[table]
                    try:
                        self._sizes[table] = [int(s) for s in get(refs)]
                    except BaseException as exc:
                        if not is_actor_failure(exc):
                            raise
                    self._size_refreshed_at[table] = time.monotonic()
            known = self._sizes.get(table)
            if known is not None and None not in known:
                stale = time.monotonic() - self._size_refreshed_at.get(table, 0.0) > SIZE_REFRESH_S
                if stale and table not in self._size_refresh:
                    self._size_refresh[table] = [h.size.remote(table) for h in self._shards]
                return list(known)
        return self.sizes(table)

    def _split(self, n: int, sizes: Sequence[int]) -> np.ndarray:
        weights = np.asarray(sizes, dtype=np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(sizes))
        quotas = np.cumsum(weights) / weights.sum() * n
        quotas[-1] = n
        edges = np.floor(np.concatenate(([0.0], quotas)) + self._rng.random())
        return np.diff(edges).astype(np.int64)

    def _submit_sample(
        self,
        table: str,
        part: _SamplePart,
        consumer: str | None,
        with_keys: bool,
        sequence_length: int | None,
        batches: int = 1,
    ) -> Any:
        timeout = 0.0 if part.refused < len(self._shards) else self._call_timeout
        handle = self._shards[part.shard]
        if sequence_length is not None:
            return handle.sample_sequences.remote(table, part.n, sequence_length, consumer, timeout=timeout)
        if batches > 1:
            return handle.sample.remote(table, part.n, consumer, timeout=timeout, with_keys=with_keys, batches=batches)
        if with_keys:
            return handle.sample.remote(table, part.n, consumer, timeout=timeout, with_keys=True)
        return handle.sample.remote(table, part.n, consumer, timeout=timeout)

    def _sample_timeout_message(
        self,
        table: str,
        n: int,
        consumer: str | None,
        waited: float,
        waiting: list[_SamplePart],
        sequence_length: int | None = None,
    ) -> str:
        what = f"{n} rows" if sequence_length is None else f"{n} sequences of {sequence_length} rows"
        head = f"sample of {what} from table {table!r} for consumer {consumer!r} timed out after {waited:.3g} s"
        try:
            stats = get([self._shards[p.shard].stats.remote() for p in waiting], timeout=_DIAGNOSE_TIMEOUT_S)
        except Exception as exc:
            return f"{head}; shard(s) {[p.shard for p in waiting]} did not answer ({type(exc).__name__})"
        reasons = []
        for part, shard_stats in zip(waiting, stats):
            table_stats = shard_stats[table]
            limits = table_stats["consumers"].get(consumer) if consumer is not None else None
            where = f"shard {part.shard}"
            if limits is not None and limits.get("min_size") is not None:
                if limits["inserted"] < limits["min_size"]:
                    reasons.append(
                        f"{where}: only {limits['inserted']} of min_size {limits['min_size']} rows inserted "
                        f"(no inserts arriving, or arriving too slowly)"
                    )
                else:
                    reasons.append(
                        f"{where}: rate limiter: consumer {consumer!r} is ahead of its samples-per-insert ratio "
                        f"{limits['samples_per_insert']:g} by {-limits['lag']:g} sampled rows (error_buffer "
                        f"{limits['error_buffer']:g}); it waits for inserts (are writers running?)"
                    )
            elif table_stats["size"] == 0:
                reasons.append(f"{where}: table {table!r} is empty (no inserts arriving)")
            elif sequence_length is not None:
                reasons.append(
                    f"{where}: no valid start for a sequence of {sequence_length} rows among "
                    f"{table_stats['size']} stored (episodes shorter than that, or interleaved writers?)"
                )
            else:
                reasons.append(f"{where}: answered 'not now' with {table_stats['size']} rows stored")
        return f"{head}; " + "; ".join(reasons)


class PendingSample:
    """A sample in flight, one shard call per part.

    A part answered None (not admitted yet) is resubmitted to the next shard, so a batch is never held up by
    one shard (empty, or this consumer ahead of its ratio there) while another could serve it. A part first
    visits every shard without waiting and long-polls only after all of them refused it. This keeps
    per-shard limiters live and balanced: a writer whose in-flight inserts all wait for this consumer on
    shard A (the consumer is behind there) while this sample waited for inserts on shard B (it is ahead
    there) would deadlock; instead the part moves to A at once and is admitted, which also pulls the
    consumer's per-shard lags back together.

    With ``batches`` > 1 (a :class:`SampleStream`'s call: one part of ``n`` rows) the shard is asked for up to
    that many whole batches of ``n`` rows and the result holds ``k * n`` rows, ``k`` the batches it granted.
    """

    def __init__(
        self,
        client: ReplayClient,
        table: str,
        n: int,
        consumer: str | None,
        parts: Sequence[tuple[int, int]],
        with_keys: bool = False,
        sequence_length: int | None = None,
        batches: int = 1,
    ):
        self._client = client
        self._table = table
        self._n = n
        self._consumer = consumer
        self._with_keys = with_keys
        self._sequence_length = sequence_length
        self._batches = batches
        self._parts = [_SamplePart(shard, count, ref=None) for shard, count in parts]
        for part in self._parts:
            part.ref = self._submit(part)
        self._batch: dict[str, np.ndarray] | None = None

    def _submit(self, part: _SamplePart) -> Any:
        return self._client._submit_sample(
            self._table, part, self._consumer, self._with_keys, self._sequence_length, self._batches
        )

    def _poll(self, wait_s: float) -> bool:
        """Collect answered parts, waiting up to ``wait_s`` for one; return whether any was refused.

        On Ray a refused part is resubmitted at once (the new call long-polls on the shard). In process a call
        runs when submitted, so a refused part is asked again at the start of the next poll instead.
        """
        waiting = [p for p in self._parts if p.result is None]
        for part in waiting:
            if part.ref is None:
                part.ref = self._submit(part)
        by_ref = {p.ref: p for p in waiting}
        refs = list(by_ref)
        ready, _ = wait(refs, num_returns=1 if wait_s > 0 else len(refs), timeout=wait_s)
        refused = False
        for ref in ready:
            part = by_ref[ref]
            try:
                value = get(ref)
            except BaseException as exc:
                if not is_actor_failure(exc):
                    raise
                self._client._retry_after_failure(part.shard, exc)
                value = None
            else:
                self._client._shard_answered(part.shard)
            if value is None:
                part.refused += 1
                part.shard = (part.shard + 1) % self._client.num_shards
                if self._client.local:
                    part.ref = None
                else:
                    part.ref = self._submit(part)
                refused = True
            else:
                if self._with_keys:
                    value[KEY_COLUMN] = value[KEY_COLUMN] * self._client.num_shards + part.shard
                part.result = value
        return refused

    def _complete(self) -> bool:
        if self._batch is None and all(p.result is not None for p in self._parts):
            if len(self._parts) == 1:
                self._batch = self._parts[0].result
            else:
                names = self._parts[0].result.keys()
                self._batch = {k: np.concatenate([p.result[k] for p in self._parts]) for k in names}
            for part in self._parts:
                part.result = part.ref = None
        return self._batch is not None

    def done(self) -> bool:
        """Whether every part has its rows (non-blocking; resubmits parts that were refused)."""
        if self._batch is not None:
            return True
        self._poll(0.0)
        return self._complete()

    def result(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """Block until all parts arrived and return their rows concatenated in part order.

        Raises:
            ReplayTimeout: not complete after ``timeout`` seconds (default the client's ``sample_timeout_s``);
                the message says which shards held back and why.
        """
        if self._batch is not None:
            return self._batch
        client = self._client
        timeout = client.config.sample_timeout_s if timeout is None else float(timeout)
        start = time.monotonic()
        deadline = start + timeout
        backoff = _Backoff(client._call_timeout == 0)
        while True:
            refused = self._poll(0.0 if client.local else max(0.0, deadline - time.monotonic()))
            if self._complete():
                return self._batch
            if time.monotonic() >= deadline:
                waiting = [p for p in self._parts if p.result is None]
                raise ReplayTimeout(
                    client._sample_timeout_message(
                        self._table, self._n, self._consumer, time.monotonic() - start, waiting, self._sequence_length
                    )
                )
            if refused or client.local:
                backoff.sleep(deadline)


class SampleStream:
    """Whole batches of one table for one consumer, each from one shard, several per shard call, prefetched.

    Every shard call goes to one shard drawn with probability proportional to its last known size
    (:meth:`ReplayClient.pick_shard`) and asks it for ``batches_per_call`` batches of ``n`` rows
    (:meth:`replay.shard.ReplayShard.sample` with ``batches``); the shard draws every row independently by its
    sampler and gives as many whole batches as the consumer's rate limiter admits at once (at least one). A row of
    shard ``k`` (holding ``s_k`` of ``S`` rows) is then drawn with probability ``s_k / S * 1 / s_k = 1 / S``, as
    under uniform sampling over all shards; what differs from :meth:`ReplayClient.submit_sample` is that the rows
    of one call come from one shard (no batch mixes shards). A call refused by its shard ("not now": the consumer
    is ahead of its ratio there, or the shard is empty) moves to the next shard, as a :class:`PendingSample` part
    does.

    Rate limiting stays exact: each shard's limiter counts exactly the rows it gave (``k * n`` per call), and since
    inserts go round robin and calls go to shards in proportion to their sizes, each shard sees 1/K of both in
    expectation, as with splitting every batch; a consumer ahead on one shard is served by the others. Rows are
    counted when drawn, so a learner uses them up to ``calls_in_flight * batches_per_call`` batches later (a run's
    ratio counts them at the shard, as it counted the prefetched batches before).

    Columns arrive as the shard's numpy arrays (on Ray: read-only views of the object store's buffer, no copy);
    each batch is a slice of them (a view). With keys, the ``weight`` column is renormalised per batch (divided by
    the batch's largest weight, as a shard normalises one batch). Not thread-safe by itself: one consumer loop per
    stream (the client hands each ``(table, n, consumer, with_keys)`` its own).
    """

    def __init__(
        self,
        client: ReplayClient,
        table: str,
        n: int,
        consumer: str | None,
        with_keys: bool,
        batches_per_call: int,
        calls_in_flight: int,
    ):
        if batches_per_call < 1 or calls_in_flight < 1:
            raise ValueError(
                f"SampleStream needs batches_per_call >= 1 and calls_in_flight >= 1, got {batches_per_call} and "
                f"{calls_in_flight}"
            )
        self._client = client
        self.table, self.n, self.consumer, self.with_keys = table, int(n), consumer, bool(with_keys)
        self.batches_per_call, self.calls_in_flight = int(batches_per_call), int(calls_in_flight)
        self._calls: deque[PendingSample] = deque()
        self._ready: deque[dict[str, np.ndarray]] = deque()
        self.calls = 0
        """Shard calls made."""
        self.batches = 0
        """Batches received (granted by the shards)."""
        self.call_latencies: deque[float] = deque(maxlen=10_000)
        """Seconds from submitting each of the last 10,000 calls to its answer being collected."""
        self._submitted_at: dict[int, float] = {}

    def submit(self) -> StreamedSample:
        """A claim on the next batch (non-blocking; tops up the calls in flight)."""
        self._top_up()
        return StreamedSample(self)

    def ready(self) -> int:
        """Batches received and not yet taken."""
        self._collect()
        return len(self._ready)

    def take(self, block: bool = True, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        """The next batch: at once when one was received, else (``block``) waiting for the oldest call in flight
        (``timeout``: the client's ``sample_timeout_s`` by default), else None.

        Raises:
            ReplayTimeout: ``block`` and the oldest call not answered in time (the message says why).
        """
        if not self._ready:  # polling the calls costs a Ray call each: only when no batch is left
            self._collect()
        while not self._ready:
            self._top_up()
            if not block:
                return None
            self._receive(self._calls[0], timeout)
        batch = self._ready.popleft()
        self._top_up()
        return batch

    def _top_up(self) -> None:
        """Keep the batches received plus those asked for at more than ``calls_in_flight - 1`` calls' worth."""
        per_call = self.batches_per_call
        while len(self._ready) + per_call * len(self._calls) <= per_call * (self.calls_in_flight - 1):
            shard = self._client.pick_shard(self.table)
            call = PendingSample(self._client, self.table, self.n, self.consumer, [(shard, self.n)],
                                 self.with_keys, batches=per_call)
            self._submitted_at[id(call)] = time.perf_counter()
            self._calls.append(call)
            self.calls += 1

    def _collect(self) -> None:
        """Receive every call that has answered, in any order (non-blocking): a call waiting for a shard holds up
        no other."""
        for call in [c for c in self._calls if c.done()]:
            self._receive(call, None)

    def _receive(self, call: PendingSample, timeout: float | None) -> None:
        """Wait for ``call`` (one in flight) and split its rows into batches."""
        rows = call.result(timeout)
        self._calls.remove(call)
        self.call_latencies.append(time.perf_counter() - self._submitted_at.pop(id(call)))
        n = self.n
        granted = _rows(rows) // n
        for i in range(granted):
            batch = {name: column[i * n:(i + 1) * n] for name, column in rows.items()}
            if self.with_keys and granted > 1:
                weights = batch[WEIGHT_COLUMN]
                batch[WEIGHT_COLUMN] = weights / weights.max()
            self._ready.append(batch)
        self.batches += granted


class StreamedSample:
    """A claim on the next batch of a :class:`SampleStream`, with :class:`PendingSample`'s ``done()`` and
    ``result()``. Batches of a stream are interchangeable (independent draws), so a claim takes whichever batch is
    next when it is first found done or asked for its result."""

    __slots__ = ("_stream", "_batch")

    def __init__(self, stream: SampleStream):
        self._stream = stream
        self._batch: dict[str, np.ndarray] | None = None

    def done(self) -> bool:
        """Whether a batch is here (non-blocking; claims it)."""
        if self._batch is None:
            self._batch = self._stream.take(block=False)
        return self._batch is not None

    def result(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The batch, waiting for it if needed (see :meth:`SampleStream.take`)."""
        if self._batch is None:
            self._batch = self._stream.take(block=True, timeout=timeout)
        return self._batch
