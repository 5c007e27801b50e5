"""``dynaray bench sac-to-target``: env steps until SAC's deterministic eval return reaches a target, in one process
(no Ray).

    dynaray bench sac-to-target --seeds 0 1 2 3 4 --set 'hidden_sizes=[128,128]' actor_lr=1e-3 critic_lr=1e-3
    dynaray bench sac-to-target --seeds 0 --dyna --real-ratio 0.05 --updates-per-step 20 --starts 100

A quick way to compare policy-learner settings on InvertedPendulum-v5 before a system run: ``SACLearner`` steps a
gymnasium env itself (uniform random actions for ``--warmup`` steps, then its own policy, refreshed after every
env step), makes ``--updates-per-step`` updates per env step on uniform samples of everything seen, and evaluates 5
deterministic episodes every ``--eval-every`` steps. ``--set`` gives ``PolicyConfig`` fields (YAML values) over the
dataclass's defaults, not over a preset: the loop is not the system, and its results (docs/benchmarks.md) were
measured so. With ``--dyna`` a ``WorldModelLearner`` trains on the same real rows (``--model-updates-per-step``),
its weights go to a ``WorldModel`` every 50 steps, and every env step rolls ``--starts`` real states out for
``--horizon`` model steps (``actors.imagination.rollout``) into an imagined buffer; policy batches then take
``--real-ratio`` of their rows from real data. No asynchrony, no rate limiter, no stale weights: a lower bound on
what the system needs, not a measurement of it (that is ``dynaray bench time-to-target``).

torch and gymnasium are imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from system.bench.harness import add_json_option, fail, finish, load_averages, machine, progress, write_report

__all__ = ["Buffer", "Report", "add_arguments", "evaluate", "run", "steps_to_target"]

COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")


class Buffer:
    """Ring buffer of transitions (columns of ``COLUMNS``)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        shapes = {"obs": (obs_dim,), "action": (act_dim,), "reward": (), "next_obs": (obs_dim,)}
        self.data = {k: np.zeros((capacity,) + s, np.float32) for k, s in shapes.items()}
        self.data.update(terminated=np.zeros(capacity, bool), truncated=np.zeros(capacity, bool))
        self.capacity, self.size, self.next = capacity, 0, 0

    def add(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["obs"])
        slots = (self.next + np.arange(n)) % self.capacity
        for k in COLUMNS:
            self.data[k][slots] = rows[k]
        self.next, self.size = (self.next + n) % self.capacity, min(self.capacity, self.size + n)

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.size, n)
        return {k: v[idx] for k, v in self.data.items()}


