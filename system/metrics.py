"""Prometheus metrics of every role, through ``ray.util.metrics``.

Names are ``dynaray_<role>_<quantity>``, tagged ``role``, ``index`` and ``run`` (the run's name, from its Ray
namespace, so that runs sharing a cluster stay apart), plus ``table``, ``consumer``, ``pool``, ``code`` or
``reason`` where a role has several series. Ray's exporter prefixes every name with ``ray_`` and adds
``_total`` to counters, so Prometheus sees e.g. ``ray_dynaray_rollout_env_steps_total`` and
``ray_dynaray_replay_size``; counters of seconds end in ``_seconds_total``. Every name is listed in
``docs/architecture.md`` (Metrics).

The recorders of the roles below ``system/`` implement the interfaces of their floor (``actors.metrics``,
``replay.metrics``); ``system/wiring.py`` hands each role its recorder's class as a factory (``metrics=``), and the
role makes its recorder in its own process (``metrics(index)`` in ``RolloutWorker.__init__``, ...), so the Ray metric
objects live where they are recorded and never travel; a recorder refuses to be pickled. When Ray
is not initialized in the process (in-process roles, unit tests), or ``DYNARAY_METRICS=0`` (``run.metrics=false``
sets it for every process of the run), every recorder is a no-op that costs one attribute check per call.

Ray drops a gauge that is not set again within about two report intervals, so a daemon thread per process re-sets
every gauge's last values every :data:`REFRESH_S` seconds and runs the collectors registered with
:meth:`Metrics.every_refresh` (the replay shard reads its counters there, off the insert and sample paths).
Counters are recorded per chunk, batch or call, never per env step.

Usage::

    metrics = Metrics("rollout", index=3)
    steps = metrics.counter("env_steps", "env steps taken")
    steps.inc(250)
    metrics.gauge("policy_version", "policy version acting").set(12)
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from actors.metrics import EvaluatorRecorder, GatewayRecorder, ImaginationRecorder, RolloutRecorder
from replay.metrics import ShardRecorder

if TYPE_CHECKING:
    from actors.evaluator import EvalResult
    from actors.imagination import ImaginationReport
    from actors.rollout import RolloutReport
    from system.loops import LearnerReport

logger = logging.getLogger(__name__)

ENV_VAR = "DYNARAY_METRICS"
"""Set to ``0`` in a process's environment to turn every recorder of that process into a no-op."""
REFRESH_S = 5.0
"""Seconds between re-sets of every gauge (Ray drops gauges not set within about two report intervals)."""
PREFIX = "dynaray"
"""Every name starts with it; Prometheus sees ``ray_dynaray_...`` (Ray's exporter puts ``ray_`` in front)."""
TAG_KEYS = ("role", "index", "run")
RESTARTS_SUFFIX = "_restarts"
"""A report row's ``<role>_restarts`` columns: restarts of each role's actors."""
RUN_NAMESPACE_PREFIX = "dynaray-"
"""A run's Ray namespace is ``dynaray-<run name>`` (``system.control.namespace``)."""

__all__ = [
    "ENV_VAR", "PREFIX", "REFRESH_S", "ControlMetrics", "Counter", "DriverMetrics", "EvaluatorMetrics", "Gauge",
    "GatewayMetrics", "Histogram", "ImaginationMetrics", "LearnerMetrics", "Metrics", "ReplayMetrics",
    "RolloutMetrics", "StoreMetrics", "metrics_enabled", "runtime_env_vars",
]


