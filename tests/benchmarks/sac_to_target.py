"""Benchmark: env steps until SAC's deterministic eval return reaches a target, in one process (no Ray).

    python -m tests.benchmarks.sac_to_target --seeds 0 1 2 3 4 --set hidden_sizes=[128,128] actor_lr=1e-3 \
        critic_lr=1e-3
    python -m tests.benchmarks.sac_to_target --seeds 0 --dyna --real-ratio 0.05 --updates-per-step 20 --starts 100

A quick way to compare policy-learner settings on InvertedPendulum-v5 before a system run: ``SACLearner`` steps a
gymnasium env itself (uniform random actions for ``--warmup`` steps, then its own policy, refreshed after every
env step), makes ``--updates-per-step`` updates per env step on uniform samples of everything seen, and evaluates 5
deterministic episodes every ``--eval-every`` steps. With ``--dyna`` a ``WorldModelLearner`` trains on the same real
rows (``--model-updates-per-step``), its weights go to a ``WorldModel`` every 50 steps, and every env step rolls
``--starts`` real states out for ``--horizon`` model steps (``actors.imagination.rollout``) into an imagined buffer;
policy batches then take ``--real-ratio`` of their rows from real data. No asynchrony, no rate limiter, no stale
weights: a lower bound on what the system needs, not a measurement of it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
import yaml

from actors.imagination import rollout
from learners.sac import Policy, PolicyConfig, SACLearner
from learners.world_model import WorldModel, WorldModelConfig, WorldModelLearner

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


def evaluate(env: gym.Env, policy: Policy, episodes: int = 5) -> float:
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


def steps_to_target(args: argparse.Namespace, seed: int) -> int | None:
    env, eval_env = gym.make(args.env), gym.make(args.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    config = PolicyConfig(**args.overrides)
    learner = SACLearner(obs_dim, act_dim, low, high, config, seed=seed)
    policy = Policy(obs_dim, act_dim, low, high, config.hidden_sizes, seed=seed)
    real, imagined = Buffer(args.budget, obs_dim, act_dim), Buffer(100_000, obs_dim, act_dim)
    model_config = WorldModelConfig(termination_fn=args.termination_fn)
    model_learner = WorldModelLearner(obs_dim, act_dim, model_config, seed=seed) if args.dyna else None
    model = WorldModel(obs_dim, act_dim, model_config, seed=seed) if args.dyna else None
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
                    model_learner.validate()
                model.load_state(model_learner.model_state())
            starts = real.sample(rng, args.starts)["obs"]
            with torch.inference_mode():
                out = rollout(policy, model, torch.as_tensor(starts), args.horizon)
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

        # eval
        if (t + 1) % args.eval_every == 0:
            score = evaluate(eval_env, policy)
            print(f"  seed {seed}: {t + 1} env steps, eval {score:.0f} ({time.monotonic() - start:.0f} s)", flush=True)
            if score >= args.target:
                return t + 1
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--target", type=float, default=950.0)
    parser.add_argument("--budget", type=int, default=3000, help="env steps per seed")
    parser.add_argument("--warmup", type=int, default=250, help="uniform random env steps first")
    parser.add_argument("--updates-per-step", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--dyna", action="store_true", help="add a world model and imagined rows")
    parser.add_argument("--real-ratio", type=float, default=0.5)
    parser.add_argument("--starts", type=int, default=25, help="imagined start states per env step")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--model-updates-per-step", type=int, default=1)
    parser.add_argument("--termination-fn", default="learners.termination:inverted_pendulum")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PolicyConfig fields (YAML values)")
    args = parser.parse_args()
    args.overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(1)

    results = [steps_to_target(args, seed) for seed in args.seeds]
    shown = [f"{r:,}" if r is not None else f"not reached in {args.budget:,}" for r in results]
    finite = [r if r is not None else float("inf") for r in results]
    print(f"\nenv steps to eval >= {args.target:g}, seeds {args.seeds}: {' / '.join(shown)}; "
          f"median {statistics.median(finite):g}")


if __name__ == "__main__":
    main()
