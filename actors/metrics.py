"""What the actor roles tell their Prometheus recorders, and recorders that record nothing.

A role takes a recorder factory (``metrics=``) and calls it once in its ``__init__``, so the recorder is made in the
role's own process (Ray metric objects never travel). These base classes are the interfaces and the defaults: every
method does nothing, so a role made without a factory (unit tests, in process) records nothing. The recorders that
export to Prometheus implement them in ``system/metrics.py``; ``system/wiring.py`` passes them in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.evaluator import EvalResult
    from actors.imagination import ImaginationReport
    from actors.rollout import RolloutReport

__all__ = ["EvaluatorRecorder", "GatewayRecorder", "ImaginationRecorder", "RolloutRecorder"]


class RolloutRecorder:
    """A rollout worker's recorder: ``RolloutRecorder(index)``, then one :meth:`record` per ``run`` call."""

    def __init__(self, index: int):
        self.index = index

    def record(self, report: RolloutReport) -> None:
        """After a ``run`` call: what it did."""


class ImaginationRecorder:
    """An imagination worker's recorder: ``ImaginationRecorder(index)``, then one :meth:`record` per ``run`` call."""

    def __init__(self, index: int):
        self.index = index

    def record(self, report: ImaginationReport) -> None:
        """After a ``run`` call: what it did."""


class GatewayRecorder:
    """The ingest gateway's recorder: ``GatewayRecorder(index)``, then one call per request answered and per count."""

    def __init__(self, index: int):
        self.index = index

    def answered(self, status: int, token_id: str = "-") -> None:
        """A request was answered with HTTP ``status``; ``token_id``: the id of its token (``-``: none valid)."""

    def count(self, name: str, amount: int) -> None:
        """Counter ``name`` of the gateway's stats (``episodes``, ``rows``, ...) grew by ``amount``."""


class EvaluatorRecorder:
    """An evaluator's recorder: ``EvaluatorRecorder(index)``, then one :meth:`record` per evaluation."""

    def __init__(self, index: int):
        self.index = index

    def record(self, result: EvalResult) -> None:
        """After an ``evaluate`` call: what it measured."""
