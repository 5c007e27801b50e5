"""Learner loops: feed a learner from replay with a small prefetch deque, publish its weights.

The learners themselves (``learners/``) take a batch and return metrics; these loops add the replay and weights
edges so that the learners stay free of Ray and of replay.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from system.checkpoint import newest_checkpoint
from system.metrics import LearnerMetrics

MAX_NONFINITE_STREAK = 100
"""Consecutive skipped (non-finite) updates after which a learner stops with an error."""
PRIORITY_UPDATES_PER_SEND = 4
"""Learner updates whose new priorities a loop sends together, one call per shard: each call has a fixed cost on
the learner and on the shard, and a priority reaches its shard at most this many updates late."""


@dataclass(frozen=True)
class BatchPart:
    table: str
    rows: int
    consumer: str | None
    priority_eps: float | None = None
    """Prioritized part: the batch is sampled with keys and importance weights (column ``weight``), and after each
    update this part's rows get |TD error| + ``priority_eps`` (the learner's ``td_error``) as their new priorities.
    None: a plain sample."""


@dataclass(frozen=True)
class LearnerReport:
    """What one :meth:`LearnerLoop.run` call did."""

    updates: int
    """Learner updates made in the call."""
    total_updates: int
    """Updates the learner made in its life (restored ones included)."""
    updates_per_s: float
    """Updates per second of the call."""
    sample_wait_fraction: float
    """Fraction of the call spent waiting for batches."""
    version: int
    """Newest weights version published."""
    metrics: Mapping[str, float]
    """Mean of every metric the learner returned in the call (``critic_loss``, ``val_mse``, ...), by its name; a
    metric the learner did not return in the call (e.g. validation, not run every update) is absent."""


class LearnerLoop:
    """Runs ``learner.update`` on batches from replay, as fast as the rate limiter admits.

    Usage (the driver's loop, one call in flight per learner)::

        loop = LearnerLoop("policy", learner, replay, publisher, parts, publish_every=10,
                           publish_state=learner.policy_state)
        while running:
            report = loop.run(max_seconds=2.0)     # a LearnerReport: updates, rates, mean metrics, version
        state = loop.state_dict()                  # checkpoint
    """

    def __init__(
        self,
        name: str,
        learner: Any,
        replay: Any,
        publisher: Any,
        parts: Callable[[], list[BatchPart]],
        publish_every: int,
        publish_state: Callable[[], Any],
        prefetch: int = 2,
        local: bool = False,
        restore_from: str | None = None,
        init_from: str | None = None,
    ):
        self.name, self.learner = name, learner
        self._replay, self._publisher, self._parts = replay, publisher, parts
        self._publish_every, self._publish_state = publish_every, publish_state
        self._prefetch, self._local = prefetch, local
        self._pending: deque[tuple[list[BatchPart], list]] = deque()
        self._published_at = 0
        self._priorities: list[tuple[str, np.ndarray, np.ndarray]] = []  # (table, keys, priorities) not sent yet
        self._queued_updates = 0
        self._metrics = LearnerMetrics(name)  # Prometheus (a no-op without Ray)
        self.restored_version: int | None = None
        """The version of the checkpoint this learner was restored from at construction, or None."""
        if not self._restore(restore_from):  # the run's own checkpoint first, then the run it continues
            self._restore(init_from)

    def _restore(self, run_path: str | None) -> bool:
        """When ``run_path`` (a run directory) has a complete checkpoint with this learner's file: load the full
        learner state from it, number the next publication above the checkpoint's and the store's versions, and
        publish the restored weights at once (``dynaray train --resume``, Ray restarting this actor in place, or a
        run continuing another, ``run.init_from``). Whether it did."""
        found = newest_checkpoint(run_path)
        saved = found.load(f"{self.name}.pt") if found is not None else None
        if saved is None:
            return False
        self.learner.load_state_dict(saved["learner"])
        self._publisher.continue_after(saved["version"])
        self.restored_version = int(saved["version"])
        self.publish_now()
        return True

    def _submit(self) -> None:
        while len(self._pending) < self._prefetch:
            parts = [p for p in self._parts() if p.rows > 0]
            keys = any(p.priority_eps is not None for p in parts)  # every part, so that each row has a weight
            self._pending.append(
                (parts, [self._replay.submit_batch(p.table, p.rows, p.consumer, with_keys=keys) for p in parts])
            )

    def _next_batch(self) -> tuple[dict[str, np.ndarray], list[BatchPart]] | None:
        """The oldest prefetched batch (its parts' rows in part order) and its parts if all have arrived, else
        None (never blocks)."""
        self._submit()
        parts, head = self._pending[0]
        if not all(part.done() for part in head):
            return None
        self._pending.popleft()
        results = [part.result() for part in head]
        if len(results) == 1:
            return results[0], parts
        return {k: np.concatenate([r[k] for r in results]) for k in results[0]}, parts

    def _queue_priorities(self, batch: dict[str, np.ndarray], parts: list[BatchPart], td_error: np.ndarray) -> None:
        """Queue |TD error| + eps as the new priorities of each prioritized part's rows; send every
        ``PRIORITY_UPDATES_PER_SEND`` updates."""
        start = 0
        for part in parts:
            if part.priority_eps is not None:
                rows = slice(start, start + part.rows)
                self._priorities.append((part.table, batch["key"][rows], td_error[rows] + part.priority_eps))
            start += part.rows
        self._queued_updates += 1
        if self._queued_updates >= PRIORITY_UPDATES_PER_SEND:
            self._send_priorities()

    def _send_priorities(self) -> None:
        """Send the queued priorities, one ``update_priorities`` per table in update order (a key's latest priority
        wins), without waiting for them to be applied (the client bounds the calls in flight)."""
        for table in dict.fromkeys(table for table, _, _ in self._priorities):
            queued = [(keys, priorities) for name, keys, priorities in self._priorities if name == table]
            self._replay.update_priorities(table, np.concatenate([k for k, _ in queued]),
                                           np.concatenate([p for _, p in queued]))
        self._priorities.clear()
        self._queued_updates = 0

    def run(self, max_seconds: float, max_updates: int | None = None) -> LearnerReport:
        """Update until ``max_seconds`` pass (in process: until no batch is ready), or ``max_updates`` updates are
        made; report what was done."""
        start = time.perf_counter()
        waited, updates = 0.0, 0
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        while time.perf_counter() - start < max_seconds and (max_updates is None or updates < max_updates):
            ready = self._next_batch()
            if ready is None:
                if self._local:
                    break
                time.sleep(0.002)
                waited += 0.002
                continue
            batch, parts = ready
            metrics = self._update(batch, parts)
            td_error = metrics.pop("td_error", None)
            if td_error is not None:
                self._queue_priorities(batch, parts, td_error)
            updates += 1
            for key, value in metrics.items():
                sums[key] += float(value)
                counts[key] += 1
            self._check_finite()
            if self.learner.num_updates - self._published_at >= self._publish_every:
                self.publish_now()
        if self._priorities:
            self._send_priorities()
        self._publisher.check()  # publishes the newest weights again where a restarted store lost them
        elapsed = time.perf_counter() - start
        report = LearnerReport(
            updates=updates,
            total_updates=self.learner.num_updates,
            updates_per_s=updates / elapsed if elapsed > 0 else 0.0,
            sample_wait_fraction=waited / elapsed if elapsed > 0 else 0.0,
            version=self._publisher.version,
            metrics={k: v / counts[k] for k, v in sums.items()},
        )
        self._metrics.record(report)
        return report

    def _update(self, batch: dict[str, np.ndarray], parts: list[BatchPart]) -> dict[str, Any]:
        """One learner update on ``batch`` (sampled as ``parts``); a loop whose batches call for different updates
        (offline mode's behaviour cloning) chooses here."""
        return self.learner.update(batch)

    def _check_finite(self) -> None:
        streak = getattr(self.learner, "nonfinite_streak", 0)
        if streak >= MAX_NONFINITE_STREAK:
            raise RuntimeError(
                f"{self.name} learner: loss was non-finite for {streak} updates in a row "
                f"(expected finite losses; the last good weights are version {self._publisher.version})"
            )

    def publish_now(self) -> int:
        """Publish the current weights regardless of the schedule (e.g. before a checkpoint)."""
        self._published_at = self.learner.num_updates
        return self._publisher.publish(self._publish_state())

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this learner: ``learner`` (its full state), ``weights`` (its current weights,
        published now if updates since the last publication are not), ``version`` (theirs) and ``pause_s`` (how
        long this call kept the learner from updating)."""
        start = time.perf_counter()
        weights = self._publish_state()
        if self.learner.num_updates != self._published_at:
            self._published_at = self.learner.num_updates
            self._publisher.publish(weights)
        state = {"learner": self.learner.state_dict(), "weights": weights, "version": self._publisher.version}
        return {**state, "pause_s": time.perf_counter() - start}


def policy_batch_parts(
    replay: Any, batch_size: int, real_ratio: float, imagination: bool, priority_eps: float | None = None
) -> Callable[[], list[BatchPart]]:
    """Policy batches: ``real_ratio`` of the rows from ``real`` (rate-limited), the rest from ``imagined``.

    Until the ``imagined`` table holds a batch worth of rows (checked at most once a second), a batch is only its
    real part. ``priority_eps`` (prioritized replay) makes the ``real`` part prioritized (see ``BatchPart``).
    """
    n_real = batch_size if not imagination else max(1, round(batch_size * real_ratio))
    n_imagined = batch_size - n_real
    real_only = [BatchPart("real", n_real, "policy", priority_eps)]
    mixed = real_only + [BatchPart("imagined", n_imagined, None)]
    state = {"ready": n_imagined == 0, "checked": float("-inf")}

    def parts() -> list[BatchPart]:
        if not state["ready"] and time.monotonic() - state["checked"] > 1.0:
            state["checked"] = time.monotonic()
            state["ready"] = sum(replay.sizes("imagined")) >= n_imagined
        return mixed if state["ready"] and n_imagined else real_only

    return parts