def metrics_enabled() -> bool:
    """Whether this process exports metrics: Ray is initialized here and ``DYNARAY_METRICS`` is not ``0``."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    ray = sys.modules.get("ray")  # never imported: certainly not initialized (and importing it is slow)
    return ray is not None and ray.is_initialized()


def _backend() -> Any:
    """The module whose ``Counter``, ``Gauge`` and ``Histogram`` record (``ray.util.metrics``)."""
    from ray.util import metrics as ray_metrics

    return ray_metrics


def _run_tag() -> str:
    """The run's name from this process's Ray namespace; '' when there is none."""
    try:
        import ray

        namespace = ray.get_runtime_context().namespace or ""
    except Exception:  # noqa: BLE001 - no runtime context: no run name
        return ""
    return namespace.removeprefix(RUN_NAMESPACE_PREFIX)


def runtime_env_vars(enabled: bool) -> dict[str, str]:
    """Environment variables that give every process of a Ray job the ``run.metrics`` setting."""
    return {} if enabled else {ENV_VAR: "0"}


def _tags(tag_keys: Sequence[str], tags: Mapping[str, Any]) -> dict[str, str]:
    if set(tags) != set(tag_keys):
        raise ValueError(f"metric tags {sorted(tags)}: expected exactly {sorted(tag_keys)}")
    return {k: str(v) for k, v in tags.items()}


class _Metric:
    """One named metric of a role; ``_ray`` is the ``ray.util.metrics`` object, None when disabled."""

    def __init__(self, ray_metric: Any, tag_keys: Sequence[str]):
        self._ray = ray_metric
        self._tag_keys = tuple(tag_keys)

    def __reduce__(self):
        raise TypeError("a dynaray metric is made in the process of its role and cannot be pickled; make the "
                        "recorder in the role's __init__")


class Counter(_Metric):
    """A monotonically increasing count (Prometheus: ``<name>_total``)."""

    def __init__(self, ray_metric: Any, tag_keys: Sequence[str]):
        super().__init__(ray_metric, tag_keys)
        self._totals: dict[tuple, float] = {}

    def inc(self, value: float = 1.0, **tags: Any) -> None:
        """Add ``value`` (ignored unless > 0: counters only go up)."""
        if self._ray is None or not value > 0:
            return
        self._ray.inc(float(value), tags=_tags(self._tag_keys, tags) or None)

    def set_total(self, total: float, **tags: Any) -> None:
        """Follow a cumulative count kept elsewhere (a stats dict): add what it grew since the last call. The
        first call only takes the baseline."""
        if self._ray is None:
            return
        key = tuple(sorted(tags.items()))
        last = self._totals.get(key)
        self._totals[key] = total
        if last is not None and total > last:
            self.inc(total - last, **tags)


class Gauge(_Metric):
    """A value that goes up and down; its last value per tag set is re-set every :data:`REFRESH_S` seconds."""

    def __init__(self, ray_metric: Any, tag_keys: Sequence[str]):
        super().__init__(ray_metric, tag_keys)
        self._last: dict[tuple, tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    def set(self, value: float | None, **tags: Any) -> None:
        """Set the value; None and NaN are ignored (nothing known yet)."""
        if self._ray is None or value is None:
            return
        value = float(value)
        if math.isnan(value):
            return
        tag_values = _tags(self._tag_keys, tags)
        with self._lock:
            self._last[tuple(sorted(tag_values.items()))] = (value, tag_values)
        self._ray.set(value, tags=tag_values or None)

    def refresh(self) -> None:
        """Set every tag set's last value again."""
        with self._lock:
            values = list(self._last.values())
        for value, tag_values in values:
            self._ray.set(value, tags=tag_values or None)


class Histogram(_Metric):
    """Observations counted in buckets (Prometheus: ``<name>_bucket``, ``_sum``, ``_count``)."""

    def observe(self, value: float, **tags: Any) -> None:
        if self._ray is None or not math.isfinite(value):
            return
        self._ray.observe(float(value), tags=_tags(self._tag_keys, tags) or None)


