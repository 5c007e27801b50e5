"""Benchmark: what the rollout planner (actors/planner.py) costs per vector step, against the policy alone.

    .venv/bin/python tests/benchmarks/planner_cost.py [--envs 1 4] [--candidates 8] [--horizon 5] [--steps 300]

InvertedPendulum-v5 sizes with the default preset's networks (obs 4, action 1; policy (256, 256); world model 7
members, 5 elites, (200, 200, 200, 200)), one torch thread as every actor of a run. Times ``Policy.act`` and
``Planner.act`` on the same (N, O) observations, ``--steps`` calls each after a warm-up, and prints a Markdown
table: minimum, median and p90 milliseconds per vector step and the planner's ratio to the policy (of the minima,
which are the least disturbed by other processes on shared cores, and of the medians). Then the whole loop: env
steps per second of a ``RolloutWorker`` on InvertedPendulum-v5 (replay writes discarded) with and without the
planner, ``--worker-steps`` env steps each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from actors.envs import EnvConfig  # noqa: E402
from actors.planner import Planner, PlannerConfig  # noqa: E402
from actors.rollout import RolloutConfig, RolloutWorker  # noqa: E402
from learners.sac import Policy  # noqa: E402
from learners.world_model import WorldModel, WorldModelConfig  # noqa: E402
from system.config import load_config  # noqa: E402

OBS, ACT = 4, 1


def time_calls(function, obs: np.ndarray, steps: int) -> np.ndarray:
    """Milliseconds of each of ``steps`` calls of ``function(obs)``, after 20 warm-up calls."""
    for _ in range(20):
        function(obs)
    times = np.empty(steps)
    for i in range(steps):
        start = time.perf_counter()
        function(obs)
        times[i] = (time.perf_counter() - start) * 1e3
    return times


class _Discard:
    """Replay that drops every chunk."""

    def insert(self, table, chunk, writer_id):
        pass

    def flush(self, timeout=None):
        pass


class _Once:
    """Weights client that hands out one state, version 1."""

    def __init__(self, state):
        self._state, self.version = state, -1

    def poll(self):
        if self.version == 1:
            return None
        self.version = 1
        return self._state


def worker_steps_per_s(n: int, planner: PlannerConfig, policy: Policy, model: WorldModel, steps: int) -> float:
    """Env steps per second of a rollout worker with ``n`` envs acting with ``policy`` (and ``model``)."""
    config = RolloutConfig(envs_per_worker=n, warmup_steps=0, planner=planner)
    model_state = model.dynamics.state_dict() | {"elites": torch.tensor(model.elites)}
    worker = RolloutWorker(EnvConfig("InvertedPendulum-v5"), config, _Discard(), _Once(policy.actor.state_dict()),
                           lambda: policy, model_weights=_Once(model_state), make_model=lambda: model)
    worker.run(10 * n)
    start = time.perf_counter()
    worker.run(steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 4], help="N: envs per worker")
    parser.add_argument("--candidates", type=int, default=8, help="K")
    parser.add_argument("--horizon", type=int, default=5, help="H")
    parser.add_argument("--steps", type=int, default=300, help="timed calls per measurement")
    parser.add_argument("--worker-steps", type=int, default=1000, help="env steps per rollout worker measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config()
    policy = Policy(OBS, ACT, -3.0, 3.0, config.policy.hidden_sizes, seed=0)
    wm = WorldModelConfig(**{**config.world_model.__dict__, "device": "cpu"})
    model = WorldModel(OBS, ACT, wm, seed=0)
    planner = Planner(PlannerConfig(enabled=True, num_candidates=args.candidates, horizon=args.horizon), policy, model)
    rng = np.random.default_rng(0)
    print(f"K={args.candidates}, H={args.horizon}, policy {config.policy.hidden_sizes}, world model "
          f"{wm.ensemble_size} members x {wm.hidden_sizes}, torch {torch.__version__}, 1 thread, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| N envs | policy ms (min / p50 / p90) | planner ms (min / p50 / p90) | planner / policy (min, p50) |")
    print("| ---: | ---: | ---: | ---: |")
    for n in args.envs:
        obs = rng.normal(0.0, 0.1, (n, OBS)).astype(np.float32)
        acting = time_calls(policy.act, obs, args.steps)
        planning = time_calls(planner.act, obs, args.steps)
        p, q = np.percentile(acting, [0, 50, 90]), np.percentile(planning, [0, 50, 90])
        print(f"| {n} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} "
              f"| {q[0] / p[0]:.0f}x, {q[1] / p[1]:.0f}x |")
    print()
    print("| N envs | worker env steps/s, policy | worker env steps/s, planner |")
    print("| ---: | ---: | ---: |")
    for n in args.envs:
        off = worker_steps_per_s(n, PlannerConfig(), policy, model, args.worker_steps)
        on = worker_steps_per_s(n, planner.config, policy, model, args.worker_steps)
        print(f"| {n} | {off:.0f} | {on:.0f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
