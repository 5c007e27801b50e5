"""The driver: keeps one call in flight per role, schedules evaluations, stops, checkpoints, reports.

It never blocks on one role: every call is a ref in ``self._inflight`` and the loop waits on all of them at once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import numpy as np

from actors.envs import EnvSpec
from actors.evaluator import EvalResult
from actors.gateway import GatewayStats
from actors.imagination import ImaginationReport
from actors.rollout import RolloutReport
from replay.handles import get, is_actor_failure, wait
from system.config import SystemConfig
from system.loops import LearnerReport
from system.metrics import DriverMetrics
from system.placement import locate
from system.run_dir import RunDir
from system.wiring import System

logger = logging.getLogger(__name__)

CONTROL_POLL_S = 0.5
"""How often the driver asks the control actor for new pool sizes."""
POOL_CALLS = {"rollout": ("rollout", "rollout_flush"), "imagination": ("imagination",)}
"""Call kinds that keep a worker of each pool busy (besides ``retire``, whose payload names the pool)."""
RESTARTABLE = {"rollout": "rollout", "rollout_flush": "rollout", "imagination": "imagination"}
"""Call kinds whose worker Ray restarts when its process dies (``max_restarts`` in the role's config) -> role."""
MAX_LOST_CALLS_IN_A_ROW = 5
"""Calls of one worker lost to a dead process in a row before the run stops (one death can fail two calls: the
one running and one sent before Ray noticed)."""


CONSUMERS = ("policy", "world_model", "imagination")
"""Roles that consume replay at a configured ratio (and so drain once the env-step budget is collected)."""
DRAIN_TIMEOUT_S = 120.0
"""Longest wait for the consumers to finish what their ratios owe at the end of the budget."""


class RoleError(RuntimeError):
    """A role failed; the message names the role and the cause."""


@dataclass
class _Call:
    kind: str
    index: int = 0
    payload: Any = None


@dataclass
class Summary:
    env_steps: int
    wall_time_s: float
    best_eval_return: float | None
    last_eval_return: float | None
    stopped_because: str
    policy_version: int
    run_dir: str


def describe_error(exc: BaseException) -> str:
    """One line for an error raised in a role (Ray wraps it; unwrap to the original where possible)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


class Driver:
    """Runs a built system until the env-step budget or the target return.

    Usage::

        system = build_system(config, spec)
        summary = Driver(config, spec, system, RunDir(path).create(config)).run()
    """

    def __init__(self, config: SystemConfig, spec: EnvSpec, system: System, run_dir: RunDir,
                 on_report: Callable[[dict[str, Any]], None] | None = None,
                 placement: dict[str, dict[str, str]] | None = None):
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
        self._rows: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self._next_eval = config.eval.every_steps
        self._last_eval_mark = 0
        self._eval_round_robin = 0
        self._last_row_time = self._start
        self._step_times: deque[tuple[float, int]] = deque([(self._start, 0)])
        self._stop_reason: str | None = None
        self._step_budget = config.run.total_env_steps
        """Env steps to collect: run.total_env_steps, lowered to the steps handed out once run.max_wall_s passes."""
        self._first_report_at: float | None = None
        self._restarts: Counter[str] = Counter({"rollout": 0, "imagination": 0})
        self._retiring: set[tuple[str, int]] = set()
        self._next_index = {pool: max(getattr(system, pool), default=-1) + 1 for pool in ("rollout", "imagination")}
        self._control_seen, self._control_pending, self._control_polled_at = 0, False, 0.0
        self._gateway_pending = False
        self._lost_calls: Counter[tuple[str, int]] = Counter()
        self._incarnations: dict[tuple[str, int], int] = {}
        self._added_at: dict[tuple[str, int], float] = {}
        """(pool, index) -> when a worker added by scaling was made, until its first report."""
        self._env_errors: dict[int, int] = {}
        self._acting: dict[int, int] = {}
        self._metrics = DriverMetrics(config.run.total_env_steps, enabled=config.run.metrics)

    # submitting -----------------------------------------------------------------------------------------------
    def _submit(self, ref: Any, call: _Call) -> None:
        self._inflight[ref] = call

    def _submit_rollout(self, i: int) -> None:
        """Ask rollout worker ``i`` for more steps, or, once the budget is handed out, to flush what it wrote (its
        last inserts may wait for the learners' rate limiters, so the learners go on until every row is in)."""
        steps = self.config.rollout.steps_per_call
        if self._stop_reason or self._retire_if_asked("rollout", i):
            return
        if self.env_steps + self._steps_in_flight >= self._step_budget:
            self._submit(self.system.rollout[i].flush.remote(), _Call("rollout_flush", i))
            return
        handed_out = self.env_steps + self._steps_in_flight
        steps = min(steps, self._step_budget - handed_out)
        random_steps = min(steps, max(0, self.config.rollout.warmup_steps - handed_out))
        self._steps_in_flight += steps
        self._submit(self.system.rollout[i].run.remote(steps, random_steps), _Call("rollout", i, steps))

    def _submit_learner(self, kind: str) -> None:
        handle = getattr(self.system, kind)
        self._submit(handle.run.remote(self.config.run.report_interval_s), _Call(kind))

    def _submit_imagination(self, i: int) -> None:
        if self._retire_if_asked("imagination", i):
            return
        ref = self.system.imagination[i].run.remote(self.env_steps, self.config.run.report_interval_s)
        self._submit(ref, _Call("imagination", i))

    def _request_eval(self, mark: int) -> None:
        """Take the policy published now (at ``mark`` env steps) and queue it for evaluation."""
        self._last_eval_mark = mark
        self._submit(self.system.store.latest.remote("policy", -1), _Call("eval_weights", payload=mark))

    # handling -------------------------------------------------------------------------------------------------
    def _handle(self, ref: Any, call: _Call) -> None:
        try:
            result = get(ref)
        except Exception as exc:
            if self._restarted(call, exc):
                return
            if call.kind == "gateway_stats":  # Ray restarts the gateway (gateway.max_restarts); the run goes on
                self._gateway_pending = False
                logger.warning("ingest gateway did not answer for its stats: %s", describe_error(exc))
                return
            raise RoleError(f"{call.kind} {call.index} failed: {describe_error(exc)}") from None
        if self._first_report_at is None:
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
            self._retiring.add((pool, i))
            if not any(c.index == i for c in self._pool_calls(pool)):
                self._retire_if_asked(pool, i)
        for _ in range(size - len(active)):
            i = self._next_index[pool]
            self._next_index[pool] += 1
            handle = self.system.add_worker(pool, i)
            logger.info("scaling: %s worker %d added", pool, i)
            self._added_at[(pool, i)] = time.monotonic()
            if not self.system.local:  # where it lands: answered once it is made, before its first call
                self._submit(locate(handle), _Call("placed", i, pool))
            (self._submit_rollout if pool == "rollout" else self._submit_imagination)(i)

    def _on_placed(self, call: _Call, where: dict[str, str]) -> None:
        """A worker added by scaling runs: its node goes into the placement (run dir, ``dynaray status``)."""
        self.placement[f"{call.payload}-{call.index}"] = where
        self.run_dir.write_json("placement", self.placement)

    def _first_report(self, pool: str, i: int) -> None:
        """The first report of a worker added by scaling: say where it runs and how long it took to report."""
        added = self._added_at.pop((pool, i), None)
        if added is not None:
            where = self.placement.get(f"{pool}-{i}", {})
            print(f"dynaray: scaling: {pool}-{i} on node {where.get('ip', '?')} ({where.get('node_id', '?')[:8]}): "
                  f"first report {time.monotonic() - added:.1f} s after it was added", file=sys.stderr)

    def _pool_calls(self, pool: str) -> list[_Call]:
        """Calls in flight to workers of ``pool``."""
        return [c for c in self._inflight.values()
                if c.kind in POOL_CALLS[pool] or (c.kind == "retire" and c.payload == pool)]

    def _retire_if_asked(self, pool: str, i: int) -> bool:
        """If worker ``i`` of ``pool`` is to retire, have it flush what it wrote (then it is ended) and say so."""
        if (pool, i) not in self._retiring:
            return False
        self._submit(getattr(self.system, pool)[i].flush.remote(), _Call("retire", i, pool))
        return True

    def _on_retire(self, call: _Call, result: Any) -> None:
        self._retiring.discard((call.payload, call.index))
        self.system.remove_worker(call.payload, call.index)
        logger.info("scaling: %s worker %d flushed and ended", call.payload, call.index)

    def _on_gateway_stats(self, call: _Call, stats: GatewayStats) -> None:
        self._gateway_pending = False
        row = {"gateway_episodes": stats.episodes, "gateway_rows": stats.rows,
               "gateway_policy_downloads": stats.policy_downloads}
        row.update({f"gateway_requests_{code}": n for code, n in stats.requests.items()})
        self._latest["gateway"] = row

    def _restarted(self, call: _Call, exc: BaseException) -> bool:
        """Whether ``call`` failed because its worker's process died and Ray restarts it: then give the worker
        its work again (its unfinished chunk died with it). False for any other failure, for a worker whose
        constructor failed, and for a worker whose calls failed :data:`MAX_LOST_CALLS_IN_A_ROW` times in a row
        (Ray gave up on it after its ``max_restarts``, or it dies at once each time)."""
        if call.kind == "retire" and is_actor_failure(exc):  # died while retiring: nothing more to flush
            self._on_retire(call, None)
            return True
        if call.kind == "placed":  # the worker's own calls tell what happened to it
            return True
        if call.kind not in RESTARTABLE or not is_actor_failure(exc) or getattr(exc, "actor_init_failed", False):
            return False
        role = RESTARTABLE[call.kind]
        self._lost_calls[(role, call.index)] += 1
        if self._lost_calls[(role, call.index)] > MAX_LOST_CALLS_IN_A_ROW:
            return False
        logger.warning("%s worker %d died (%s); Ray restarts it and it goes on", role, call.index,
                       describe_error(exc))
        if call.kind == "rollout":
            self._steps_in_flight -= call.payload
            self._submit_rollout(call.index)
        elif call.kind == "rollout_flush":
            self._submit(self.system.rollout[call.index].flush.remote(), call)
        else:
            self._submit_imagination(call.index)
        return True

    def _count_incarnation(self, role: str, report: RolloutReport | ImaginationReport) -> None:
        """A report from a worker: its writer id tells whether Ray restarted it since its last report."""
        self._lost_calls[(role, report.index)] = 0
        seen = self._incarnations.setdefault((role, report.index), report.writer_id)
        if seen != report.writer_id:
            self._incarnations[(role, report.index)] = report.writer_id
            self._restarts[role] += 1

    def _on_rollout(self, call: _Call, report: RolloutReport) -> None:
        self._count_incarnation("rollout", report)
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
        self._lost_calls[("rollout", call.index)] = 0

    def _keep_going(self, progress: int) -> bool:
        """Resubmit a consumer of replay unless stopping, or draining and its rate limiter admits nothing more."""
        if self._stop_reason:
            return False
        return not (self._draining() and progress == 0)

    def _on_policy(self, call: _Call, report: LearnerReport) -> None:
        self._policy_version = report.version
        self._learner_columns("policy", report)
        if self._keep_going(report.updates):
            self._submit_learner("policy")

    def _on_world_model(self, call: _Call, report: LearnerReport) -> None:
        self._learner_columns("world_model", report)
        if self._keep_going(report.updates):
            self._submit_learner("world_model")

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
        self._count_incarnation("imagination", report)
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

    def _on_eval_weights(self, call: _Call, latest: tuple[int, list] | None) -> None:
        if latest is None:  # no policy published yet: the random policy is what acts
            self.evals.append(self._eval_row(call.payload, -1, None))
            return
        version, box = latest
        evaluator = self.system.evaluators[self._eval_round_robin % len(self.system.evaluators)]
        self._eval_round_robin += 1
        ref = evaluator.evaluate.remote(box[0], self.config.eval.episodes, env_steps=call.payload, version=version)
        self._submit(ref, _Call("eval"))

    def _on_eval(self, call: _Call, result: EvalResult) -> None:
        self.evals.append(self._eval_row(result.env_steps, result.version, result))
        target = self.config.run.target_return
        if target is not None and result.return_mean >= target and not self._stop_reason:
            self._stop_reason = f"target return {target:g} reached at {result.env_steps} env steps"

    def _eval_row(self, env_steps: int, version: int, result: EvalResult | None) -> dict[str, Any]:
        return {
            "env_steps": env_steps,
            "policy_version": version,
            "return_mean": result.return_mean if result else float("nan"),
            "return_std": result.return_std if result else float("nan"),
            "length_mean": float(np.mean(result.lengths)) if result else float("nan"),
            "wall_time_s": time.monotonic() - self._start,
        }

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
        row.update({f"{role}_restarts": n for role, n in self._restarts.items()})
        row.update({f"{pool}_workers": len(getattr(self.system, pool)) for pool in ("rollout", "imagination")})
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
        pools = {
            pool: {"active": sorted(i for i in getattr(self.system, pool) if (pool, i) not in self._retiring),
                   "retiring": sorted(i for p, i in self._retiring if p == pool),
                   "restarts": self._restarts[pool]}
            for pool in ("rollout", "imagination")
        }
        return {"row": row, "pools": pools, "budget": self.config.run.total_env_steps, "placement": self.placement}

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
        if len(self._rows) % 10 == 0:
            self.run_dir.write_table("metrics", self._rows)

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
        return any(c.kind in CONSUMERS for c in self._inflight.values())

    def _evals_done(self) -> bool:
        return not any(c.kind in ("eval", "eval_weights") for c in self._inflight.values())

    def _pump(self, timeout: float) -> None:
        ready, _ = wait(list(self._inflight), num_returns=len(self._inflight), timeout=timeout)
        for ref in ready:
            self._handle(ref, self._inflight.pop(ref))

    def run(self) -> Summary:
        self._start_roles()
        budget = self.config.run.total_env_steps
        drain_started = 0.0
        while True:
            self._pump(timeout=0.1)
            self._poll_control()
            self._check_startup()
            self._maybe_report()
            if self._stop_reason:
                break
            self._check_wall_budget()
            if not self._draining():
                continue
            drain_started = drain_started or time.monotonic()
            if self._consumers_busy() and time.monotonic() - drain_started < DRAIN_TIMEOUT_S:
                continue
            if self._last_eval_mark < self.env_steps:
                self._request_eval(self.env_steps)
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
        if self._first_report_at is None and time.monotonic() - self._start > self.config.run.startup_timeout_s:
            pending = sorted({c.kind for c in self._inflight.values()})
            raise RoleError(
                f"no role reported within run.startup_timeout_s={self.config.run.startup_timeout_s:g}s "
                f"(still starting: {', '.join(pending)}); check `ray status` for resources that cannot be placed"
            )

    def _finish(self) -> Summary:
        """Let in-flight learner calls end (they return within one report interval), then checkpoint."""
        deadline = time.monotonic() + 3 * self.config.run.report_interval_s + 30
        while self._consumers_busy() and time.monotonic() < deadline:
            self._pump(timeout=0.2)
        self.checkpoint()
        self._maybe_report(force=True)
        self.run_dir.write_table("metrics", self._rows)
        self.evals.sort(key=lambda e: e["env_steps"])
        self.run_dir.write_table("evals", self.evals)
        scored = [e["return_mean"] for e in self.evals if not np.isnan(e["return_mean"])]
        if scored:
            self.run_dir.plot_learning_curve(
                [e for e in self.evals if not np.isnan(e["return_mean"])],
                f"{self.config.env.id} ({self.run_dir.path.name})",
            )
        return Summary(
            env_steps=self.env_steps,
            wall_time_s=time.monotonic() - self._start,
            best_eval_return=max(scored) if scored else None,
            last_eval_return=scored[-1] if scored else None,
            stopped_because=self._stop_reason or "stopped",
            policy_version=self._policy_version,
            run_dir=str(self.run_dir.path),
        )

    def checkpoint(self) -> None:
        """Full learner states and the newest acting weights, written atomically to the run directory."""
        refs = {"policy": self.system.policy.state_dict.remote(), "actor_latest": self.system.store.latest.remote("policy", -1)}
        if self.system.world_model is not None:
            refs["world_model"] = self.system.world_model.state_dict.remote()
        states = {name: get(ref) for name, ref in refs.items()}
        latest = states.pop("actor_latest")
        if latest is not None:
            states["actor"] = get(latest[1][0])
        meta = {
            "env_id": self.config.env.id,
            "obs_shape": list(self.spec.obs_shape),
            "action_shape": list(self.spec.action_shape),
            "env_steps": self.env_steps,
            "policy_version": latest[0] if latest else 0,
        }
        self.run_dir.save_checkpoint(states, meta)


class ProgressDisplay:
    """The live progress of ``dynaray train``, fed one report row at a time.

    On a terminal with ``rich`` installed: a few lines redrawn in place (a bar of env steps toward the budget,
    rates, the last eval return, world-model validation loss, versions, workers, restarts, env errors), with
    anything printed meanwhile shown above them. On a terminal without ``rich``: one line rewritten in place.
    Elsewhere (a log file, a pipe): the same line once per report. Call :meth:`close` when the run ends.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.stream = total, stream
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
        rate, left = row.get("env_steps_per_s") or 0.0, self.total - row["env_steps"]
        if left <= 0:
            return "done"
        return _clock(left / rate) if rate > 0 else "-"

    def _line(self, row: dict[str, Any]) -> str:
        f = self._fmt
        return (
            f"steps {row['env_steps']:>7,}/{self.total:,} | {f(row.get('env_steps_per_s'), '.0f')} steps/s"
            f" | eval {f(row.get('eval_return_mean'), '.1f')}"
            f" | wm val {f(row.get('world_model_val_mse'), '.4f')}"
            f" | policy v{row.get('policy_version', 0)} {f(row.get('policy_updates_per_s'), '.0f')} upd/s"
            f" | rollout {row.get('rollout_workers', '-')} workers, {row.get('rollout_restarts', 0)} restarts,"
            f" {row.get('rollout_env_errors', 0)} env errors"
        )

    def _rich(self, row: dict[str, Any]):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        f = self._fmt
        steps = row["env_steps"]

        def pairs(*items: tuple[str, str]) -> Text:
            text = Text()
            for i, (label, value) in enumerate(items):
                text.append("   " if i else "")
                text.append(f"{label} ", style="dim")
                text.append(value, style="bold")
            return text

        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text("env steps", style="dim"), ProgressBar(total=self.total, completed=steps, width=32),
                    Text(f"{steps:,}/{self.total:,} ({steps / self.total:.0%})" if self.total else f"{steps:,}",
                         style="bold"),
                    pairs(("", f"{f(row.get('env_steps_per_s'), ',.0f')} steps/s"),
                          ("elapsed", _clock(row.get("wall_time_s", 0.0))),
                          ("eta", self._eta(row))))
        eval_at = row.get("eval_env_steps")
        learning = pairs(
            ("eval return", f(row.get("eval_return_mean"), ".1f") + (f" @ {eval_at:,}" if eval_at is not None else "")),
            ("world model val mse", f(row.get("world_model_val_mse"), ".4f")),
            ("policy", f"v{row.get('policy_version', 0)}"),
            ("updates/s", f(row.get("policy_updates_per_s"), ",.0f")),
        )
        workers = [("rollout workers", str(row.get("rollout_workers", "-"))),
                   ("restarts", str(row.get("rollout_restarts", 0))),
                   ("env errors", str(row.get("rollout_env_errors", 0)))]
        if row.get("imagination_workers"):
            workers.append(("imagination workers",
                            f"{row['imagination_workers']} ({row.get('imagination_restarts', 0)} restarts)"))
        return Group(bar, learning, pairs(*workers))


def _clock(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_printer(total: int, stream: TextIO = sys.stderr) -> ProgressDisplay:
    """The live progress display of ``dynaray train`` toward ``total`` env steps (see :class:`ProgressDisplay`)."""
    return ProgressDisplay(total, stream)