class Metrics:
    """The metrics of one role instance: names ``dynaray_<role>_<quantity>``, tags ``role``, ``index``, ``run``.

    Args:
        role: the role's name (``rollout``, ``replay``, ``policy``, ...): letters, digits and ``_``.
        index: the instance's number among its role's.
        enabled: None: :func:`metrics_enabled` in this process; False makes every metric a no-op.
    """

    def __init__(self, role: str, index: int | str = 0, enabled: bool | None = None):
        if not role or not role.replace("_", "").isalnum():
            raise ValueError(f"metrics role {role!r}: expected letters, digits and '_'")
        self.role, self.index = role, str(index)
        self.enabled = metrics_enabled() if enabled is None else enabled and metrics_enabled()
        self._gauges: list[Gauge] = []
        self._collectors: list[Callable[[], None]] = []
        self._made: dict[str, _Metric] = {}
        self.run = _run_tag() if self.enabled else ""
        if self.enabled:
            _Refresher.register(self)

    def __reduce__(self):
        raise TypeError(f"the metrics of role {self.role!r} are made in the role's process and cannot be pickled; "
                        f"make them in the role's __init__")

    def name(self, quantity: str) -> str:
        """``dynaray_<role>_<quantity>`` (Prometheus: ``ray_`` before it, ``_total`` after a counter's)."""
        return f"{PREFIX}_{self.role}_{quantity}"

    def _make(self, kind: type, quantity: str, description: str, tag_keys: Sequence[str], **options: Any) -> Any:
        name = self.name(quantity)
        if name in self._made:
            made = self._made[name]
            if type(made) is not kind or made._tag_keys != tuple(tag_keys):
                raise ValueError(f"metric {name!r} was already made as a {type(made).__name__} with tags "
                                 f"{made._tag_keys}")
            return made
        ray_metric = None
        if self.enabled:
            ray_metrics = _backend()
            cls = {Counter: ray_metrics.Counter, Gauge: ray_metrics.Gauge, Histogram: ray_metrics.Histogram}[kind]
            ray_metric = cls(name, description, tag_keys=TAG_KEYS + tuple(tag_keys), **options)
            ray_metric.set_default_tags({"role": self.role, "index": self.index, "run": self.run})
        made = self._made[name] = kind(ray_metric, tag_keys)
        if kind is Gauge and self.enabled:
            self._gauges.append(made)
        return made

    def counter(self, quantity: str, description: str, tag_keys: Sequence[str] = ()) -> Counter:
        """A counter (made once per name; asking again returns the same one)."""
        return self._make(Counter, quantity, description, tag_keys)

    def gauge(self, quantity: str, description: str, tag_keys: Sequence[str] = ()) -> Gauge:
        """A gauge, re-set every :data:`REFRESH_S` seconds while this object lives."""
        return self._make(Gauge, quantity, description, tag_keys)

    def histogram(self, quantity: str, description: str, boundaries: Sequence[float],
                  tag_keys: Sequence[str] = ()) -> Histogram:
        """A histogram with bucket upper ``boundaries`` (> 0, increasing)."""
        return self._make(Histogram, quantity, description, tag_keys, boundaries=list(boundaries))

    def every_refresh(self, collector: Callable[[], None]) -> None:
        """Call ``collector`` every :data:`REFRESH_S` seconds on the refresh thread (not when disabled)."""
        if self.enabled:
            self._collectors.append(collector)

    def refresh(self) -> None:
        """Run the collectors, then re-set every gauge (the refresh thread calls this)."""
        for collector in self._collectors:
            try:
                collector()
            except Exception:  # noqa: BLE001 - a failing collector must not stop the others or the role
                logger.exception("metrics collector of role %s %s failed", self.role, self.index)
        for gauge in self._gauges:
            gauge.refresh()


class _Refresher:
    """One daemon thread per process that refreshes every live :class:`Metrics`; it ends at the process's exit,
    before the interpreter and Ray's C++ objects are torn down under it."""

    _lock = threading.Lock()
    _live: "weakref.WeakSet[Metrics]" = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _stop = threading.Event()

    @classmethod
    def register(cls, metrics: Metrics) -> None:
        with cls._lock:
            cls._live.add(metrics)
            if cls._thread is None or not cls._thread.is_alive():
                if cls._thread is None:
                    atexit.register(cls.stop)
                cls._stop.clear()
                cls._thread = threading.Thread(target=cls._loop, name="dynaray-metrics", daemon=True)
                cls._thread.start()

    @classmethod
    def _loop(cls) -> None:
        while not cls._stop.wait(REFRESH_S):
            cls.refresh_all()

    @classmethod
    def stop(cls) -> None:
        """End the thread (a later :meth:`register` starts a new one)."""
        cls._stop.set()
        if (thread := cls._thread) is not None and thread is not threading.current_thread():
            thread.join()

    @classmethod
    def refresh_all(cls) -> None:
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():  # after ray.shutdown(): nothing to record into
            return
        with cls._lock:
            live = list(cls._live)
        for metrics in live:
            metrics.refresh()


