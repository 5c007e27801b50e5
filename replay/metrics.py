"""What a replay shard gives its Prometheus recorder, and a recorder that records nothing.

A shard takes a recorder factory (``metrics=``) and calls it once at the end of its ``__init__`` with its index and
its ``stats`` method, so the recorder is made in the shard's own process (Ray metric objects never travel) and reads
the counters from ``stats`` off the insert and sample paths. :class:`ShardRecorder` is the interface and the default
(it records nothing: in process, unit tests); ``system.metrics.ReplayMetrics`` implements it and
``system/wiring.py`` passes it in.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["ShardRecorder"]


class ShardRecorder:
    """A shard's recorder: ``ShardRecorder(index, stats)``; ``stats()`` returns table name -> that table's stats."""

    def __init__(self, index: int, stats: Callable[[], Mapping[str, Mapping[str, Any]]]):
        self.index = index

    def collect(self) -> None:
        """Read the shard's stats now (a recorder that exports does this on its own every few seconds)."""
