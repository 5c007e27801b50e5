"""Policy evaluation in a learned world model: returns estimated by imagined rollouts, no env steps.

Ctrl-World ranks policies by their rollouts in a world model; "Validate on Sim, Detect on Real" (VSDR) scores a
policy by its evaluation combined with how far it strays from the data the model knows. Here:

- Each policy is rolled out deterministically in the frozen model from B start states, once per elite member:
  K x B rows, row (k, b) following member k's sampled dynamics from start b. The mean over the members of their
  mean return is the estimate; the lowest and highest member means bound it (the ensemble's spread as the
  interval: a member that learned other dynamics predicts another return).
- A row ends at a predicted termination, at the horizon, or, counted as untrusted, before a transition with a
  non-finite prediction or an elite disagreement above ``max_disagreement`` (MOReL's unknown states: set from the
  model's holdout calibration); an untrusted row keeps the return it had.
- The score: the estimate minus ``penalty_scale`` times the (discounted) disagreement summed along each row
  (MOPO's penalty: about the reward error the model makes where the policy leads it), so that of two policies
  with the same imagined return the one that stays near the data ranks first. ``ood`` is the policy's mean
  disagreement over the model's disagreement on the dataset's own transitions (1: as close to the data as the
  data itself).
- Every policy sees the same start states and the same model noise (the model's generator restarts at the same
  seed for each evaluation): common random numbers, so differences between policies are the policies'.

Dims: K elites, B start states, O obs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from actors.config import ModelEvalConfig

__all__ = ["ModelEvalResult", "ModelEvaluator"]


@dataclass(frozen=True)
class ModelEvalResult:
    """What one :meth:`ModelEvaluator.evaluate` estimated."""

    return_mean: float
    """Estimated return: the mean over the K members of their mean over the B start states."""
    return_low: float
    """Lowest member's mean return."""
    return_high: float
    """Highest member's mean return."""
    member_returns: tuple[float, ...]
    """(K,) each member's mean return."""
    score: float
    """``return_mean`` minus the disagreement penalty (VSDR-style; what a ranking sorts by)."""
    untrusted_fraction: float
    """Fraction of the K x B rollouts stopped before an untrusted transition."""
    terminated_fraction: float
    """Fraction of the rollouts ended by a predicted termination."""
    length_mean: float
    """Mean rollout length in model steps."""
    disagreement_mean: float
    """Mean elite disagreement over every imagined transition of the policy."""
    ood: float | None
    """``disagreement_mean`` over the model's mean disagreement on the dataset's transitions; None without them."""
    transitions: int
    """Imagined transitions made."""
    seconds: float
    """Wall time of the evaluation."""