# ---------------------------------------------------------------------------------------------------------------
# the recorders of each role: one object per role instance, one call per chunk / batch / call


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


class RolloutMetrics(RolloutRecorder):
    """``dynaray_rollout_*``: env steps, episodes, returns and lengths, env steps/s, env errors, policy version,
    env steps whose actions the planner chose."""

    def __init__(self, index: int, enabled: bool | None = None):
        super().__init__(index)
        m = self.metrics = Metrics("rollout", index, enabled)
        self.env_steps = m.counter("env_steps", "env steps taken")
        self.episodes = m.counter("episodes", "episodes finished")
        self.env_errors = m.counter("env_errors", "env failures (exception or NaN/inf) survived by new envs")
        self.planned_steps = m.counter("planned_steps", "env steps whose actions the planner chose")
        self.episode_return = m.gauge("episode_return", "mean return of the episodes finished in the last call")
        self.episode_length = m.gauge("episode_length", "mean length of the episodes finished in the last call")
        self.steps_per_s = m.gauge("env_steps_per_s", "env steps per second in the last call")
        self.policy_version = m.gauge("policy_version", "policy version acting (-1: random warm-up)")

    def record(self, report: RolloutReport) -> None:
        """After a ``run`` call: its report."""
        if not self.metrics.enabled:
            return
        self.env_steps.inc(report.env_steps)
        self.episodes.inc(len(report.episodes))
        self.env_errors.set_total(report.env_errors)
        self.planned_steps.inc(report.planned_steps)
        self.episode_return.set(_mean(r for r, _ in report.episodes))
        self.episode_length.set(_mean(n for _, n in report.episodes))
        if report.seconds > 0:
            self.steps_per_s.set(report.env_steps / report.seconds)
        self.policy_version.set(report.policy_version)


class ImaginationMetrics(ImaginationRecorder):
    """``dynaray_imagination_*``: transitions written, rollouts, stopped rows (by ``reason``), horizon, weights
    versions, model disagreement and reward penalty where the report has them."""

    def __init__(self, index: int, enabled: bool | None = None):
        super().__init__(index)
        m = self.metrics = Metrics("imagination", index, enabled)
        self.transitions = m.counter("transitions", "imagined transitions written to replay")
        self.rollouts = m.counter("rollouts", "model rollout batches")
        self.stopped = m.counter("stopped_rows", "rows stopped before the horizon", ("reason",))
        self.skipped = m.counter("skipped_starts", "start states skipped (no policy or model yet)")
        self.horizon = m.gauge("horizon", "rollout horizon H")
        self.per_s = m.gauge("transitions_per_s", "imagined transitions per second in the last call")
        self.policy_version = m.gauge("policy_version", "policy version acting")
        self.model_version = m.gauge("model_version", "world-model version used")
        self.disagreement = m.gauge("disagreement_mean", "mean elite disagreement over the rows written")
        self.penalty = m.gauge("penalty_mean", "mean reward penalty over the rows written")

    def record(self, report: ImaginationReport) -> None:
        """After a ``run`` call: its report."""
        if not self.metrics.enabled:
            return
        self.transitions.inc(report.transitions)
        self.rollouts.inc(report.rollouts)
        self.stopped.inc(report.terminated, reason="terminated")
        self.stopped.inc(report.stopped_nonfinite, reason="nonfinite")
        self.stopped.inc(report.stopped_uncertain, reason="uncertain")
        self.skipped.inc(report.skipped_starts)
        self.horizon.set(report.horizon)
        if report.seconds > 0:
            self.per_s.set(report.transitions / report.seconds)
        self.policy_version.set(report.policy_version)
        self.model_version.set(report.model_version)
        self.disagreement.set(report.disagreement_mean)
        self.penalty.set(report.penalty_mean)


