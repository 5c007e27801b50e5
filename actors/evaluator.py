"""Evaluator: the deterministic policy for N episodes on an env of its own, and optionally its return estimated in
the newest world model (``eval.in_model``: :mod:`actors.model_evaluator`, from start states of its env's resets)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from actors.envs import EnvConfig, make_env
from actors.metrics import EvaluatorRecorder
from actors.model_evaluator import ModelEvalConfig, ModelEvalResult, ModelEvaluator

FIRST_MODEL_WAIT_S = 30.0
"""Longest wait for the first world model an in-model evaluation needs (none published yet: no estimate)."""
START_SEEDS = 10**9
"""Reset seeds of the in-model start states begin here (real episodes use seed + 1000 * evaluation + episode)."""


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
    in_model: bool = False
    """Also estimate every evaluated policy's return in the newest world model (no env steps; needs
    world_model.enabled): the evals table and the learning curve get it beside the real return."""
    real_every: int = field(default=1, metadata={"check": ">= 1"})
    """With ``in_model``: run the real episodes only at every this-many-th evaluation (and the last); the others
    are scored in the model alone."""
    model_starts: int = field(default=32, metadata={"check": ">= 1"})
    """With ``in_model``: start states (the evaluator's own env resets) rolled out once per elite member."""
    model_horizon: int = field(default=0, metadata={"check": ">= 0", "note": "0: the env's episode limit"})
    """With ``in_model``: model steps per rollout."""

    def real_episodes(self, index: int, final: bool = False) -> int:
        """Real episodes of a run's ``index``-th evaluation (0, 1, ...): all of them, or with ``in_model`` only at
        every ``real_every``-th and the ``final`` one."""
        due = not self.in_model or final or index % self.real_every == 0
        return self.episodes if due else 0


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
