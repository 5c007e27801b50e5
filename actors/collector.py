"""Dataset collection for ``dynaray collect``: a behaviour policy (random, or a checkpoint with optional noise) on
an env of its own, recorded episode by episode.

Behaviour: ``policy=None`` draws uniform random actions from the action box; otherwise the policy acts
deterministically (its mean action) plus Gaussian noise of ``noise`` times the action half-range, clipped to the
box, or, with ``stochastic``, samples from its own action distribution (then ``noise`` is added on top). The last
episode is cut at the step budget (its last row marked truncated), so the dataset has exactly ``steps`` rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.envs import EnvConfig, make_env


@dataclass(frozen=True)
class Collected:
    """What :func:`collect` recorded."""

    episodes: list[dict[str, np.ndarray]] = field(repr=False)
    """Per episode, Minari's layout: ``observations`` (T + 1, O), ``actions`` (T, A), ``rewards``,
    ``terminations``, ``truncations`` (T,)."""
    returns: tuple[float, ...]
    """Return of every episode that ended (terminated or truncated by the env), not the one cut by the budget."""
    steps: int
    """Transitions recorded."""
    seconds: float
    """Wall time."""

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def transitions(self) -> dict[str, np.ndarray]:
        """The episodes as transition columns (obs, action, reward, next_obs, terminated, truncated, episode, step):
        rows of one episode consecutive, ``episode`` numbered 0, 1, ... in order."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated",
                                                                 "truncated", "episode", "step")}
        for number, e in enumerate(self.episodes):
            length = len(e["actions"])
            parts["obs"].append(e["observations"][:-1])
            parts["next_obs"].append(e["observations"][1:])
            parts["action"].append(e["actions"])
            parts["reward"].append(e["rewards"])
            parts["terminated"].append(e["terminations"])
            parts["truncated"].append(e["truncations"])
            parts["episode"].append(np.full(length, number, dtype=np.int64))
            parts["step"].append(np.arange(length, dtype=np.int64))
        return {k: np.concatenate(v) for k, v in parts.items()}


def collect(env_config: EnvConfig, steps: int, policy: Any = None, noise: float = 0.0, stochastic: bool = False,
            seed: int = 0) -> Collected:
    """Run the behaviour policy for ``steps`` env steps (see the module docstring) and record every transition.

    ``policy``: None (uniform random actions) or an object with ``act(obs, deterministic) -> action`` (a
    ``learners.sac.Policy`` with its weights loaded).
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: expected >= 1")
    if noise < 0:
        raise ValueError(f"noise={noise}: expected >= 0")
    start = time.perf_counter()
    env = make_env(env_config)
    rng = np.random.default_rng(seed)
    low = np.asarray(env.action_space.low, dtype=np.float64)
    high = np.asarray(env.action_space.high, dtype=np.float64)
    half_range = (high - low) / 2.0
    env.action_space.seed(seed)
    episodes, returns = [], []
    try:
        obs, _ = env.reset(seed=seed)
        observations, actions, rewards, terminations, truncations = [np.asarray(obs, np.float32)], [], [], [], []
        for t in range(steps):
            if policy is None:
                action = env.action_space.sample()
            else:
                action = np.asarray(policy.act(observations[-1], deterministic=not stochastic), dtype=np.float64)
                if noise > 0:
                    action = action + noise * half_range * rng.standard_normal(action.shape)
                action = np.clip(action, low, high)
            obs, reward, terminated, truncated, _ = env.step(np.asarray(action, dtype=env.action_space.dtype))
            last = t == steps - 1
            observations.append(np.asarray(obs, np.float32))
            actions.append(np.asarray(action, np.float32))
            rewards.append(float(reward))
            terminations.append(bool(terminated))
            truncations.append(bool(truncated) or (last and not terminated))
            if terminated or truncated or last:
                episodes.append({
                    "observations": np.stack(observations), "actions": np.stack(actions),
                    "rewards": np.asarray(rewards, dtype=np.float32), "terminations": np.asarray(terminations),
                    "truncations": np.asarray(truncations),
                })
                if terminated or truncated:
                    returns.append(float(np.sum(rewards)))
                if not last:
                    obs, _ = env.reset()
                    observations, actions, rewards, terminations, truncations = (
                        [np.asarray(obs, np.float32)], [], [], [], [])
    finally:
        env.close()
    return Collected(episodes, tuple(returns), steps, time.perf_counter() - start)
