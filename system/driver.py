"""The driver: keeps one call in flight per role, schedules evaluations, stops, checkpoints, reports.

It never blocks on one role: every call is a ref in ``self._inflight`` and the loop waits on all of them at once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, TextIO

import numpy as np
import pyarrow.compute as pc

from actors.envs import EnvSpec
from actors.evaluator import EvalResult
from actors.gateway import GatewayStats
from actors.imagination import ImaginationReport
from actors.rollout import RolloutReport
from replay.handles import get, is_actor_failure, is_lost, wait
from system.checkpoint import KEPT, DriverLock, FoundCheckpoint, describe_meta, keep_checkpoint, write_checkpoint
from system.config import SystemConfig
from system.liveness import RestartLedger, RoleError, StallWatch, describe_error, role_of
from system.loops import LearnerReport
from system.metrics import DriverMetrics
from system.placement import locate
from system.run_dir import METRICS_SPILL_DIR, CheckpointError, RunDir, TableRows
from system.wiring import System

logger = logging.getLogger(__name__)

CONTROL_POLL_S = 0.5
"""How often the driver asks the control actor for new pool sizes."""
POOL_CALLS = {"rollout": ("rollout", "rollout_flush"), "imagination": ("imagination",)}
"""Call kinds that keep a worker of each pool busy (besides ``retire``, whose payload names the pool)."""
PROBE_EVERY_S = 2.0
"""Seconds between the driver's probes of every actor (``dynaray_incarnation``): restarts are counted by the
incarnation token each answers, also for actors the driver sends nothing else to (the store, shards, control)."""
RETRY_S = 0.5
"""Seconds between probes of an actor that is restarting, and before a lost evaluation is asked for again."""
EVAL_WEIGHTS_TRIES = 60
"""Times an evaluation asks a restarted (empty) store again for the policy before it is recorded without one."""


CONSUMERS = ("policy", "world_model", "imagination")
"""Roles that consume replay at a configured ratio (and so drain once the env-step budget is collected)."""
DRAIN_TIMEOUT_S = 120.0
"""Longest wait for the consumers to finish what their ratios owe at the end of the budget."""
CHECKPOINT_CALLS = ("checkpoint_learner", "checkpoint_marker")
"""Calls that gather a checkpoint; one that fails abandons that checkpoint (the previous one stays)."""


@dataclass
class _Call:
    kind: str
    index: int = 0
    payload: Any = None


@dataclass(frozen=True)
class _EvalAsk:
    """One evaluation asked for: the policy published at ``mark`` (env steps; policy updates offline), run for
    ``episodes`` real episodes (0: scored in the model only), ``tag`` saying why (offline: the phase). It travels
    in the calls' payloads, so two evaluations asked at the same mark stay two."""
    mark: int
    episodes: int
    tag: str = ""


@dataclass
class Summary:
    env_steps: int
    wall_time_s: float
    best_eval_return: float | None
    last_eval_return: float | None
    stopped_because: str
    policy_version: int
    run_dir: str