class LearnerMetrics:
    """``dynaray_<policy|world_model>_*``: updates, updates/s, sample wait, published version, and every metric
    the learner reports (losses, gradient norms, ``val_nll``, ...) as a gauge of its own name."""

    def __init__(self, role: str, enabled: bool | None = None):
        m = self.metrics = Metrics(role, 0, enabled)
        self.role = role
        self.updates = m.counter("updates", "learner updates")
        self.per_s = m.gauge("updates_per_s", "updates per second in the last call")
        self.wait = m.gauge("sample_wait_fraction", "fraction of the last call spent waiting for batches")
        self.version = m.gauge("published_version", "newest weights version published")

    def record(self, report: LearnerReport) -> None:
        """After a ``run`` call: its report (updates, rates, published version, the learner's metric means)."""
        if not self.metrics.enabled:
            return
        self.updates.inc(report.updates)
        self.per_s.set(report.updates_per_s)
        self.wait.set(report.sample_wait_fraction)
        self.version.set(report.version)
        for quantity, value in report.metrics.items():
            self.metrics.gauge(quantity, f"{self.role} learner {quantity}, mean over the last call").set(value)


class ReplayMetrics(ShardRecorder):
    """``dynaray_replay_*`` per shard and ``table``: size, rows inserted / sampled / evicted, duplicates, "not now"
    answers, seconds waited for the rate limiters, and each consumer's limiter lag. Read from ``stats`` on the
    refresh thread, so the insert and sample paths pay nothing."""

    COUNTERS = {
        "inserted": ("inserted_rows", "rows inserted"),
        "sampled": ("sampled_rows", "rows sampled"),
        "evicted": ("evicted_rows", "rows evicted (FIFO) or removed after max_times_sampled"),
        "duplicates": ("duplicates", "chunks dropped as duplicates (retried inserts)"),
        "dropped_non_finite": ("dropped_non_finite_rows", "rows dropped for NaN/inf"),
        "inserts_waited": ("insert_refusals", "inserts answered 'not now' by a rate limiter"),
        "samples_waited": ("sample_refusals", "samples answered 'not now' (rate limiter or too few rows)"),
        "insert_wait_s": ("insert_wait_seconds", "seconds inserts waited for the rate limiters"),
        "sample_wait_s": ("sample_wait_seconds", "seconds samples waited for the rate limiters or rows"),
    }
    RECOVERY = {  # fixed when the shard recovered its table from disk: gauges, not counters from a baseline
        "corrupt_files": ("recovery_corrupt_files", "damaged log or snapshot files set aside at recovery"),
        "corrupt_records": ("recovery_corrupt_records", "damaged log records skipped at recovery"),
        "rows_lost_to_corruption": ("recovery_rows_lost", "acknowledged rows lost to damaged log records"),
        "recovered_duplicates": ("recovery_duplicates", "records logged twice, recovered once"),
    }

    def __init__(self, index: int, stats: Callable[[], Mapping[str, Mapping[str, Any]]],
                 enabled: bool | None = None):
        super().__init__(index, stats)
        m = self.metrics = Metrics("replay", index, enabled)
        self._stats = stats
        self.size = m.gauge("size", "rows stored", ("table",))
        self.capacity = m.gauge("capacity", "rows the table holds in memory", ("table",))
        self.lag = m.gauge("limiter_lag", "rows a consumer is behind its samples-per-insert target (negative: "
                           "ahead)", ("table", "consumer"))
        self.error_buffer = m.gauge("limiter_error_buffer", "how far a consumer may run ahead or behind",
                                    ("table", "consumer"))
        self.counters = {key: m.counter(q, d, ("table",)) for key, (q, d) in self.COUNTERS.items()}
        self.recovery = {key: m.gauge(q, d, ("table",)) for key, (q, d) in self.RECOVERY.items()}
        if m.enabled:
            self.collect()  # baselines: rows recovered from disk are not counted as inserted by this process
            m.every_refresh(self.collect)

    def collect(self) -> None:
        for table, stats in self._stats().items():
            self.size.set(stats["size"], table=table)
            self.capacity.set(stats["capacity"], table=table)
            for key, counter in self.counters.items():
                if key in stats:
                    counter.set_total(stats[key], table=table)
            for key, gauge in self.recovery.items():
                if key in stats:
                    gauge.set(stats[key], table=table)
            for consumer, limiter in stats.get("consumers", {}).items():
                if "lag" in limiter:
                    self.lag.set(limiter["lag"], table=table, consumer=consumer)
                    self.error_buffer.set(limiter.get("error_buffer"), table=table, consumer=consumer)


