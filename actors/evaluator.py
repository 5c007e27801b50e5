"""Evaluator: the deterministic policy for N episodes on an env of its own, and optionally its return estimated in
the newest world model (``eval.in_model``: :mod:`actors.model_evaluator`, from start states of its env's resets)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from actors.envs import EnvConfig, make_env
from actors.metrics import EvaluatorRecorder
from actors.config import ModelEvalConfig
from actors.model_evaluator import ModelEvalResult, ModelEvaluator

FIRST_MODEL_WAIT_S = 30.0
"""Longest wait for the first world model an in-model evaluation needs (none published yet: no estimate)."""
START_SEEDS = 10**9
"""Reset seeds of the in-model start states begin here (real episodes use seed + 1000 * evaluation + episode)."""


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
    model: ModelEvalResult | None = None
    """The estimate in the world model (``in_model`` evaluations once a model is published), else None."""
    model_version: int | None = None
    """Version of the world model of ``model``."""


class Evaluator:
    """Runs a given policy deterministically.

    Usage::

        evaluator = Evaluator(env_config, make_policy, seed=0)
        result = evaluator.evaluate(policy_state, episodes=5)   # an EvalResult: return_mean, returns, lengths, ...

    In the model too (``eval.in_model``), with the store's world model and the estimate's settings::

        evaluator = Evaluator(env_config, make_policy, model_weights=client, make_model=make_model,
                              model_eval=ModelEvalConfig(starts=32))
        result = evaluator.evaluate(policy_state, episodes=0, in_model=True)   # result.model: a ModelEvalResult

    ``metrics``: a recorder factory (``actors.metrics.EvaluatorRecorder`` and subclasses), called once here with
    ``index``, so that the recorder lives in the evaluator's process.
    """

    def __init__(self, env_config: EnvConfig, make_policy: Callable[[], Any], seed: int = 0, index: int = 0,
                 metrics: Callable[[int], EvaluatorRecorder] = EvaluatorRecorder, model_weights: Any = None,
                 make_model: Callable[[], Any] | None = None, model_eval: ModelEvalConfig | None = None):
        self._env = make_env(env_config)
        self._make_policy = make_policy
        self._policy = make_policy()
        self._seed = seed
        self._evaluations = 0
        self._metrics = metrics(index)
        self._model_weights, self._make_model, self._model_eval = model_weights, make_model, model_eval
        self._in_model: ModelEvaluator | None = None

    def evaluate(self, policy_state: Any, episodes: int, env_steps: int | None = None,
                 version: int | None = None, in_model: bool = False) -> EvalResult:
        """Mean return over ``episodes`` (0: none, the return is NaN) and, with ``in_model``, the estimate in the
        newest world model; ``env_steps`` and ``version`` (what the policy is) are echoed in the result."""
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
        model = self._estimate(policy_state) if in_model else None
        result = EvalResult(
            return_mean=float(np.mean(returns)) if returns else float("nan"),
            return_std=float(np.std(returns)) if returns else float("nan"),
            returns=tuple(returns),
            lengths=tuple(lengths),
            seconds=time.perf_counter() - start,
            env_steps=env_steps,
            version=version,
            model=model,
            model_version=self._model_weights.version if model is not None else None,
        )
        self._metrics.record(result)
        return result

    def _estimate(self, policy_state: Any) -> ModelEvalResult | None:
        """The policy's return in the newest world model the store has answered with (polled without waiting,
        except for the first), or None while none is published."""
        if self._model_weights is None or self._make_model is None:
            raise ValueError("evaluate(in_model=True): this evaluator was made without model_weights and make_model")
        first = self._in_model is None
        state = self._model_weights.wait_first(FIRST_MODEL_WAIT_S) if first else self._model_weights.poll()
        if state is None and first:
            return None
        if first:
            self._in_model = ModelEvaluator(self._make_model(), self._make_policy, self._start_states(),
                                            self._model_config(), seed=self._seed)
        if state is not None:
            self._in_model.model.load_state(state)
        return self._in_model.evaluate(policy_state)

    def _start_states(self) -> np.ndarray:
        """Start states of the estimate: first observations of this env's resets (its own initial-state
        distribution), from seeds no real evaluation episode uses."""
        starts = (self._model_eval or ModelEvalConfig()).starts
        return np.stack([np.asarray(self._env.reset(seed=START_SEEDS + self._seed + i)[0], dtype=np.float32)
                         .reshape(-1) for i in range(starts)])

    def _model_config(self) -> ModelEvalConfig:
        """``model_eval`` with horizon 0 replaced by the env's episode limit (1000 without one)."""
        config = self._model_eval or ModelEvalConfig()
        if config.horizon > 0:
            return config
        spec = getattr(self._env, "spec", None)
        limit = spec.max_episode_steps if spec is not None and spec.max_episode_steps else 1000
        return replace(config, horizon=int(limit))

    def close(self) -> None:
        self._env.close()