class ModelEvaluator:
    """Estimates policies' returns in a world model (module docstring).

    Usage::

        evaluator = ModelEvaluator(world_model, make_policy, start_states, ModelEvalConfig(horizon=1000),
                                   reference=(dataset_obs, dataset_action))
        result = evaluator.evaluate(policy_state)   # a ModelEvalResult: return_mean, return_low, score, ood, ...

    Args:
        model: a ``learners.world_model.WorldModel`` with its weights loaded (``step`` with ``members``,
            ``reseed``, ``elites``).
        make_policy: makes the acting policy (``act_tensor(obs, deterministic)``, ``load_state``).
        start_states: (N, O) states to start from, e.g. the first observations of the dataset's episodes; B of them
            are drawn once here (all of them when N <= B).
        reference: the dataset's (obs, action) rows, (M, O) and (M, A), whose disagreement ``ood`` is relative to.
        seed: draws the start states and seeds the model's noise at every evaluation.
    """

    def __init__(self, model: Any, make_policy: Callable[[], Any], start_states: np.ndarray,
                 config: ModelEvalConfig = ModelEvalConfig(),
                 reference: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0):
        states = np.asarray(start_states, dtype=np.float32)
        if states.ndim != 2 or states.shape[1] != model.obs_dim or len(states) == 0:
            raise ValueError(f"start_states has shape {states.shape}, expected (N >= 1, {model.obs_dim})")
        picked = np.random.default_rng(seed).choice(len(states), size=min(config.starts, len(states)), replace=False)
        self.model = model
        self.config = config
        self.starts = torch.from_numpy(states[np.sort(picked)])
        self._policy = make_policy()
        self._seed = seed
        self.reference_disagreement = None if reference is None else self._reference(*reference)

    def _reference(self, obs: np.ndarray, action: np.ndarray, rows: int = 4096) -> float:
        """The model's mean elite disagreement on up to ``rows`` of the dataset's (obs, action) rows."""
        pick = np.random.default_rng(self._seed + 1).permutation(len(obs))[:rows]
        self.model.reseed(self._seed)
        step = self.model.step(torch.as_tensor(obs[pick], dtype=torch.float32),
                               torch.as_tensor(action[pick], dtype=torch.float32))
        return float(step.disagreement.mean())

    def evaluate(self, policy_state: Any) -> ModelEvalResult:
        """Estimate the return of the policy with weights ``policy_state`` (``SACLearner.policy_state()``)."""
        started = time.perf_counter()
        self._policy.load_state(policy_state)
        self.model.reseed(self._seed)
        elites, starts = len(self.model.elites), self.starts.shape[0]

        # K x B rows, member-major: row k * B + b starts at start b and follows elite k
        rows = torch.arange(elites * starts)
        members = rows // starts
        obs = self.starts.repeat(elites, 1)
        returns = torch.zeros(elites * starts, dtype=torch.float64)
        penalties = torch.zeros_like(returns)
        lengths = torch.zeros(elites * starts, dtype=torch.int64)
        untrusted = torch.zeros(elites * starts, dtype=torch.bool)
        terminated = torch.zeros_like(untrusted)
        spread_sum, transitions, discount = 0.0, 0, 1.0

        for _ in range(self.config.horizon):
            action = self._policy.act_tensor(obs, deterministic=True)
            step = self.model.step(obs, action, members)

            # stop untrusted rows before their transition: non-finite, or more uncertain than the model's data
            finite = torch.isfinite(step.next_obs).all(dim=1) & torch.isfinite(step.reward) \
                & torch.isfinite(step.disagreement)
            trusted = finite & (step.disagreement <= self.config.max_disagreement)
            untrusted[rows[~trusted]] = True

            # account the trusted transitions
            kept = rows[trusted]
            spread = step.disagreement[trusted].double()
            returns[kept] += discount * step.reward[trusted].double()
            penalties[kept] += discount * spread
            lengths[kept] += 1
            spread_sum, transitions = spread_sum + float(spread.sum()), transitions + int(kept.numel())
            ended = trusted & step.terminated
            terminated[rows[ended]] = True

            # continue the rows that neither ended nor stopped
            alive = trusted & ~step.terminated
            obs, members, rows = step.next_obs[alive], members[alive], rows[alive]
            discount *= self.config.gamma
            if rows.numel() == 0:
                break

        member_returns = returns.view(elites, starts).mean(dim=1)
        scores = (returns - self.config.penalty_scale * penalties).view(elites, starts).mean(dim=1)
        disagreement_mean = spread_sum / max(transitions, 1)
        reference = self.reference_disagreement
        return ModelEvalResult(
            return_mean=float(member_returns.mean()), return_low=float(member_returns.min()),
            return_high=float(member_returns.max()), member_returns=tuple(member_returns.tolist()),
            score=float(scores.mean()), untrusted_fraction=float(untrusted.double().mean()),
            terminated_fraction=float(terminated.double().mean()), length_mean=float(lengths.double().mean()),
            disagreement_mean=disagreement_mean,
            ood=None if reference is None else disagreement_mean / max(reference, 1e-12),
            transitions=transitions, seconds=time.perf_counter() - started)
