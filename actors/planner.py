"""Optimistic planning for rollout workers, in the style of COPlanner's UP-MPC.

At every vector step, for each of the N env observations, the planner rolls K candidate action sequences of H
steps through the learned world model: candidate actions are drawn from the (stochastic) policy at each
imagined state, the model is sampled with a random elite per row and step (``WorldModel.step``), and every
candidate is scored optimistically::

    score = sum_{t < H} gamma^t * (r_t + bonus_scale * disagreement_t)

counting no step after the model predicts termination (the terminating step's own reward counts). The policy's
critic is not part of the acting weights (``SACLearner.policy_state()`` holds the actor only), so there is no
terminal value. The first action of the best candidate is executed; the rest is thrown away (MPC). A candidate
with a non-finite prediction scores -inf; an observation whose candidates all do gets candidate 0, a plain
policy sample.

The uncertainty bonus makes exploration optimistic: among sequences of similar predicted return, the one the
elites disagree most about is preferred, which steers the real env toward states the model knows least.

Dimensions: N envs (observations planned for), K candidates, H horizon, E ensemble members, O observation
size, A action size. Rows of the batched model rollout are ordered obs-major: row ``n * K + k``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from actors.config import PlannerConfig


def _rollout_scores(
    model: Any,
    obs: Tensor,
    horizon: int,
    gamma: float,
    bonus_scale: float,
    next_action: Callable[[int, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Roll rows ``obs`` (R, O) out for ``horizon`` model steps with actions ``next_action(t, state)`` (R, A).

    Returns the optimistic scores (R,) (-inf for a row with a non-finite prediction before it terminated) and the
    first actions (R, A). Every row stays in the batch (one model forward per step); a terminated row's later
    steps are computed and ignored.
    """
    rows = obs.shape[0]
    score = torch.zeros(rows, dtype=torch.float32, device=obs.device)
    alive = torch.ones(rows, dtype=torch.bool, device=obs.device)
    finite = torch.ones(rows, dtype=torch.bool, device=obs.device)
    state, first, discount = obs, None, 1.0
    for t in range(horizon):
        action = next_action(t, state)
        if first is None:
            first = action
        next_obs, reward, terminated, spread = model.step(state, action)
        gain = reward + bonus_scale * spread
        ok = torch.isfinite(gain) & torch.isfinite(next_obs).all(dim=1)
        finite &= ok | ~alive
        # torch.where, not a product with alive: a NaN after termination must not reach the score
        score = score + torch.where(alive & ok, discount * gain, torch.zeros_like(gain))
        alive = alive & ~terminated & ok
        if not bool(alive.any()):
            break
        state = torch.where(ok.unsqueeze(1), next_obs, state)
        discount *= gamma
    score = torch.where(finite, score, torch.full_like(score, -math.inf))
    return score, first


def score_sequences(model: Any, obs: Tensor, actions: Tensor, gamma: float = 0.99, bonus_scale: float = 0.0) -> Tensor:
    """Optimistic scores (N, K) of fixed action sequences ``actions`` (N, K, H, A) from observations ``obs`` (N, O).

    ``model.step(obs, action)`` returns (next_obs, reward, terminated, disagreement) as ``WorldModel.step``; the
    model needs ``obs_dim`` and ``act_dim``. The score is the module docstring's: discounted reward plus
    ``bonus_scale`` times disagreement, nothing after predicted termination, -inf after a non-finite prediction.
    """
    if obs.dim() != 2 or obs.shape[1] != model.obs_dim:
        raise ValueError(f"obs has shape {tuple(obs.shape)}, expected (N, {model.obs_dim})")
    expected = f"({obs.shape[0]}, K, H, {model.act_dim})"
    if actions.dim() != 4 or actions.shape[0] != obs.shape[0] or actions.shape[3] != model.act_dim:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected {expected}")
    if actions.shape[1] < 1 or actions.shape[2] < 1:
        raise ValueError(f"actions has shape {tuple(actions.shape)}, expected {expected} with K >= 1 and H >= 1")
    n, k, h, a = actions.shape
    rows = obs.repeat_interleave(k, dim=0)
    flat = actions.reshape(n * k, h, a)
    score, _ = _rollout_scores(model, rows, h, gamma, bonus_scale, lambda t, state: flat[:, t])
    return score.reshape(n, k)


def best_first_actions(scores: Tensor, first_actions: Tensor) -> Tensor:
    """The first action (N, A) of each observation's best candidate: ``scores`` (N, K), ``first_actions`` (N, K, A).

    Ties and all -inf rows go to the lowest candidate index (candidate 0 when every candidate failed).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected (N, K)")
    if first_actions.dim() != 3 or first_actions.shape[:2] != scores.shape:
        raise ValueError(f"first_actions has shape {tuple(first_actions.shape)}, expected "
                         f"({scores.shape[0]}, {scores.shape[1]}, A)")
    best = torch.argmax(torch.nan_to_num(scores, nan=-math.inf, neginf=-math.inf), dim=1)
    best = torch.where(torch.isfinite(scores).any(dim=1), best, torch.zeros_like(best))
    return first_actions[torch.arange(scores.shape[0], device=scores.device), best]


class Planner:
    """Chooses actions for a batch of real observations by optimistic model-predictive search.

    Usage (a rollout worker, once a world model is loaded)::

        planner = Planner(config.planner, policy, model)   # the worker's own policy and world model
        action = planner.act(obs)                           # (N, O) numpy -> (N, A) float32

    ``policy`` needs ``act_tensor(obs)`` and ``obs_dim``; ``model`` needs ``step(obs, action)`` (as
    ``WorldModel.step``), ``obs_dim`` and ``act_dim``. Both are read at every call, so weights loaded into them
    between calls take effect at once.
    """

    def __init__(self, config: PlannerConfig, policy: Any, model: Any):
        self.config, self._policy, self._model = config, policy, model
        self.last_scores: Tensor | None = None
        """(N, K) scores of the candidates of the latest ``plan`` call."""

    def plan(self, obs: Tensor) -> Tensor:
        """First actions (N, A) of the best of K policy-proposed candidates per observation (N, O)."""
        if obs.dim() != 2 or obs.shape[1] != self._policy.obs_dim:
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected (N, {self._policy.obs_dim})")
        config, n = self.config, obs.shape[0]
        k = config.num_candidates
        with torch.no_grad():
            score, first = _rollout_scores(self._model, obs.repeat_interleave(k, dim=0), config.horizon,
                                           config.gamma, config.bonus_scale,
                                           lambda t, state: self._policy.act_tensor(state))
        self.last_scores = score.reshape(n, k)
        return best_first_actions(self.last_scores, first.reshape(n, k, -1))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """``plan`` for numpy observations (N, O): float32 actions (N, A) in env units."""
        batch = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32))
        return self.plan(batch).cpu().numpy().astype(np.float32, copy=False)
