"""A tiny env that fails on purpose: for tests of how rollout workers survive broken envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class FlakyEnv(gym.Env):
    """Observation (3,), action (1,) in [-1, 1], episodes of ``episode_length`` steps.

    Every ``fail_every``-th step of an instance's life fails: ``mode="raise"`` raises RuntimeError, ``"nan"``
    returns a NaN observation, ``"nan_reward"`` an inf reward. ``fail_every=1`` fails every step.
    """

    def __init__(self, fail_every: int = 0, mode: str = "raise", episode_length: int = 10):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.fail_every, self.mode, self.episode_length = fail_every, mode, episode_length
        self.steps_alive = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.steps_alive += 1
        self.t += 1
        obs = np.full(3, self.t, dtype=np.float32)
        reward = 1.0
        if self.fail_every and self.steps_alive % self.fail_every == 0:
            if self.mode == "raise":
                raise RuntimeError(f"simulator blew up at step {self.steps_alive}")
            if self.mode == "nan":
                obs[1] = np.nan
            else:
                reward = float("inf")
        return obs, reward, False, self.t >= self.episode_length, {}
