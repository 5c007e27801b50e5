"""Evaluator: the deterministic policy for N episodes on an env of its own."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from actors.envs import EnvConfig, make_env
from actors.metrics import EvaluatorRecorder


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation schedule and evaluators. ``metadata["check"]`` declares a field's constraint (checked by
    ``system.config``)."""

    every_steps: int = field(default=250, metadata={"check": ">= 1"})
    """Evaluate the policy published at every multiple of this many env steps."""
    episodes: int = field(default=5, metadata={"check": ">= 1"})
    """Episodes per evaluation."""
    num_workers: int = field(default=1, metadata={"check": ">= 1"})
    """Evaluator actors; evaluations queue round robin over them."""
    num_cpus: float = field(default=0.5, metadata={"check": ">= 0"})
    """Ray CPUs per evaluator."""
    max_restarts: int = field(default=10, metadata={"check": ">= -1", "note": "-1: no limit"})
    """How often Ray restarts an evaluator when its process dies (the driver sends it the lost evaluation again)."""


@dataclass(frozen=True)
class EvalResult:
    """What one :meth:`Evaluator.evaluate` call measured."""

    return_mean: float
    """Mean return over the episodes."""
    return_std: float
    """Standard deviation of the returns."""
    returns: tuple[float, ...]
    """Return of each episode."""
    lengths: tuple[int, ...]
    """Length of each episode."""
    seconds: float
    """Wall time of the evaluation."""
    env_steps: int | None = None
    """Env steps of the run at which the evaluated policy was taken, as the caller gave it."""
    version: int | None = None
    """Version of the evaluated policy, as the caller gave it."""


class Evaluator:
    """Runs a given policy deterministically.

    Usage::

        evaluator = Evaluator(env_config, make_policy, seed=0)
        result = evaluator.evaluate(policy_state, episodes=5)   # an EvalResult: return_mean, returns, lengths, ...

    ``metrics``: a recorder factory (``actors.metrics.EvaluatorRecorder`` and subclasses), called once here with
    ``index``, so that the recorder lives in the evaluator's process.
    """

    def __init__(self, env_config: EnvConfig, make_policy: Callable[[], Any], seed: int = 0, index: int = 0,
                 metrics: Callable[[int], EvaluatorRecorder] = EvaluatorRecorder):
        self._env = make_env(env_config)
        self._policy = make_policy()
        self._seed = seed
        self._evaluations = 0
        self._metrics = metrics(index)

    def evaluate(self, policy_state: Any, episodes: int, env_steps: int | None = None,
                 version: int | None = None) -> EvalResult:
        """Mean return over ``episodes``; ``env_steps`` and ``version`` (what the policy is) are echoed in the
        result."""
        start = time.perf_counter()
        self._policy.load_state(policy_state)
        returns, lengths = [], []
        for episode in range(episodes):
            obs, _ = self._env.reset(seed=self._seed + 1000 * self._evaluations + episode)
            total, length, done = 0.0, 0, False
            while not done:
                action = self._policy.act(np.asarray(obs, dtype=np.float32), deterministic=True)
                obs, reward, terminated, truncated, _ = self._env.step(action)
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
        self._evaluations += 1
        result = EvalResult(
            return_mean=float(np.mean(returns)),
            return_std=float(np.std(returns)),
            returns=tuple(returns),
            lengths=tuple(lengths),
            seconds=time.perf_counter() - start,
            env_steps=env_steps,
            version=version,
        )
        self._metrics.record(result)
        return result

    def close(self) -> None:
        self._env.close()
