"""Trains Stable-Baselines3's SAC on one gymnasium env and writes its evaluations as a run directory; run by
``dynaray bench locomotion`` in a process of its own.

    python -m system.bench.sb3_sac_worker --env Hopper-v5 --seed 0 --steps 15000 --eval-every 1000 \
        --episodes 5 --out RUN_DIR

SAC as a Stable-Baselines3 user runs it: ``SAC("MlpPolicy", env, seed=S)`` with the library's defaults (256x256
actor and critics, learning rate 3e-4, batch 256, one update per env step after 100 random steps, automatic
entropy), one torch thread. Every ``--eval-every`` env steps (and at the end) the deterministic policy plays
``--episodes`` episodes of a second env seeded ``S + EVAL_SEED_OFFSET``; each evaluation is appended to
``RUN_DIR/evals.parquet`` (``env_steps``, ``wall_time_s`` since training began, ``return_mean``, ``return_std``:
the columns of a dynaray run's) as soon as it is made, with ``RUN_DIR/config.yaml`` naming the env, so that
``dynaray plot`` reads the run, finished or killed, as it reads a dynaray run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

EVAL_SEED_OFFSET = 10_000
"""The eval env's seed is the run's plus this (dynaray's evaluator keeps its episodes apart from training's too)."""


def evaluate(policy, env, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` deterministic episodes of ``policy`` (an SB3 model) in ``env``."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = policy.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


class EvalLog:
    """The run directory's evaluations, rewritten whole (to a temporary file, then renamed) after each one."""

    def __init__(self, out: Path, env_id: str, settings: dict):
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        self.path, self.rows = out / "evals.parquet", []
        (out / "config.yaml").write_text(yaml.safe_dump({"env": {"id": env_id}, "baseline": settings}))

    def add(self, env_steps: int, wall_time_s: float, returns: list[float]) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.rows.append({"env_steps": int(env_steps), "wall_time_s": float(wall_time_s),
                          "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))})
        partial = self.path.with_suffix(".parquet.partial")
        pq.write_table(pa.Table.from_pylist(self.rows), partial)
        os.replace(partial, self.path)


def train(env_id: str, seed: int, steps: int, eval_every: int, episodes: int, out: Path) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    log = EvalLog(out, env_id, {"algo": "stable_baselines3.SAC", "policy": "MlpPolicy", "seed": seed,
                                "steps": steps, "eval_every": eval_every, "episodes": episodes})
    eval_env = gym.make(env_id)
    model = SAC("MlpPolicy", gym.make(env_id), seed=seed, verbose=0)
    start, evaluating = time.monotonic(), 0.0

    def record(env_steps: int) -> None:
        """One evaluation, stamped with the training's wall time (the evaluations' own time left out: dynaray's
        evaluator runs beside its training, SB3's stops it)."""
        nonlocal evaluating
        began = time.monotonic()
        returns = evaluate(model, eval_env, episodes, seed + EVAL_SEED_OFFSET)
        log.add(env_steps, began - start - evaluating, returns)
        evaluating += time.monotonic() - began

    class Evaluations(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % eval_every == 0:
                record(self.num_timesteps)
            return True

    model.learn(total_timesteps=steps, callback=Evaluations())
    if steps % eval_every:
        record(steps)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--eval-every", type=int, required=True)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    train(args.env, args.seed, args.steps, args.eval_every, args.episodes, args.out)


if __name__ == "__main__":
    main()