def evaluate(env: Any, policy: Any, episodes: int = 5) -> float:
    """Mean return of ``episodes`` deterministic episodes of ``policy`` on ``env`` (resets seeded 10,000 on)."""
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=10_000 + e)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs[None].astype(np.float32), True)[0])
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def steps_to_target(args: argparse.Namespace, seed: int, evals: list[tuple[int, float]],
                    validations: list[tuple[int, float]] | None = None) -> int | None:
    """Run the loop for ``seed``; return the env steps at the first eval >= ``args.target`` (None: not within
    ``args.budget``). Every eval is appended to ``evals`` as (env steps, return), and with ``--dyna`` every
    validation of the world model to ``validations`` as (env steps, ``val_mse``)."""
    import gymnasium as gym
    import torch

    from actors.imagination import rollout
    from learners._common import resolve_precision
    from learners.config import PolicyConfig, WorldModelConfig
    from learners.sac import Policy, SACLearner
    from learners.world_model import WorldModel, WorldModelLearner

    env, eval_env = gym.make(args.env), gym.make(args.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    config = PolicyConfig(**{"precision": args.precision, **args.overrides})
    learner = SACLearner(obs_dim, act_dim, low, high, config, seed=seed)
    policy = Policy(obs_dim, act_dim, low, high, config.hidden_sizes, seed=seed)
    real, imagined = Buffer(args.budget, obs_dim, act_dim), Buffer(100_000, obs_dim, act_dim)
    model_config = WorldModelConfig(termination_fn=args.termination_fn, precision=args.precision)
    model_learner = WorldModelLearner(obs_dim, act_dim, model_config, seed=seed) if args.dyna else None
    model = WorldModel(obs_dim, act_dim, model_config, seed=seed) if args.dyna else None
    # imagination's own policy, as in the system: the env is stepped in fp32, imagination at --precision
    dreamer = Policy(obs_dim, act_dim, low, high, config.hidden_sizes, seed=seed) if args.dyna else None
    if args.dyna:
        for part in (model, dreamer):  # decided for each network, as the imagination worker does
            part.set_dtype(resolve_precision(args.precision, part.device, part.hidden_sizes))
    rng = np.random.default_rng(seed)
    episode, step = np.zeros(args.budget, np.int64), np.zeros(args.budget, np.int64)
    episode_index = episode_step = 0
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.monotonic()
    for t in range(args.budget):
        # act and store
        action = env.action_space.sample() if t < args.warmup else policy.act(obs[None].astype(np.float32))[0]
        next_obs, reward, terminated, truncated, _ = env.step(action)
        real.add({"obs": obs[None], "action": action[None], "reward": [reward], "next_obs": next_obs[None],
                  "terminated": [terminated], "truncated": [truncated]})
        episode[t], step[t] = episode_index, episode_step
        episode_step += 1
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            episode_index, episode_step = episode_index + 1, 0
        if t + 1 < args.warmup:
            continue

        # world model and imagination
        n_real = config.batch_size
        if args.dyna:
            for _ in range(args.model_updates_per_step):
                idx = rng.integers(0, t + 1, model_config.batch_size)
                batch = {k: v[idx] for k, v in real.data.items()}
                model_learner.update({**batch, "episode_id": episode[idx], "step": step[idx]})
            if (t + 1) % 50 == 0 or t + 1 == args.warmup:
                if model_learner.validation.size:
                    mse = model_learner.validate()["val_mse"]
                    if validations is not None:
                        validations.append((t + 1, mse))
                model.load_state(model_learner.model_state())
            starts = real.sample(rng, args.starts)["obs"]
            with torch.inference_mode():
                out = rollout(dreamer, model, torch.as_tensor(starts), args.horizon)
            imagined.add({k: out[k].numpy() for k in COLUMNS})
            n_real = max(1, round(config.batch_size * args.real_ratio))

        # policy
        for _ in range(args.updates_per_step):
            batch = real.sample(rng, n_real)
            if n_real < config.batch_size and imagined.size:
                more = imagined.sample(rng, config.batch_size - n_real)
                batch = {k: np.concatenate([batch[k], more[k]]) for k in COLUMNS}
            learner.update(batch)
        policy.load_state(learner.policy_state())
        if dreamer is not None:
            dreamer.load_state(learner.policy_state())

        # eval
        if (t + 1) % args.eval_every == 0:
            score = evaluate(eval_env, policy)
            evals.append((t + 1, score))
            progress(f"seed {seed}: {t + 1} env steps, eval {score:.0f} ({time.monotonic() - start:.0f} s)")
            if score >= args.target:
                return t + 1
    return None


@dataclass
class Report:
    """Everything one ``dynaray bench sac-to-target`` run measured."""

    settings: dict
    machine: dict
    seeds: list[dict] = field(default_factory=list)
    """Per seed: env steps to the target (None: not reached), every eval and the wall seconds."""

    def median(self) -> float:
        """Median env steps to the target over seeds, a seed that did not reach it counting as infinity."""
        return statistics.median(s["steps"] if s["steps"] is not None else float("inf") for s in self.seeds)

    def to_json(self) -> dict:
        median = self.median()
        return {"settings": self.settings, "machine": self.machine, "seeds": self.seeds,
                "median_steps": median if median != float("inf") else None}

    def markdown(self) -> str:
        target = self.settings["target"]
        lines = [f"| seed | env steps to eval >= {target:g} | best eval | wall s | world model val_mse (last) |",
                 "| --- | --- | --- | --- | --- |"]
        for s in self.seeds:
            steps = f"{s['steps']:,}" if s["steps"] is not None else f"not reached in {self.settings['budget']:,}"
            best = max((r for _, r in s["evals"]), default=float("nan"))
            mse = f"{s['val_mse'][-1][1]:.4f}" if s.get("val_mse") else "-"
            lines.append(f"| {s['seed']} | {steps} | {best:.0f} | {s['wall_s']:.0f} | {mse} |")
        return "\n".join(lines)

    def summary(self) -> str:
        budget = self.settings["budget"]
        shown = [f"{s['steps']:,}" if s["steps"] is not None else f"not reached in {budget:,}" for s in self.seeds]
        return (f"env steps to eval >= {self.settings['target']:g}, seeds {[s['seed'] for s in self.seeds]}: "
                f"{' / '.join(shown)}; median {self.median():g}")


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "env steps until SAC's eval return reaches a target, in one process without Ray (policy-learner tuning)"
DESCRIPTION = (
    "SACLearner stepping a gymnasium env itself (optionally with a world model and imagined rows), per seed: env "
    "steps until the deterministic eval return first reaches --target. A lower bound for the system, not a "
    "measurement of it. See system/bench/sac_to_target.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="InvertedPendulum-v5")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--target", type=float, default=950.0)
    p.add_argument("--budget", type=int, default=3000, help="env steps per seed")
    p.add_argument("--warmup", type=int, default=250, help="uniform random env steps first")
    p.add_argument("--updates-per-step", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--dyna", action="store_true", help="add a world model and imagined rows")
    p.add_argument("--real-ratio", type=float, default=0.5)
    p.add_argument("--starts", type=int, default=25, help="imagined start states per env step")
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--model-updates-per-step", type=int, default=1)
    p.add_argument("--termination-fn", default="learners.termination:inverted_pendulum")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="matmul precision of the policy learner, and with --dyna of the world-model learner and "
                        "imagination (policy.precision, world_model.precision, imagination.precision; default auto)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="PolicyConfig fields (YAML values), over the dataclass's defaults")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench sac-to-target``: the loop for every seed, a table of env steps to the target."""
    import torch
    import yaml

    from learners.config import PolicyConfig

    try:
        args.overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    except ValueError:
        return fail(f"--set {' '.join(args.set)}: expected KEY=VALUE items, e.g. actor_lr=1e-3")
    try:
        PolicyConfig(**args.overrides)
    except (TypeError, ValueError) as exc:
        return fail(f"--set: {exc}")
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "json", "verb", "component")}
    report = Report(settings, machine("torch", "gymnasium", "mujoco", torch_threads=1))
    for seed in args.seeds:
        evals: list[tuple[int, float]] = []
        validations: list[tuple[int, float]] = []
        start = time.monotonic()
        steps = steps_to_target(args, seed, evals, validations)
        report.seeds.append({"seed": seed, "steps": steps, "evals": evals, "val_mse": validations,
                             "wall_s": time.monotonic() - start})
    finish(report.machine)
    return write_report(report, f"{report.summary()}. One torch thread; {load_averages(report.machine)}", args.json)