class Driver:
    """Runs a built system until the env-step budget or the target return.

    Usage::

        system = build_system(config, spec)
        summary = Driver(config, spec, system, RunDir(path).create(config)).run()
    """

    def __init__(self, config: SystemConfig, spec: EnvSpec, system: System, run_dir: RunDir,
                 on_report: Callable[[dict[str, Any]], None] | None = None,
                 placement: dict[str, dict[str, str]] | None = None, resume: FoundCheckpoint | None = None,
                 lock: DriverLock | None = None):
        self.config, self.spec, self.system, self.run_dir = config, spec, system, run_dir
        self.placement = placement or {}
        self._on_report = on_report or (lambda row: None)
        self._inflight: dict[Any, _Call] = {}
        self._start = time.monotonic()
        self.env_steps = 0
        self._steps_in_flight = 0
        self._episode_returns: deque[float] = deque(maxlen=20)
        self._episodes = 0
        self._latest: dict[str, dict[str, Any]] = {}
        """Role -> the newest values of its columns in the metrics table."""
        self._policy_version = 0
        """Newest policy version a policy learner report named."""
        self._rows = TableRows(run_dir.path / METRICS_SPILL_DIR)
        """The metrics table (all but its newest rows on disk in parts: a run of days keeps it in little memory)."""
        self._metrics_due = 0.0
        """When metrics.parquet may next be rewritten (:meth:`_write_metrics`)."""
        self.evals: list[dict[str, Any]] = []
        self._next_eval = config.eval.every_steps
        self._last_eval_mark = 0
        self._eval_round_robin = 0
        self._evals_asked = 0
        self._last_row_time = self._start
        self._step_times: deque[tuple[float, int]] = deque([(self._start, 0)])
        self._stop_reason: str | None = None
        self._step_budget = config.run.total_env_steps
        """Env steps to collect: run.total_env_steps, lowered to the steps handed out once run.max_wall_s passes."""
        self._first_report_at: float | None = None
        self._retiring: set[tuple[str, int]] = set()
        self._next_index = {pool: max(getattr(system, pool), default=-1) + 1 for pool in ("rollout", "imagination")}
        self._control_seen, self._control_pending, self._control_polled_at = 0, False, 0.0
        self._gateway_pending = False
        self._added_at: dict[tuple[str, int], float] = {}
        """(pool, index) -> when a worker added by scaling was made, until its first report."""
        self._env_errors: dict[int, int] = {}
        self._acting: dict[int, int] = {}
        # restarts, lost calls and stalls (see "lives of the actors" below)
        roles = tuple(dict.fromkeys(role_of(name) for name in system.by_name))
        self._ledger = RestartLedger(config.run.restart_limit, config.run.restart_window_s, roles)
        self._stalls = StallWatch(config.run.stall_timeout_s)
        self._waiting: dict[str, list[_Call]] = {}
        """Actor name -> calls lost with its dead process, sent again once it answers a probe."""
        self._delayed: list[tuple[float, _Call]] = []
        """(when, call): calls to send again later (probes of a restarting actor, evaluations)."""
        self._probing: set[str] = set()
        self._probed_at = 0.0
        self._dying: str | None = None
        """Set when a role keeps dying: the line the run stops with."""
        self._unplaced: set[tuple[str, int]] = set()
        """Workers added by scaling that Ray has not made yet (PENDING_CREATION): they get no work until made."""
        self._metrics = DriverMetrics(config.run.total_env_steps, roles, enabled=config.run.metrics)
        self._init_checkpoints(resume, lock)

    # submitting -----------------------------------------------------------------------------------------------
    def _submit(self, ref: Any, call: _Call) -> None:
        self._inflight[ref] = call

    def _submit_rollout(self, i: int) -> None:
        """Ask rollout worker ``i`` for more steps, or, once the budget is handed out, to flush what it wrote (its
        last inserts may wait for the learners' rate limiters, so the learners go on until every row is in)."""
        steps = self.config.rollout.call_steps
        if self._stop_reason or self._retire_if_asked("rollout", i):
            return
        if self.env_steps + self._steps_in_flight >= self._step_budget:
            self._submit(self.system.rollout[i].flush.remote(), _Call("rollout_flush", i))
            return
        handed_out = self.env_steps + self._steps_in_flight
        steps = min(steps, self._step_budget - handed_out)
        random_steps = min(steps, max(0, self.config.rollout.warmup_steps - handed_out))
        self._steps_in_flight += steps
        self._stalls.busy(f"rollout-{i}", time.monotonic())
        self._submit(self.system.rollout[i].run.remote(steps, random_steps), _Call("rollout", i, steps))

    def _submit_learner(self, kind: str, max_updates: int | None = None) -> None:
        handle = getattr(self.system, kind)
        self._stalls.busy(self.system.name_of(handle), time.monotonic())
        self._submit(handle.run.remote(self.config.run.report_interval_s, max_updates), _Call(kind))

    def _submit_imagination(self, i: int) -> None:
        if self._retire_if_asked("imagination", i):
            return
        self._stalls.busy(f"imagination-{i}", time.monotonic())
        ref = self.system.imagination[i].run.remote(self.env_steps, self.config.run.report_interval_s)
        self._submit(ref, _Call("imagination", i))

    def _request_eval(self, mark: int, final: bool = False, tag: str = "") -> None:
        """Take the policy published now (at ``mark`` env steps) and queue it for evaluation (``final``: the run's
        last; eval.in_model: real episodes only at every eval.real_every-th one and the last)."""
        self._last_eval_mark = mark
        ask = _EvalAsk(mark, self.config.eval.real_episodes(self._evals_asked, final), tag)
        self._evals_asked += 1
        self._submit(self.system.store.latest.remote("policy", -1), _Call("eval_weights", payload=ask))

    # handling -------------------------------------------------------------------------------------------------
    def _handle(self, ref: Any, call: _Call) -> None:
        try:
            result = get(ref)
        except Exception as exc:
            if call.kind in CHECKPOINT_CALLS:
                self._checkpoint_failed(call, exc)
                return
            if self._restarted(call, exc):
                return
            if call.kind == "gateway_stats":  # only reported: asked again at the next report, the run goes on
                self._gateway_pending = False
                logger.warning("ingest gateway did not answer for its stats: %s", describe_error(exc))
                return
            raise RoleError(f"{call.kind} {call.index} failed: {describe_error(exc)}") from None
        if self._first_report_at is None and call.kind != "alive":
            self._first_report_at = time.monotonic()
        getattr(self, f"_on_{call.kind}")(call, result)

    # scaling ------------------------------------------------------------------------------------------------
    def _poll_control(self) -> None:
        """Ask the control actor for new pool sizes, at most one call in flight and one per CONTROL_POLL_S."""
        now = time.monotonic()
        if self._control_pending or now - self._control_polled_at < CONTROL_POLL_S:
            return
        self._control_pending, self._control_polled_at = True, now
        self._submit(self.system.control.desired.remote(self._control_seen), _Call("control"))

    def _on_control(self, call: _Call, change: tuple[int, dict[str, int]] | None) -> None:
        self._control_pending = False
        if change is not None:
            self._control_seen, sizes = change
            for pool, size in sizes.items():
                self._resize(pool, size)

    def _resize(self, pool: str, size: int) -> None:
        """Add workers (new indices; they start from the newest weights) or retire the newest ones (they flush
        what they wrote, then end) until ``pool`` has ``size`` active workers; learners are not touched."""
        active = sorted(i for i in getattr(self.system, pool) if (pool, i) not in self._retiring)
        for i in active[size:]:
            if (pool, i) in self._unplaced:  # never made: nothing to flush
                self._end_worker(pool, i)
                continue
            self._retiring.add((pool, i))
            if not any(c.index == i for c in self._pool_calls(pool)):
                self._retire_if_asked(pool, i)
        for _ in range(size - len(active)):
            i = self._next_index[pool]
            self._next_index[pool] += 1
            handle = self.system.add_worker(pool, i)
            logger.info("scaling: %s worker %d added", pool, i)
            self._added_at[(pool, i)] = time.monotonic()
            self._stalls.busy(f"{pool}-{i}", time.monotonic())
            if self.system.local:
                self._start_worker(pool, i)
            else:  # work goes only to workers that exist: its first call once Ray has made it (it may never be)
                self._unplaced.add((pool, i))
                self._submit(locate(handle), _Call("placed", i, pool))

    def _start_worker(self, pool: str, i: int) -> None:
        (self._submit_rollout if pool == "rollout" else self._submit_imagination)(i)

    def _end_worker(self, pool: str, i: int) -> None:
        """End worker ``i`` of ``pool`` on purpose (retired, or removed before it was made)."""
        self._unplaced.discard((pool, i))
        self._stalls.idle(f"{pool}-{i}")
        self._ledger.forget(f"{pool}-{i}")
        self._waiting.pop(f"{pool}-{i}", None)
        self.system.remove_worker(pool, i)

    def _on_placed(self, call: _Call, where: dict[str, str]) -> None:
        """A worker added by scaling runs: its node goes into the placement (run dir, ``dynaray status``), and it
        gets its first call."""
        pool, i = call.payload, call.index
        if (pool, i) not in self._unplaced:  # removed meanwhile
            return
        self._unplaced.discard((pool, i))
        self.placement[f"{pool}-{i}"] = where
        self.run_dir.write_json("placement", self.placement)
        self._start_worker(pool, i)

    def _first_report(self, pool: str, i: int) -> None:
        """The first report of a worker added by scaling: say where it runs and how long it took to report."""
        added = self._added_at.pop((pool, i), None)
        if added is not None:
            where = self.placement.get(f"{pool}-{i}", {})
            print(f"dynaray: scaling: {pool}-{i} on node {where.get('ip', '?')} ({where.get('node_id', '?')[:8]}): "
                  f"first report {time.monotonic() - added:.1f} s after it was added", file=sys.stderr)

    def _calls(self) -> list[_Call]:
        """Calls in flight, and calls lost with a dead process that are sent again once it is back or later."""
        waiting = [c for calls in self._waiting.values() for c in calls]
        return [*self._inflight.values(), *waiting, *(c for _, c in self._delayed)]

    def _pool_calls(self, pool: str) -> list[_Call]:
        """Calls in flight (or to be sent again) to workers of ``pool``."""
        return [c for c in self._calls() if c.kind in POOL_CALLS[pool] or (c.kind == "retire" and c.payload == pool)]

    def _retire_if_asked(self, pool: str, i: int) -> bool:
        """If worker ``i`` of ``pool`` is to retire, have it flush what it wrote (then it is ended) and say so."""
        if (pool, i) not in self._retiring:
            return False
        self._submit(getattr(self.system, pool)[i].flush.remote(), _Call("retire", i, pool))
        return True

    def _on_retire(self, call: _Call, result: Any) -> None:
        self._retiring.discard((call.payload, call.index))
        self._end_worker(call.payload, call.index)
        logger.info("scaling: %s worker %d flushed and ended", call.payload, call.index)

    def _on_gateway_stats(self, call: _Call, stats: GatewayStats) -> None:
        self._gateway_pending = False
        row = {"gateway_episodes": stats.episodes, "gateway_rows": stats.rows,
               "gateway_policy_downloads": stats.policy_downloads}
        row.update({f"gateway_requests_{code}": n for code, n in stats.requests.items()})
        self._latest["gateway"] = row

    # lives of the actors ---------------------------------------------------------------------------------------
    def _actor_name(self, call: _Call) -> str | None:
        """The actor a call went to (None: not an actor call)."""
        handles = {"rollout": lambda: self.system.rollout.get(call.index),
                   "rollout_flush": lambda: self.system.rollout.get(call.index),
                   "retire": lambda: getattr(self.system, call.payload).get(call.index),
                   "imagination": lambda: self.system.imagination.get(call.index),
                   "policy": lambda: self.system.policy, "world_model": lambda: self.system.world_model,
                   "eval_weights": lambda: self.system.store, "eval": lambda: self.system.evaluators[call.index],
                   "control": lambda: self.system.control, "gateway_stats": lambda: self.system.gateway}
        if call.kind == "alive":
            return call.payload
        handle = handles[call.kind]() if call.kind in handles else None
        return self.system.name_of(handle) if handle is not None else None

    def _restarted(self, call: _Call, exc: BaseException) -> bool:
        """Whether ``call`` failed because its actor's process died and Ray restarts it: then the call waits until
        the actor answers a probe again (not sent into a restart), and is sent again; the restart is counted by the
        actor's new incarnation token. False for any other failure, and for an actor whose constructor failed."""
        now = time.monotonic()
        if call.kind == "placed":  # the worker's own calls and probes tell what happened to it
            return True
        if call.kind == "alive":
            return self._probe_failed(call.payload, exc, now)
        weights_lost = is_lost(exc) or is_lost(getattr(exc, "cause", None))
        if call.kind == "eval" and weights_lost and not is_actor_failure(exc):  # the learner that owned the
            self._delay(RETRY_S, _Call("eval_weights", payload=call.payload[1]))  # weights died: take them again
            return True
        if call.kind == "retire" and is_actor_failure(exc):  # died while retiring: nothing more to flush
            self._on_retire(call, None)
            return True
        name = self._actor_name(call)
        if name is None or not is_actor_failure(exc) or getattr(exc, "actor_init_failed", False):
            return False
        self._ledger.died(name, describe_error(exc), now)
        logger.warning("%s died (%s); Ray restarts it and the run goes on", name, describe_error(exc))
        if call.kind == "rollout":  # its unfinished chunk died with it: the steps go back to the budget
            self._steps_in_flight -= call.payload
        if call.kind == "control":  # polled again once it is back
            self._control_pending = False
        elif call.kind == "gateway_stats":  # asked again at the next report
            self._gateway_pending = False
        else:
            self._waiting.setdefault(name, []).append(call)
        self._probe(name)
        return True

    def _probe(self, name: str) -> None:
        """Ask actor ``name`` for its incarnation (one probe in flight per actor; Ray holds it while the actor
        restarts)."""
        if name in self._probing or name not in self.system.by_name:
            return
        self._probing.add(name)
        self._submit(self.system.by_name[name].dynaray_incarnation.remote(), _Call("alive", payload=name))

    def _probe_all(self) -> None:
        """Probe every actor, every :data:`PROBE_EVERY_S` (Ray only)."""
        now = time.monotonic()
        if self.system.local or now - self._probed_at < PROBE_EVERY_S:
            return
        self._probed_at = now
        for name in list(self.system.by_name):
            self._probe(name)

    def _on_alive(self, call: _Call, incarnation: tuple[str, int]) -> None:
        """Actor ``call.payload`` answered: count a restart if it is a new process, send what it lost again."""
        name, now = call.payload, time.monotonic()
        self._probing.discard(name)
        if name not in self.system.by_name:
            return
        if self._ledger.seen(name, incarnation[0], now):
            role = role_of(name)
            logger.warning("%s is back after a restart (%s restarts of %s so far)", name,
                           self._ledger.restarts()[role], role)
            if self._ledger.keeps_dying(role, now):
                self._stop_keeps_dying(role)
            self._actor_restarted(name)
        for lost in self._waiting.pop(name, []):
            self._resend(lost)

    def _probe_failed(self, name: str, exc: BaseException, now: float) -> bool:
        """A probe of ``name`` failed: probe again soon while Ray restarts it; stop the run (False) when Ray restarts
        it no more or a role the run cannot go on without is not back within ``placement.timeout_s``."""
        self._probing.discard(name)
        if name not in self.system.by_name:  # ended on purpose meanwhile
            return True
        if not is_actor_failure(exc) or getattr(exc, "actor_init_failed", False):
            return False
        role = role_of(name)
        self._ledger.died(name, describe_error(exc), now)
        if self._gone_for_good(name):
            raise RoleError(f"{name} died and Ray restarts it no more (its max_restarts is used up); its last error: "
                            f"{self._ledger.last_error(role)}")
        pool = role in POOL_CALLS
        if not pool and self._ledger.lost_for(name, now) > self.config.placement.timeout_s:
            raise RoleError(f"{name} is not back {self.config.placement.timeout_s:g} s (placement.timeout_s) after its "
                            f"process died; its last error: {self._ledger.last_error(role)}")
        self._delay(RETRY_S, _Call("alive", payload=name))
        return True

    @staticmethod
    def _gone_for_good(name: str) -> bool:
        """Whether Ray has given up on actor ``name`` (a dead actor's name is free again)."""
        import ray

        try:
            ray.get_actor(name)
        except ValueError:
            return True
        return False

    def _stop_keeps_dying(self, role: str) -> None:
        """``role`` restarted run.restart_limit times within run.restart_window_s: the loop checkpoints, then stops
        (:meth:`_end_if_dying`; not here, inside the handling of a call)."""
        run = self.config.run
        self._dying = (f"{role} keeps dying: {self._ledger.restarts()[role]} restarts, {run.restart_limit} within "
                       f"run.restart_window_s={run.restart_window_s:g} s (run.restart_limit); its last error: "
                       f"{self._ledger.last_error(role)}")

    def _end_if_dying(self) -> None:
        """A role keeps dying: write a checkpoint (the role may be one it needs: then the previous one stays) and
        stop the run with one line."""
        if self._dying is None:
            return
        try:
            self.checkpoint(deadline=time.monotonic() + 3 * self.config.run.report_interval_s + 60)
        except Exception as exc:
            logger.warning("no checkpoint before stopping: %s", describe_error(exc))
        raise RoleError(self._dying)

    def _actor_restarted(self, name: str) -> None:
        """Actor ``name`` is back as a new process (before the calls it lost are sent again): give it what it lost
        that its constructor does not restore."""
        if name == self.system.name_of(self.system.control):
            self._control_restarted()

    def _control_restarted(self) -> None:
        """A restarted control actor holds the pool sizes of the start: tell it the sizes now (a new version the
        next poll reads back, changing nothing)."""
        self._control_seen = 0
        sizes = {pool: len([i for i in getattr(self.system, pool) if (pool, i) not in self._retiring])
                 for pool in ("rollout", "imagination") if pool in self.system.worker_factories}
        self.system.control.request.remote(sizes)

    def _delay(self, seconds: float, call: _Call) -> None:
        self._delayed.append((time.monotonic() + seconds, call))

    def _send_delayed(self) -> None:
        now = time.monotonic()
        due = [call for when, call in self._delayed if when <= now]
        self._delayed = [(when, call) for when, call in self._delayed if when > now]
        for call in due:
            self._resend(call)

    def _resend(self, call: _Call) -> None:
        """Send a call again (lost with a dead process, or delayed), to the actor as it is now."""
        kind, i = call.kind, call.index
        if kind == "alive":
            self._probe(call.payload)
        elif kind in ("rollout", "rollout_flush") and i not in self.system.rollout:
            return
        elif kind == "rollout":
            self._submit_rollout(i)
        elif kind in ("rollout_flush", "retire"):
            pool = "rollout" if kind == "rollout_flush" else call.payload
            if i in getattr(self.system, pool):
                self._submit(getattr(self.system, pool)[i].flush.remote(), call)
        elif kind == "imagination":
            if i in self.system.imagination:
                self._submit_imagination(i)
        elif kind in ("policy", "world_model"):
            if not self._stop_reason:  # the restarted learner restores itself (from the run's checkpoint)
                self._submit_learner(kind)
        elif kind == "eval_weights":
            self._submit(self.system.store.latest.remote("policy", -1), call)
        elif kind == "eval":
            ref, ask, version = call.payload
            self._submit(self.system.evaluators[i].evaluate.remote(ref, ask.episodes, env_steps=ask.mark,
                                                                   version=version, in_model=self.config.eval.in_model),
                         call)

    def _track(self, name: str, work: int) -> None:
        """A report of actor ``name`` that did ``work`` (env steps, updates, rows): progress when > 0."""
        if work > 0:
            self._stalls.progress(name, time.monotonic())
        else:
            self._stalls.busy(name, time.monotonic())

    def _on_rollout(self, call: _Call, report: RolloutReport) -> None:
        self._track(f"rollout-{call.index}", report.env_steps)
        self._first_report("rollout", call.index)
        self._steps_in_flight -= call.payload
        self.env_steps += report.env_steps
        for episode_return, _ in report.episodes:
            self._episode_returns.append(episode_return)
        self._episodes += len(report.episodes)
        self._env_errors[call.index] = report.env_errors
        self._acting[call.index] = report.policy_version
        self._latest["rollout"] = {"policy_version_acting": report.policy_version,
                                   "rollout_env_errors": sum(self._env_errors.values())}
        while self.env_steps >= self._next_eval and self._next_eval < self.config.run.total_env_steps:
            self._request_eval(self._next_eval)
            self._next_eval += self.config.eval.every_steps
        self._submit_rollout(call.index)

    def _on_rollout_flush(self, call: _Call, result: None) -> None:
        self._stalls.idle(f"rollout-{call.index}")  # the budget is handed out: no more work for it

    def _keep_going(self, progress: int) -> bool:
        """Resubmit a consumer of replay unless stopping, or draining and its rate limiter admits nothing more."""
        if self._stop_reason:  # stopped: only while the rollout workers flush (their inserts may wait for ratios)
            return not self._rollouts_done()
        return not (self._draining() and progress == 0)

    def _on_policy(self, call: _Call, report: LearnerReport) -> None:
        self._policy_version = report.version
        self._on_learner("policy", report)

    def _on_world_model(self, call: _Call, report: LearnerReport) -> None:
        self._on_learner("world_model", report)

    def _on_learner(self, kind: str, report: LearnerReport) -> None:
        self._learner_columns(kind, report)
        name = self.system.name_of(getattr(self.system, kind))
        if self._keep_going(report.updates):
            self._track(name, report.updates)
            self._submit_learner(kind)
        else:
            self._stalls.idle(name)

    def _learner_columns(self, role: str, report: LearnerReport) -> None:
        """``<role>_<metric>`` per learner metric (a metric not in this report keeps its last value), then
        ``<role>_updates``, ``_total_updates``, ``_updates_per_s``, ``_sample_wait_fraction``, ``_version``."""
        columns = self._latest.setdefault(role, {})
        columns.update({f"{role}_{name}": value for name, value in report.metrics.items()})
        columns.update({f"{role}_updates": report.updates, f"{role}_total_updates": report.total_updates,
                        f"{role}_updates_per_s": report.updates_per_s,
                        f"{role}_sample_wait_fraction": report.sample_wait_fraction,
                        f"{role}_version": report.version})

    def _on_imagination(self, call: _Call, report: ImaginationReport) -> None:
        self._track(f"imagination-{call.index}", report.rollouts + report.skipped_starts)
        self._first_report("imagination", call.index)
        # counts summed over the run, then the newest values (columns imagination_<name>)
        total = self._latest.setdefault(
            "imagination", {"transitions": 0, "stopped_uncertain": 0, "stopped_nonfinite": 0, "penalized": 0})
        total["transitions"] += report.transitions
        total["stopped_uncertain"] += report.stopped_uncertain
        total["stopped_nonfinite"] += report.stopped_nonfinite
        total["penalized"] += report.penalized
        total.update(horizon=report.horizon, model_version=report.model_version, penalty_mean=report.penalty_mean,
                     disagreement_mean=report.disagreement_mean)
        if self._keep_going(report.rollouts + report.skipped_starts):
            self._submit_imagination(call.index)
        else:
            self._stalls.idle(f"imagination-{call.index}")

    def _on_eval_weights(self, call: _Call, latest: tuple[int, Any] | None) -> None:
        if latest is None and self._policy_version > 0 and call.index < EVAL_WEIGHTS_TRIES:  # a restarted store,
            self._delay(RETRY_S, _Call("eval_weights", call.index + 1, call.payload))  # empty until the learner
            return                                                                      # publishes again
        if latest is None:  # no policy published yet (or none came back): the random policy is what acts
            self._add_eval(self._eval_row(call.payload, -1, None))
            return
        version, weights = latest
        i = self._eval_round_robin % len(self.system.evaluators)
        self._eval_round_robin += 1
        eval_call = _Call("eval", i, (weights, call.payload, version))
        self._stalls.busy(self.system.name_of(self.system.evaluators[i]), time.monotonic())
        self._resend(eval_call)

    def _on_eval(self, call: _Call, result: EvalResult) -> None:
        self._stalls.idle(self.system.name_of(self.system.evaluators[call.index]))
        self._add_eval(self._eval_row(call.payload[1], result.version, result))
        target = self.config.run.target_return
        if target is not None and result.return_mean >= target and not self._stop_reason:
            self._stop_reason = f"target return {target:g} reached at {result.env_steps} env steps"

    def _add_eval(self, row: dict[str, Any]) -> None:
        """Keep an evaluation's row; evals.parquet is rewritten with it (a run killed later keeps its curve)."""
        self.evals.append(row)
        self.evals.sort(key=lambda e: e["env_steps"])
        self.run_dir.write_table("evals", self.evals)

    def _eval_row(self, ask: _EvalAsk, version: int, result: EvalResult | None) -> dict[str, Any]:
        return {
            "env_steps": ask.mark,
            "policy_version": version,
            "return_mean": result.return_mean if result else float("nan"),
            "return_std": result.return_std if result else float("nan"),
            "length_mean": float(np.mean(result.lengths)) if result and result.lengths else float("nan"),
            "wall_time_s": time.monotonic() - self._start,
            **self._model_columns(result),
        }

    def _model_columns(self, result: EvalResult | None) -> dict[str, Any]:
        """The estimate in the world model of an ``eval.in_model`` evaluation (NaN where there is none)."""
        if not self.config.eval.in_model:
            return {}
        model = result.model if result is not None else None
        if model is None:
            return {"model_return_mean": float("nan"), "model_return_low": float("nan"),
                    "model_return_high": float("nan"), "model_untrusted_fraction": float("nan"),
                    "model_version": -1}
        return {"model_return_mean": model.return_mean, "model_return_low": model.return_low,
                "model_return_high": model.return_high, "model_untrusted_fraction": model.untrusted_fraction,
                "model_version": result.model_version}

    # reporting ------------------------------------------------------------------------------------------------
    def _row(self) -> dict[str, Any]:
        now = time.monotonic()
        scored = [e for e in self.evals if not np.isnan(e["return_mean"])]
        last_eval = max(scored, key=lambda e: e["env_steps"]) if scored else None
        row: dict[str, Any] = {
            "env_steps": self.env_steps,
            "wall_time_s": now - self._start,
            "env_steps_per_s": self._rate(now),
            "episodes": self._episodes,
            "train_return_mean": float(np.mean(self._episode_returns)) if self._episode_returns else float("nan"),
            "eval_env_steps": last_eval["env_steps"] if last_eval else None,
            "eval_return_mean": last_eval["return_mean"] if last_eval else float("nan"),
        }
        for role in ("policy", "world_model"):
            row.update(self._latest.get(role, {}))
        for key, value in self._latest.get("imagination", {}).items():
            row[f"imagination_{key}"] = value
        row.update(self._latest.get("rollout", {}))
        row.update(self._latest.get("gateway", {}))
        row["rollout_policy_staleness"] = self._staleness(row.get("policy_version"))
        row.update({f"{role}_restarts": n for role, n in self._ledger.restarts().items()})
        row.update(self._latest.get("checkpoint", {}))
        row.update({f"{pool}_workers": len(getattr(self.system, pool)) - sum(p == pool for p, _ in self._unplaced)
                    for pool in ("rollout", "imagination")})
        row["stalled"] = ", ".join(self._stalls.stalled(now))
        self._last_row_time = now
        return row

    def _staleness(self, learner_version: int | None) -> float:
        """Mean over active rollout workers of (newest published policy version - the version they act with)."""
        acting = [v for i, v in self._acting.items() if i in self.system.rollout and v >= 0]
        if learner_version is None or not acting:
            return float("nan")
        return float(learner_version - np.mean(acting))

    def _status(self, row: dict[str, Any]) -> dict[str, Any]:
        """What ``dynaray status`` shows: the newest report row and each pool's workers."""
        restarts = self._ledger.restarts()
        pools = {
            pool: {"active": sorted(i for i in getattr(self.system, pool) if (pool, i) not in self._retiring),
                   "retiring": sorted(i for p, i in self._retiring if p == pool),
                   "unplaced": sorted(i for p, i in self._unplaced if p == pool),
                   "restarts": restarts.get(pool, 0)}
            for pool in ("rollout", "imagination")
        }
        counter, budget = run_progress(self.config)
        return {"row": row, "pools": pools, "budget": budget, "counter": asdict(counter), "placement": self.placement,
                "restarts": restarts, "stalled": [n for n in row["stalled"].split(", ") if n]}

    def _rate(self, now: float) -> float:
        """Env steps per second over the last ~10 s (reports arrive in bursts of steps_per_call)."""
        self._step_times.append((now, self.env_steps))
        while len(self._step_times) > 2 and now - self._step_times[0][0] > 10.0:
            self._step_times.popleft()
        (t0, s0), (t1, s1) = self._step_times[0], self._step_times[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def _maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_row_time < self.config.run.report_interval_s:
            return
        row = self._row()
        self._rows.append(row)
        self._metrics.record(row)
        self._on_report(row)
        self.system.control.post_status.remote(self._status(row))
        if self.system.gateway is not None and not self._gateway_pending:
            self._gateway_pending = True
            self._submit(self.system.gateway.stats.remote(), _Call("gateway_stats"))
        if len(self._rows) % 10 == 0 and now >= self._metrics_due:
            self._write_metrics()

    def _write_metrics(self) -> None:
        """Rewrite metrics.parquet whole, at most 1% of the driver's time: every ten reports while it is small, less
        often when a run of days has made it long."""
        start = time.monotonic()
        self.run_dir.write_table("metrics", self._rows)
        end = time.monotonic()
        self._metrics_due = end + 99 * (end - start)

    # the loop -------------------------------------------------------------------------------------------------
    def _start_roles(self) -> None:
        self._submit_learner("policy")
        if self.system.world_model is not None:
            self._submit_learner("world_model")
        for i in list(self.system.imagination):
            self._submit_imagination(i)
        for i in list(self.system.rollout):
            self._submit_rollout(i)

    def _rollouts_done(self) -> bool:
        return not any(self._pool_calls("rollout"))

    def _draining(self) -> bool:
        """The budget is collected: learners and imagination finish the updates their ratios still owe."""
        return self.env_steps >= self._step_budget and self._rollouts_done()

    def _consumers_busy(self) -> bool:
        return any(c.kind in CONSUMERS for c in self._calls())

    def _evals_done(self) -> bool:
        return not any(c.kind in ("eval", "eval_weights") for c in self._calls())

    def _pump(self, timeout: float) -> None:
        ready, _ = wait(list(self._inflight), num_returns=len(self._inflight), timeout=timeout)
        for ref in ready:
            self._handle(ref, self._inflight.pop(ref))
        self._send_delayed()
        self._probe_all()

    def _turn(self) -> None:
        """One turn of the loop: handle what is ready, then what is due (scaling, reports, checkpoints); a signal
        or a role that keeps dying sets the stop reason."""
        self._pump(timeout=0.1)
        self._end_if_dying()
        self._poll_control()
        self._check_startup()
        self._maybe_report()
        self._maybe_checkpoint()
        if self._interrupted and not self._stop_reason:
            self._stop_reason = self._interrupted

    def run(self) -> Summary:
        self._restore_replay_accounting()
        self._start_roles()
        budget = self.config.run.total_env_steps
        drain_started = 0.0
        while True:
            self._turn()
            if self._stop_reason:
                break
            self._check_wall_budget()
            if not self._draining():
                continue
            drain_started = drain_started or time.monotonic()
            if self._consumers_busy() and time.monotonic() - drain_started < DRAIN_TIMEOUT_S:
                continue
            if self._last_eval_mark < self.env_steps:
                self._request_eval(self.env_steps, final=True)
            elif self._evals_done():
                self._stop_reason = (f"env-step budget of {budget} reached" if self._step_budget == budget else
                                     f"wall-clock budget of {self.config.run.max_wall_s:g} s reached at "
                                     f"{self.env_steps} env steps")
        return self._finish()

    def _check_wall_budget(self) -> None:
        """Once run.max_wall_s has passed, hand out no more env steps: the run then drains and ends as at its
        env-step budget (the learners finish what their ratios owe, a last eval at the steps reached)."""
        limit = self.config.run.max_wall_s
        if limit is not None and time.monotonic() - self._start > limit:
            self._step_budget = min(self._step_budget, self.env_steps + self._steps_in_flight)

    def _check_startup(self) -> None:
        if self._first_report_at is None and time.monotonic() - self._began > self.config.run.startup_timeout_s:
            pending = sorted({c.kind for c in self._inflight.values()})
            raise RoleError(
                f"no role reported within run.startup_timeout_s={self.config.run.startup_timeout_s:g}s "
                f"(still starting: {', '.join(pending)}); check `ray status` for resources that cannot be placed"
            )

    def _finish(self) -> Summary:
        """Have every rollout worker flush what it wrote and let in-flight learner calls end (they return within one
        report interval), then checkpoint: every env step counted is then a row acknowledged by replay."""
        deadline = time.monotonic() + 3 * self.config.run.report_interval_s + 30
        flushing = {c.index for c in self._calls() if c.kind == "rollout_flush"}
        for i in self.system.rollout:  # stopped early: the rows of its last calls may still be in flight
            if i not in flushing and ("rollout", i) not in self._unplaced:
                self._submit(self.system.rollout[i].flush.remote(), _Call("rollout_flush", i))
        while (self._consumers_busy() or not self._evals_done() or not self._rollouts_done()) \
                and time.monotonic() < deadline:
            self._pump(timeout=0.2)  # (interrupted: evaluations asked for are finished too)
        self.checkpoint(deadline=time.monotonic() + 3 * self.config.run.report_interval_s + 60)
        self._maybe_report(force=True)
        self.run_dir.write_table("metrics", self._rows)
        self._rows.close()
        self.run_dir.write_table("evals", self.evals)  # also a resumed run's that made no evaluation of its own
        scored = [e["return_mean"] for e in self.evals if not np.isnan(e["return_mean"])]
        if scored or any(e["policy_version"] >= 0 for e in self.evals):
            self.run_dir.plot_learning_curve(self.evals, f"{self.config.env.id} ({self.run_dir.path.name})")
        return Summary(
            env_steps=self.env_steps,
            wall_time_s=time.monotonic() - self._start,
            best_eval_return=max(scored) if scored else None,
            last_eval_return=scored[-1] if scored else None,
            stopped_because=self._stop_reason or "stopped",
            policy_version=self._policy_version,
            run_dir=str(self.run_dir.path),
        )

    # checkpoints, resume, signals -----------------------------------------------------------------------------
    def _init_checkpoints(self, resume: FoundCheckpoint | None, lock: DriverLock | None) -> None:
        self._lock = lock
        self._began = self._start
        """When this driver started (``_start`` goes back by the wall time of a resumed run)."""
        self._interrupted: str | None = None
        self._checkpoint: dict[str, Any] | None = None
        """The checkpoint being gathered (learner states, then shard markers, arrive as calls), or None."""
        self._checkpoint_id = 0
        self._checkpoints = 0
        self._checkpointed_at = self._start
        self._writer: threading.Thread | None = None
        self._resume_marker: list[dict] | None = None
        self._resumed_at: int | None = None
        if resume is not None:
            self._restore_counters(resume)

    def interrupt(self, reason: str) -> None:
        """Stop at the next turn of the loop (a signal): checkpoint and write everything a finished run writes."""
        self._interrupted = reason

    def _restore_counters(self, resume: FoundCheckpoint) -> None:
        """Continue a run from its checkpoint: env steps, episodes, evals, eval marks, restarts, wall time; the
        metrics rows written up to the checkpoint (later ones describe a state that was lost)."""
        counters, replay = resume.document("driver.json"), resume.document("replay.json")
        self.env_steps = int(counters["env_steps"])
        self._episodes = int(counters["episodes"])
        self._episode_returns.extend(counters["episode_returns"])
        self.evals = list(counters["evals"])
        self._evals_asked = len(self.evals)
        self._next_eval, self._last_eval_mark = int(counters["next_eval"]), int(counters["last_eval_mark"])
        self._policy_version = int(counters["policy_version"])
        self._ledger.carry_over(counters["restarts"])
        self._latest = counters["latest"]
        self._checkpoints = int(counters["checkpoints"])
        wall = float(counters["wall_time_s"])
        self._start -= wall
        self._step_times = deque([(time.monotonic(), self.env_steps)])
        try:
            rows = self.run_dir.read_table("metrics")
        except CheckpointError:
            rows = None
        if rows is not None:
            self._rows.extend(rows.filter(pc.less_equal(rows["wall_time_s"], wall)))
        self._resume_marker = replay["shards"]
        self._resumed_at = self.env_steps

    def _restore_replay_accounting(self) -> None:
        """Resumed: each shard's rate limiters continue from the checkpoint's accounting (before any role runs)."""
        if self._resume_marker is not None:
            get([shard.restore_accounting.remote(marker)
                 for shard, marker in zip(self.system.shards, self._resume_marker)])

    def _maybe_checkpoint(self) -> None:
        """Once per turn of the loop: the lock's heartbeat, and a new checkpoint every ``run.checkpoint_every_s``
        (gathered by calls, written by a thread: the loop and the rollout workers never wait for it)."""
        if self._lock is not None:
            self._lock.heartbeat()
        if self._resumed_at is not None and self.env_steps > self._resumed_at:
            print(f"dynaray: resumed at {self._resumed_at} env steps: first new env steps "
                  f"{time.monotonic() - self._began:.1f} s after the driver started", file=sys.stderr)
            self._resumed_at = None
        every = self.config.run.checkpoint_every_s
        if every > 0 and time.monotonic() - self._checkpointed_at >= every:
            self._begin_checkpoint()

    def _writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def _begin_checkpoint(self) -> bool:
        """Ask every learner for its state (each pauses only to copy it); False if one is being taken already."""
        if self._checkpoint is not None or self._writing():
            return False
        self._checkpointed_at = time.monotonic()
        self._checkpoint_id += 1
        learners = {"policy": self.system.policy, "world_model": self.system.world_model}
        learners = {name: handle for name, handle in learners.items() if handle is not None}
        self._checkpoint = {"id": self._checkpoint_id, "began": time.monotonic(), "learners": {}, "markers": {},
                            "waiting": set(learners)}
        for name, handle in learners.items():
            self._submit(handle.checkpoint_state.remote(), _Call("checkpoint_learner", self._checkpoint_id, name))
        return True

    def _current(self, call: _Call) -> dict[str, Any] | None:
        """The checkpoint a call belongs to, if it is still being gathered."""
        checkpoint = self._checkpoint
        return checkpoint if checkpoint is not None and checkpoint["id"] == call.index else None

    def _on_checkpoint_learner(self, call: _Call, state: dict[str, Any]) -> None:
        """A learner's state; once all are in, the driver's counters and every shard's replay marker (asked for
        after the learners' states, so the markers cover every row the learners had sampled)."""
        checkpoint = self._current(call)
        if checkpoint is None:
            return
        checkpoint["learners"][call.payload] = state
        checkpoint["waiting"].discard(call.payload)
        if checkpoint["waiting"]:
            return
        checkpoint["counters"] = self._counters()
        checkpoint["waiting"] = set(range(len(self.system.shards)))
        for i, shard in enumerate(self.system.shards):
            self._submit(shard.checkpoint_marker.remote(), _Call("checkpoint_marker", call.index, i))

    def _on_checkpoint_marker(self, call: _Call, marker: dict[str, Any]) -> None:
        checkpoint = self._current(call)
        if checkpoint is None:
            return
        checkpoint["markers"][call.payload] = marker
        checkpoint["waiting"].discard(call.payload)
        if checkpoint["waiting"]:
            return
        self._checkpoint = None
        self._write_metrics()  # every row up to the checkpoint is on disk with it
        self._writer = threading.Thread(target=self._write, args=(checkpoint,), name="checkpoint", daemon=True)
        self._writer.start()

    def _checkpoint_failed(self, call: _Call, exc: BaseException) -> None:
        if self._current(call) is not None:
            self._checkpoint = None
            logger.warning("checkpoint abandoned (%s %s failed: %s); the previous one stays", call.kind,
                           call.payload, describe_error(exc))

    def _counters(self) -> dict[str, Any]:
        """The driver's part of a checkpoint (evaluations asked for but not done yet are asked for again)."""
        pending = [c.payload.mark if c.kind == "eval_weights" else c.payload[1].mark  # eval: (weights, ask, version)
                   for c in self._calls() if c.kind in ("eval_weights", "eval")]
        redo = min(pending, default=None)  # evaluations from this mark on are made again on resume
        evals = [dict(e) for e in self.evals if redo is None or e["env_steps"] < redo]
        return _plain({
            "env_steps": self.env_steps, "episodes": self._episodes, "episode_returns": list(self._episode_returns),
            "evals": evals, "next_eval": self._next_eval if redo is None else min(redo, self._next_eval),
            "last_eval_mark": max([e["env_steps"] for e in evals], default=0),
            "wall_time_s": time.monotonic() - self._start, "policy_version": self._policy_version,
            "restarts": self._ledger.restarts(), "latest": self._latest, "checkpoints": self._checkpoints + 1,
        })

    def _write(self, checkpoint: dict[str, Any]) -> None:
        """The writer thread: one checkpoint, atomically (system/checkpoint.py); its figures go to the metrics."""
        try:
            learners, counters = checkpoint["learners"], checkpoint["counters"]
            tensors = {f"{name}.pt": {k: state[k] for k in ("learner", "weights", "version")}
                       for name, state in learners.items()}
            tensors["actor.pt"] = learners["policy"]["weights"]
            markers = checkpoint["markers"]
            documents = {"driver.json": counters, "replay.json": {"shards": [markers[i] for i in range(len(markers))]}}
            meta = {**describe_meta(self.config, self.spec), "env_steps": counters["env_steps"],
                    "policy_version": learners["policy"]["version"], "wall_time_s": counters["wall_time_s"]}
            began_writing = time.monotonic()
            path = write_checkpoint(self.run_dir.path, tensors, documents, meta)
        except Exception:  # noqa: BLE001 - the run goes on; the previous checkpoint stays
            logger.exception("writing a checkpoint failed; the previous one stays")
            return
        self._checkpoints = counters["checkpoints"]
        self._latest["checkpoint"] = {
            "checkpoints": self._checkpoints,
            "checkpoint_env_steps": counters["env_steps"],
            "checkpoint_s": time.monotonic() - checkpoint["began"],
            "checkpoint_write_s": time.monotonic() - began_writing,
            "checkpoint_learner_pause_s": max(state["pause_s"] for state in learners.values()),
            "checkpoint_bytes": sum(entry.stat().st_size for entry in path.iterdir()),
        }
        self._keep_policy(learners["policy"], meta)

    def _keep_policy(self, policy: dict[str, Any], meta: dict[str, Any]) -> None:
        """``run.keep_checkpoints`` > 0: keep this checkpoint's policy in ``checkpoints/<env steps>/`` too (the oldest
        beyond that many are deleted; system/checkpoint.py). In the writer thread, after the checkpoint."""
        keep = self.config.run.keep_checkpoints
        if keep <= 0:
            return
        key, extra = self._kept_key(policy, meta)
        try:
            keep_checkpoint(self.run_dir.path, key, policy["weights"],
                            {**meta, "run": self.run_dir.path.name, **extra}, keep)
        except Exception:  # noqa: BLE001 - the run and its checkpoint go on without this kept one
            logger.exception("keeping a checkpoint in %s/ failed", KEPT)

    def _kept_key(self, policy: dict[str, Any], meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The key of a kept checkpoint (its directory name) and what its meta.json adds: the env steps here."""
        return int(meta["env_steps"]), {"kept_by": "env_steps"}

    def checkpoint(self, deadline: float) -> bool:
        """Take a checkpoint now and wait until it is written (or ``deadline``, a ``time.monotonic()``); whether
        it was. One being taken is finished first."""
        taken = self._checkpoints
        while time.monotonic() < deadline and not self._begin_checkpoint():
            self._wait_checkpoint(deadline)
        self._wait_checkpoint(deadline)
        if self._checkpoints == taken:
            logger.warning("the last checkpoint could not be taken; the previous one stays")
        return self._checkpoints > taken

    def _wait_checkpoint(self, deadline: float) -> None:
        while self._checkpoint is not None and time.monotonic() < deadline and self._inflight:
            self._pump(timeout=0.2)
        if self._writer is not None:
            self._writer.join(max(0.0, deadline - time.monotonic()))


def _plain(value: Any) -> Any:
    """JSON-able copy: numpy scalars become Python numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, deque)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value

@dataclass(frozen=True)
class ProgressCounter:
    """What a run's progress is counted in (the progress display, ``dynaray status``): a metrics-row column toward
    a budget, with its rate and the column of the newest evaluation's mark."""

    key: str = "env_steps"
    label: str = "env steps"
    short: str = "steps"
    rate: str = "env_steps_per_s"
    eval_at: str = "eval_env_steps"


ENV_STEPS = ProgressCounter()
POLICY_UPDATES = ProgressCounter("offline_policy_updates", "policy updates", "updates", "policy_updates_per_s",
                                 "eval_policy_updates")
"""An offline run's progress: it counts no env steps (system/offline_driver.py)."""


def run_progress(config: SystemConfig) -> tuple[ProgressCounter, int]:
    """``(counter, budget)`` of a run: policy updates toward ``offline.total_updates`` offline, else env steps
    toward ``run.total_env_steps``."""
    if config.offline.enabled:
        return POLICY_UPDATES, config.offline.total_updates
    return ENV_STEPS, config.run.total_env_steps


class ProgressDisplay:
    """The live progress of ``dynaray train``, fed one report row at a time.

    On a terminal with ``rich`` installed: a few lines redrawn in place (a bar of env steps toward the budget,
    rates, the last eval return, world-model validation loss, versions, workers, restarts, env errors), with
    anything printed meanwhile shown above them. On a terminal without ``rich``: one line rewritten in place.
    Elsewhere (a log file, a pipe): the same line once per report. Call :meth:`close` when the run ends.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr, counter: ProgressCounter = ENV_STEPS):
        self.total, self.stream, self.counter = total, stream, counter
        self._tty = stream.isatty()
        self._live = None
        self._wrote_line = False
        self._rich_console = None
        if self._tty:
            try:
                from rich.console import Console
            except ImportError:
                return
            console = Console(file=stream)
            self._rich_console = console if console.is_terminal else None

    def __call__(self, row: dict[str, Any]) -> None:
        if self._rich_console is not None and self._live is None:  # started at the first report: start-up
            from rich.live import Live  # messages (Ray's included) print as usual before it

            self._live = Live(console=self._rich_console, auto_refresh=False, redirect_stdout=True,
                              redirect_stderr=True)
            self._live.start()
        if self._live is not None:
            self._live.update(self._rich(row), refresh=True)
            return
        line = self._line(row)
        self.stream.write(("\r" + line + "\x1b[K") if self._tty else line + "\n")
        self.stream.flush()
        self._wrote_line = True

    def close(self) -> None:
        """End the display (restores the terminal: cursor, redirected output); the last state stays on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = self._rich_console = None
        elif self._tty and self._wrote_line:
            self.stream.write("\n")
            self.stream.flush()

    @staticmethod
    def _fmt(value: Any, spec: str) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "-"
        return format(value, spec)

    def _eta(self, row: dict[str, Any]) -> str:
        rate, left = row.get(self.counter.rate) or 0.0, self.total - row.get(self.counter.key, 0)
        if left <= 0:
            return "done"
        return _clock(left / rate) if rate > 0 else "-"

    def _line(self, row: dict[str, Any]) -> str:
        f, c = self._fmt, self.counter
        return (
            f"{c.short} {row.get(c.key, 0):>7,}/{self.total:,} | {f(row.get(c.rate), '.0f')} {c.short}/s"
            f" | eval {f(row.get('eval_return_mean'), '.1f')}"
            f" | wm val {f(row.get('world_model_val_mse'), '.4f')}"
            f" | policy v{row.get('policy_version', 0)} {f(row.get('policy_updates_per_s'), '.0f')} upd/s"
            f" | rollout {row.get('rollout_workers', '-')} workers, {row.get('rollout_env_errors', 0)} env errors"
            f" | restarts {_restarts(row)}" + (f" | stalled: {row['stalled']}" if row.get("stalled") else "")
        )

    def _rich(self, row: dict[str, Any]):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        f, c = self._fmt, self.counter
        steps = row.get(c.key, 0)

        def pairs(*items: tuple[str, str]) -> Text:
            text = Text()
            for i, (label, value) in enumerate(items):
                text.append("   " if i else "")
                text.append(f"{label} ", style="dim")
                text.append(value, style="bold")
            return text

        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text(c.label, style="dim"), ProgressBar(total=self.total, completed=steps, width=32),
                    Text(f"{steps:,}/{self.total:,} ({steps / self.total:.0%})" if self.total else f"{steps:,}",
                         style="bold"),
                    pairs(("", f"{f(row.get(c.rate), ',.0f')} {c.short}/s"),
                          ("elapsed", _clock(row.get("wall_time_s", 0.0))),
                          ("eta", self._eta(row))))
        eval_at = row.get(c.eval_at)
        learning = pairs(
            ("eval return", f(row.get("eval_return_mean"), ".1f") + (f" @ {eval_at:,}" if eval_at is not None else "")),
            ("world model val mse", f(row.get("world_model_val_mse"), ".4f")),
            ("policy", f"v{row.get('policy_version', 0)}"),
            ("updates/s", f(row.get("policy_updates_per_s"), ",.0f")),
        )
        workers = [("rollout workers", str(row.get("rollout_workers", "-"))),
                   ("env errors", str(row.get("rollout_env_errors", 0)))]
        if row.get("imagination_workers"):
            workers.append(("imagination workers", str(row["imagination_workers"])))
        workers.append(("restarts", _restarts(row)))
        if row.get("stalled"):
            workers.append(("stalled", row["stalled"]))
        return Group(bar, learning, pairs(*workers))


def _restarts(row: dict[str, Any]) -> str:
    """``0``, or the roles that restarted: ``rollout 1, policy 2``."""
    counts = {key[:-len("_restarts")]: n for key, n in row.items() if key.endswith("_restarts") and n}
    return ", ".join(f"{role} {n}" for role, n in counts.items()) or "0"


def _clock(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_printer(total: int, stream: TextIO = sys.stderr, counter: ProgressCounter = ENV_STEPS
                     ) -> ProgressDisplay:
    """The live progress display of ``dynaray train`` toward ``total`` env steps, or what ``counter`` counts (see
    :class:`ProgressDisplay`)."""
    return ProgressDisplay(total, stream, counter)
