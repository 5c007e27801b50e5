"""The control point of a running system: desired worker pool sizes in, status out.

On Ray it is the named actor ``control`` in the run's namespace ``dynaray-<run name>``, so any process that can
reach the cluster finds it: ``dynaray scale`` writes desired pool sizes, the driver polls them without blocking
and adds or retires workers, and posts a status snapshot after every report for ``dynaray status``.

Usage (the driver's side)::

    control = Control("my-run", {"rollout": 1, "imagination": 1}, scalable={"rollout", "imagination"})
    ...
    change = control.desired(newer_than=seen)      # (version, {"rollout": 3, ...}) or None: never waits
    control.post_status(row)                       # after every report

and from ``dynaray scale rollout=3``::

    control.request({"rollout": 3})                # -> the desired sizes now, or ScaleError
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

__all__ = ["CONTROL_ACTOR", "MAX_POOL_SIZE", "POOL_MINIMUM", "Control", "ScaleError", "namespace"]

CONTROL_ACTOR = "control"
"""Name of the control actor in the run's namespace."""
POOL_MINIMUM = {"rollout": 1, "imagination": 0}
"""Smallest size of each scalable pool (a run without rollout workers would wait forever)."""
MAX_POOL_SIZE = 4096
"""Largest size of a pool (writer ids hold 12 bits of worker index)."""


def namespace(run_name: str) -> str:
    """The Ray namespace of run ``run_name``."""
    return f"dynaray-{run_name}"


class ScaleError(ValueError):
    """A scale request that names an unknown pool or asks for a size the pool cannot have."""


class Control:
    """Desired pool sizes (versioned) and the newest status of one run.

    Args:
        run_name: the run's name, reported back to clients.
        pools: each pool's size at start.
        scalable: the pools ``request`` may change (imagination only where the run has a world model).
        worker_demands: pool -> the Ray resources one of its workers asks for (``dynaray scale`` compares what new
            workers need with what the cluster has free).
        metrics: a recorder factory (``system.metrics.ControlMetrics``) called with :meth:`stats`.
    """

    def __init__(self, run_name: str, pools: Mapping[str, int], scalable: set[str] | frozenset[str],
                 worker_demands: Mapping[str, Mapping[str, float]] | None = None,
                 metrics: Callable[[Callable[[], dict[str, Any]]], Any] | None = None):
        self.run_name = run_name
        self._desired = dict(pools)
        self._scalable = frozenset(scalable)
        self._worker_demands = {pool: dict(demand) for pool, demand in (worker_demands or {}).items()}
        self._version = 0
        self._status: dict[str, Any] = {}
        self._status_time: float | None = None
        self._requests = {"accepted": 0, "refused": 0}
        self._metrics = metrics(self.stats) if metrics is not None else None  # reads stats() on its own thread

    def request(self, sizes: Mapping[str, Any]) -> dict[str, int]:
        """Ask for new pool sizes, all or nothing; return the desired sizes after the change.

        Raises:
            ScaleError: an unknown or fixed pool, or a size that is not an int in the pool's range.
        """
        try:
            checked = self._checked(sizes)
        except ScaleError:
            self._requests["refused"] += 1
            raise
        self._requests["accepted"] += 1
        if checked:
            self._desired.update(checked)
            self._version += 1
        return dict(self._desired)

    def _checked(self, sizes: Mapping[str, Any]) -> dict[str, int]:
        checked = {}
        for pool, size in sizes.items():
            if pool not in POOL_MINIMUM:
                raise ScaleError(f"unknown pool {pool!r}: expected one of {sorted(POOL_MINIMUM)}")
            if pool not in self._scalable:
                raise ScaleError(f"pool {pool!r} cannot be scaled in run {self.run_name!r} (imagination is off)")
            if isinstance(size, bool) or not isinstance(size, int):
                raise ScaleError(f"{pool}={size!r}: expected an integer")
            low = POOL_MINIMUM[pool]
            if not low <= size <= MAX_POOL_SIZE:
                raise ScaleError(f"{pool}={size}: expected {low} <= {pool} <= {MAX_POOL_SIZE}")
            checked[pool] = size
        return checked

    def desired(self, newer_than: int = -1) -> tuple[int, dict[str, int]] | None:
        """``(version, sizes)`` when the desired sizes changed after version ``newer_than``, else None."""
        if self._version <= newer_than:
            return None
        return self._version, dict(self._desired)

    def post_status(self, status: Mapping[str, Any]) -> None:
        """Replace the status snapshot (the driver's newest report)."""
        self._status = dict(status)
        self._status_time = time.time()

    def status(self) -> dict[str, Any]:
        """The newest status snapshot, the desired pool sizes, and how old the snapshot is in seconds."""
        age = None if self._status_time is None else time.time() - self._status_time
        return {"run": self.run_name, "desired": dict(self._desired), "status": dict(self._status), "age_s": age,
                "worker_demands": dict(self._worker_demands)}

    def stats(self) -> dict[str, Any]:
        """Scale requests accepted and refused, the desired sizes, and the status's age (None: none posted yet)."""
        age = None if self._status_time is None else time.time() - self._status_time
        return {"requests": dict(self._requests), "desired": dict(self._desired), "status_age_s": age}
