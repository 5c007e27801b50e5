"""``dynaray bench planner``: what the rollout planner (actors/planner.py) costs per vector step, against the policy
alone, and what it does to a rollout worker's env steps/s.

    dynaray bench planner [PRESET ...] [key=value ...] [--envs-per-worker 1,4] [--candidates K] [--horizon H]
                          [--steps 300] [--worker-steps 1000] [--json OUT]

The env, the networks and the planner come from the system config (presets and overrides, as ``dynaray train``
takes them; ``default`` alone when none are given: InvertedPendulum-v5, policy (256, 256), world model 7 members,
5 elites, (200, 200, 200, 200), K=8, H=5), with ``rollout.planner.enabled=true`` and ``--candidates`` /
``--horizon`` setting ``rollout.planner.num_candidates`` / ``horizon``; models on the CPU with their initial
weights, ``run.torch_threads`` torch threads (1 by default) as every actor of a run. It times ``Policy.act`` and
``Planner.act`` on the same (N, O) observations, ``--steps`` calls each after 20 untimed ones, and reports the
minimum, median and p90 milliseconds per vector step and the planner's ratio to the policy (of the minima, which are
the least disturbed by other processes on shared cores, and of the medians). Then the whole loop: env steps per
second of the config's ``RolloutWorker`` (N envs, no warm-up; replay writes discarded) with and without the
planner, ``--worker-steps`` env steps each.

torch and gymnasium are imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from system.bench.harness import (
    add_config_items, add_json_option, fail, finish, load_averages, load_bench_config, machine, positive_int,
    positive_ints, progress, torch_threads, write_report,
)

__all__ = ["Report", "add_arguments", "run", "time_calls", "worker_steps_per_s"]

UNTIMED_CALLS = 20


def time_calls(function: Callable[[np.ndarray], Any], obs: np.ndarray, steps: int) -> np.ndarray:
    """Milliseconds of each of ``steps`` calls of ``function(obs)``, after :data:`UNTIMED_CALLS` untimed calls."""
    for _ in range(UNTIMED_CALLS):
        function(obs)
    times = np.empty(steps)
    for i in range(steps):
        start = time.perf_counter()
        function(obs)
        times[i] = (time.perf_counter() - start) * 1e3
    return times


class _Discard:
    """Replay that drops every chunk."""

    def insert(self, table: str, chunk: dict, writer_id: int) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass


class _Once:
    """Weights client that hands out one state, version 1."""

    def __init__(self, state: Any):
        self._state, self.version = state, -1

    def poll(self) -> Any | None:
        if self.version == 1:
            return None
        self.version = 1
        return self._state


def worker_steps_per_s(config: Any, policy: Any, model: Any, model_state: Any, steps: int) -> float:
    """Env steps per second of the ``RolloutWorker`` of ``config`` (a ``SystemConfig``; warm-up off) acting with
    ``policy`` (and, with ``rollout.planner.enabled``, planning with ``model``)."""
    from actors.rollout import RolloutWorker

    rollout = dataclasses.replace(config.rollout, warmup_steps=0)
    worker = RolloutWorker(config.env, rollout, _Discard(), _Once(policy.actor.state_dict()), lambda: policy,
                           model_weights=_Once(model_state), make_model=lambda: model)
    worker.run(10 * rollout.envs_per_worker)
    start = time.perf_counter()
    worker.run(steps)
    seconds = time.perf_counter() - start
    worker.close()
    return steps / seconds


@dataclass
class Report:
    """Everything one ``dynaray bench planner`` run measured."""

    settings: dict
    machine: dict
    calls: list[dict] = field(default_factory=list)
    """Per N: policy and planner milliseconds per call (min, p50, p90)."""
    workers: list[dict] = field(default_factory=list)
    """Per N: a rollout worker's env steps/s with the policy and with the planner."""

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "calls": self.calls, "workers": self.workers}

    def markdown(self) -> str:
        lines = [
            "| N envs | policy ms (min / p50 / p90) | planner ms (min / p50 / p90) | planner / policy (min, p50) |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for c in self.calls:
            p, q = c["policy_ms"], c["planner_ms"]
            lines.append(f"| {c['envs']} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | {q[0]:.2f} / {q[1]:.2f} / "
                         f"{q[2]:.2f} | {q[0] / p[0]:.0f}x, {q[1] / p[1]:.0f}x |")
        lines += ["", "| N envs | worker env steps/s, policy | worker env steps/s, planner |", "| ---: | ---: | ---: |"]
        for w in self.workers:
            lines.append(f"| {w['envs']} | {w['policy_steps_s']:.0f} | {w['planner_steps_s']:.0f} |")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "the rollout planner's cost per vector step against the policy alone, and a worker's env steps/s with it"
DESCRIPTION = (
    "Milliseconds per vector step of Policy.act and of the optimistic planner (Planner.act) on the same "
    "observations, and a rollout worker's env steps/s with and without the planner; env, networks and planner from "
    "the presets and overrides given, as 'dynaray train' takes them. See system/bench/planner.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_items(p)
    p.add_argument("--envs-per-worker", type=positive_ints, default=[1, 4], help="N: envs per worker (default 1,4)")
    p.add_argument("--candidates", type=positive_int, default=None,
                   help="K, rollout.planner.num_candidates (default: the config's)")
    p.add_argument("--horizon", type=positive_int, default=None,
                   help="H, rollout.planner.horizon (default: the config's)")
    p.add_argument("--steps", type=positive_int, default=300, help="timed calls per measurement (default 300)")
    p.add_argument("--worker-steps", type=positive_int, default=1000,
                   help="env steps per rollout worker measurement (default 1000)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench planner``: time the policy and the planner, then a worker with each; print the tables."""
    from actors.envs import EnvError, probe_env
    from system.config import ConfigError, to_dict

    overrides = ["rollout.planner.enabled=true", "world_model.enabled=true"]
    if args.candidates is not None:
        overrides.append(f"rollout.planner.num_candidates={args.candidates}")
    if args.horizon is not None:
        overrides.append(f"rollout.planner.horizon={args.horizon}")
    try:
        config = load_bench_config(args, overrides)
        spec = probe_env(config.env)
    except (ConfigError, EnvError) as exc:
        return fail(str(exc))
    import torch

    from actors.config import PlannerConfig
    from actors.planner import Planner
    from learners.sac import Policy
    from learners.world_model import WorldModel, WorldModelLearner

    torch.set_num_threads(config.run.torch_threads)
    wm = dataclasses.replace(config.world_model, device="cpu")
    policy = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy.hidden_sizes,
                    seed=0)
    model = WorldModel(spec.obs_dim, spec.action_dim, wm, seed=0)
    model_state = WorldModelLearner(spec.obs_dim, spec.action_dim, wm, seed=0).model_state()
    model.load_state(model_state)
    planner = Planner(config.rollout.planner, policy, model)
    settings = {"env": config.env.id, "envs_per_worker": args.envs_per_worker, "steps": args.steps,
                "worker_steps": args.worker_steps, "config_items": args.items,
                "policy_hidden_sizes": list(config.policy.hidden_sizes), "world_model": to_dict(wm),
                "planner": to_dict(config.rollout.planner)}
    report = Report(settings, machine("torch", "gymnasium", "mujoco", torch_threads=torch.get_num_threads()))
    rng = np.random.default_rng(0)
    for n in args.envs_per_worker:
        progress(f"{n} env(s): Policy.act and Planner.act, {args.steps} calls each")
        obs = rng.normal(0.0, 0.1, (n, spec.obs_dim)).astype(np.float32)
        acting, planning = time_calls(policy.act, obs, args.steps), time_calls(planner.act, obs, args.steps)
        report.calls.append({"envs": n, "policy_ms": np.percentile(acting, [0, 50, 90]).tolist(),
                             "planner_ms": np.percentile(planning, [0, 50, 90]).tolist()})
    for n in args.envs_per_worker:
        progress(f"{n} env(s): rollout worker with the policy, then with the planner")
        rollout = dataclasses.replace(config.rollout, envs_per_worker=n)
        off = dataclasses.replace(config, rollout=dataclasses.replace(rollout, planner=PlannerConfig()))
        on = dataclasses.replace(config, rollout=rollout)
        steps = args.worker_steps
        report.workers.append({"envs": n, "policy_steps_s": worker_steps_per_s(off, policy, model, model_state, steps),
                               "planner_steps_s": worker_steps_per_s(on, policy, model, model_state, steps)})
    finish(report.machine)
    planned = config.rollout.planner
    return write_report(report, (
        f"{config.env.id}, K={planned.num_candidates}, H={planned.horizon}, policy {config.policy.hidden_sizes}, "
        f"world model {wm.ensemble_size} members x {wm.hidden_sizes}, torch {report.machine['torch']}, "
        f"{torch_threads(config.run.torch_threads)}; {load_averages(report.machine)}"
    ), args.json)