class GatewayMetrics(GatewayRecorder):
    """``dynaray_gateway_*``: HTTP requests by status ``code`` and ``token_id`` (never the token), episodes and rows
    stored, policy downloads."""

    COUNTED = {"episodes": "episodes stored", "rows": "rows stored", "policy_downloads": "policy downloads",
               "bytes_received": "bytes of upload bodies read"}

    def __init__(self, index: int, enabled: bool | None = None):
        super().__init__(index)
        m = self.metrics = Metrics("gateway", index, enabled)
        self.requests = m.counter("requests", "HTTP requests answered", ("code", "token_id"))
        self.counted = {name: m.counter(name, description) for name, description in self.COUNTED.items()}

    def answered(self, status: int, token_id: str = "-") -> None:
        self.requests.inc(1, code=status, token_id=token_id)

    def count(self, name: str, amount: int) -> None:
        counter = self.counted.get(name)
        if counter is not None:
            counter.inc(amount)


class EvaluatorMetrics(EvaluatorRecorder):
    """``dynaray_evaluator_*``: evaluations, episodes and env steps run, and the newest evaluation's mean return,
    policy version and seconds."""

    def __init__(self, index: int, enabled: bool | None = None):
        super().__init__(index)
        m = self.metrics = Metrics("evaluator", index, enabled)
        self.evaluations = m.counter("evaluations", "evaluations run")
        self.episodes = m.counter("episodes", "evaluation episodes run")
        self.env_steps = m.counter("env_steps", "env steps of evaluation episodes")
        self.return_mean = m.gauge("return_mean", "mean return of the newest evaluation")
        self.policy_version = m.gauge("policy_version", "policy version of the newest evaluation")
        self.seconds = m.gauge("seconds", "wall time of the newest evaluation")
        self.model_return_mean = m.gauge("model_return_mean", "return of the newest evaluation estimated in the "
                                                              "world model (eval.in_model)")
        self.model_untrusted = m.gauge("model_untrusted_fraction", "fraction of the newest in-model evaluation's "
                                                                   "rollouts stopped as untrusted")

    def record(self, result: EvalResult) -> None:
        """After an ``evaluate`` call: its result."""
        if not self.metrics.enabled:
            return
        self.evaluations.inc(1)
        self.episodes.inc(len(result.returns))
        self.env_steps.inc(sum(result.lengths))
        if result.returns:
            self.return_mean.set(result.return_mean)
        self.policy_version.set(result.version)
        self.seconds.set(result.seconds)
        if result.model is not None:
            self.model_return_mean.set(result.model.return_mean)
            self.model_untrusted.set(result.model.untrusted_fraction)


class StoreMetrics:
    """``dynaray_store_*``: publishes received and the version held per weights ``name``, ``latest`` calls answered.
    Read from the store's ``stats`` on the refresh thread (a poll costs the store nothing more)."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], enabled: bool | None = None):
        m = self.metrics = Metrics("store", 0, enabled)
        self._stats = stats
        self.publishes = m.counter("publishes", "weights published (republished ones included)", ("name",))
        self.polls = m.counter("polls", "latest-weights requests answered")
        self.version = m.gauge("version", "newest version held", ("name",))
        if m.enabled:
            self.collect()
            m.every_refresh(self.collect)

    def collect(self) -> None:
        stats = self._stats()
        for name, count in stats["publishes"].items():
            self.publishes.set_total(count, name=name)
        self.polls.set_total(stats["polls"])
        for name, version in stats["versions"].items():
            self.version.set(version, name=name)


class ControlMetrics:
    """``dynaray_control_*``: scale requests (``outcome``: accepted, refused), each pool's desired size, and the age
    of the newest status the driver posted. Read from the control actor's ``stats`` on the refresh thread."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], enabled: bool | None = None):
        m = self.metrics = Metrics("control", 0, enabled)
        self._stats = stats
        self.requests = m.counter("scale_requests", "scale requests", ("outcome",))
        self.desired = m.gauge("desired_workers", "desired pool size", ("pool",))
        self.status_age = m.gauge("status_age_seconds", "seconds since the driver last posted its status")
        if m.enabled:
            self.collect()
            m.every_refresh(self.collect)

    def collect(self) -> None:
        stats = self._stats()
        for outcome, count in stats["requests"].items():
            self.requests.set_total(count, outcome=outcome)
        for pool, size in stats["desired"].items():
            self.desired.set(size, pool=pool)
        self.status_age.set(stats["status_age_s"])


class DriverMetrics:
    """``dynaray_driver_*``: the run as the driver sees it: env steps, episodes, returns, staleness, workers per pool,
    env errors, restarts per role (``restarted``: rollout, replay, policy, store, ...), stalled actors (``actor``),
    the budget."""

    GAUGES = {
        "env_steps_per_s": ("env_steps_per_s", "env steps per second, all rollout workers (last ~10 s)"),
        "eval_return_mean": ("eval_return", "mean return of the newest evaluation"),
        "eval_env_steps": ("eval_env_steps", "env steps at which the newest evaluation's policy was taken"),
        "train_return_mean": ("train_return", "mean return of the last 20 training episodes"),
        "rollout_policy_staleness": ("policy_staleness", "newest policy version minus the mean version acting"),
        "policy_version": ("policy_version", "newest published policy version"),
    }

    def __init__(self, budget: int, roles: Iterable[str] = ("rollout", "imagination"), enabled: bool | None = None):
        m = self.metrics = Metrics("driver", 0, enabled)
        self.env_steps = m.counter("env_steps", "env steps collected by the run")
        self.episodes = m.counter("episodes", "training episodes finished")
        self.env_errors = m.counter("env_errors", "env failures on rollout workers")
        self.restarts = m.counter("restarts", "actor restarts after a dead process, per role", ("restarted",))
        self.stalled = m.gauge("stalled", "1 while an actor makes no progress for run.stall_timeout_s", ("actor",))
        self.workers = m.gauge("workers", "workers in the pool", ("pool",))
        self.gauges = {key: m.gauge(q, d) for key, (q, d) in self.GAUGES.items()}
        self.budget = m.gauge("budget_env_steps", "env-step budget of the run")
        self.budget.set(budget)
        self._stalled: set[str] = set()
        for counter in (self.env_steps, self.episodes, self.env_errors):
            counter.set_total(0)
        self._roles = set(roles)
        for role in self._roles:
            self.restarts.set_total(0, restarted=role)

    def record(self, row: Mapping[str, Any]) -> None:
        """After each report row (``Driver._row``): its ``<role>_restarts`` columns and ``stalled`` (names, comma
        separated) too."""
        if not self.metrics.enabled:
            return
        self.env_steps.set_total(row["env_steps"])
        self.episodes.set_total(row["episodes"])
        self.env_errors.set_total(row.get("rollout_env_errors", 0))
        for key, gauge in self.gauges.items():
            value = row.get(key)
            if isinstance(value, (int, float)):
                gauge.set(value)
        for key, value in row.items():
            if key.endswith(RESTARTS_SUFFIX) and isinstance(value, int):
                role = key[:-len(RESTARTS_SUFFIX)]
                if role not in self._roles:  # counted from 0: a role first reported with restarts has them all
                    self._roles.add(role)
                    self.restarts.set_total(0, restarted=role)
                self.restarts.set_total(value, restarted=role)
        stalled = {name for name in str(row.get("stalled") or "").split(", ") if name}
        for name in stalled | self._stalled:
            self.stalled.set(1 if name in stalled else 0, actor=name)
        self._stalled |= stalled
        for pool in ("rollout", "imagination"):
            if f"{pool}_workers" in row:
                self.workers.set(row[f"{pool}_workers"], pool=pool)
