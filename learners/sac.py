"""Soft actor-critic: the learner (``SACLearner``) and its acting half (``Policy``).

The critics are one ``EnsembleMLP`` with ``num_critics`` members, so every critic evaluation is a single
batched forward. An update computes the critic, actor and temperature losses from the same parameters,
then applies all three steps or none (when any loss or gradient norm is non-finite).

With ``critic_subset`` M below ``num_critics`` E the learner is REDQ (Chen et al., 2021): the Bellman target takes
the minimum over M target critics drawn at random for every update, and the actor maximises the mean of all E
critics. With M = E it is SAC's clipped double Q: the minimum over every critic, for the target and the actor.

Speed (the update is the policy learner's whole cost): the critics are evaluated by plain tensor calls on their
parameters rather than module calls; the single-output head is a multiply and a sum instead of a matmul with one
output column (which BLAS runs far below peak); the actor loss reads the critics through detached parameters, so
one backward pass over the sum of the three losses gives each parameter exactly its own loss's gradient; the
target critic evaluates only the M members it uses; Adam steps are fused kernels.

Dimensions: B batch rows, E critics (``num_critics``), M critics in a target's subset (``critic_subset``),
O obs dim, A action dim, I critic input features (O + A), H hidden features.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learners._batch import check_columns, to_tensors
from learners._common import autocast, generator_state, load_generator_state, resolve_precision, to_cpu
from learners.config import PolicyConfig
from learners.cuda_graphs import CapturedCall, PinnedBatch
from learners.networks import EnsembleLayerNorm, EnsembleLinear, EnsembleMLP, mlp, resolve_device, seeded_init

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
BC_LOG_STD_MIN = -3.0
"""Behaviour cloning fits the log std down to this floor only (std 0.05 before tanh): on deterministic data the
likelihood would drive it down without end, and its gradients up with it."""
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_BATCH_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated")
_METRICS = ("critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean", "critic_grad_norm",
            "actor_grad_norm")
"""What ``SACLearner.update`` returns, in the order of ``SACLearner._losses``'s values."""


def _bound(value: Any, act_dim: int, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(act_dim, float(array))
    if array.shape != (act_dim,):
        raise ValueError(f"{name} has shape {array.shape}, expected ({act_dim},) or a scalar")
    return array


class TanhGaussianActor(nn.Module):
    """Gaussian policy squashed by tanh and scaled to the action box: obs (B, O) -> action (B, A), log_prob (B,)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int],
        action_low: Any,
        action_high: Any,
    ):
        super().__init__()
        low = _bound(action_low, act_dim, "action_low")
        high = _bound(action_high, act_dim, "action_high")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
            raise ValueError(f"action bounds low={low.tolist()}, high={high.tolist()}: expected finite, low < high")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden_sizes, activation=nn.ReLU)
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(
        self, obs: Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Action in env units (B, A) and its log-density (B,); deterministic uses the Gaussian mean."""
        mean, log_std = self.trunk(obs).float().chunk(2, dim=-1)  # fp32 distribution under autocast
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            noise = torch.zeros_like(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        pre_tanh = mean + log_std.exp() * noise
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
        # log |d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        log_det_tanh = (2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        log_prob = gaussian_log_prob - log_det_tanh - self.action_scale.log().sum()
        action = torch.tanh(pre_tanh) * self.action_scale + self.action_bias
        return action, log_prob


class Policy:
    """Acting half of SAC used by rollout workers, imagination workers and the evaluator.

    Weights come from ``SACLearner.policy_state()`` via ``load_state``; stochastic actions are drawn from the
    policy's own generator seeded with ``seed``, so a worker's action stream is reproducible.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Any,
        action_high: Any,
        hidden_sizes: Sequence[int],
        seed: int = 0,
        device: str = "cpu",
    ):
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.device = resolve_device(device)
        with seeded_init(seed):
            actor = TanhGaussianActor(obs_dim, act_dim, hidden_sizes, action_low, action_high)
        self.actor = actor.to(self.device).eval().requires_grad_(False)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        self.dtype = torch.float32
        """Dtype of the trunk's matmuls (``set_dtype``); the action distribution is fp32 either way."""
        self._trunk = self._trunk_functions()

    def load_state(self, policy_state: Mapping[str, Tensor]) -> None:
        """Load actor weights (``SACLearner.policy_state()``), from any device."""
        self.actor.load_state_dict(policy_state)
        self._trunk = self._trunk_functions()

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run the trunk's matmuls in ``dtype`` (torch.bfloat16 or torch.float32) on copies of the weights made
        here and at every ``load_state``; the trunk's output is cast back to fp32 before the tanh-Gaussian."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"Policy dtype {dtype}: expected torch.float32 or torch.bfloat16")
        self.dtype = dtype
        self._trunk = self._trunk_functions()

    def _trunk_functions(self) -> list[Callable[[Tensor], Tensor]]:
        """The actor's trunk as plain functions over its parameters (in ``self.dtype``), which skips
        ``nn.Module`` call overhead (a good part of a small batch's forward time); modules other than Linear and
        ReLU are called as they are."""
        functions: list[Callable[[Tensor], Tensor]] = []
        for module in self.actor.trunk:
            if type(module) is nn.Linear:
                functions.append(partial(F.linear, weight=module.weight.to(self.dtype),
                                         bias=module.bias.to(self.dtype)))
            elif type(module) is nn.ReLU:
                functions.append(torch.relu)
            else:
                functions.append(module)
        return functions

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions (N, A) for observations (N, O), or (A,) for a single observation (O,); float32, env units."""
        array = np.asarray(obs, dtype=np.float32)
        if array.ndim not in (1, 2) or array.shape[-1] != self.obs_dim:
            raise ValueError(f"obs has shape {array.shape}, expected (N, {self.obs_dim}) or ({self.obs_dim},)")
        batch = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, self.obs_dim))).to(self.device)
        with torch.inference_mode():
            action = self._act(batch, deterministic).cpu().numpy()
        return action[0] if array.ndim == 1 else action

    def act_tensor(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions (N, A) for observations (N, O), returned on ``obs.device``."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected (N, {self.obs_dim})")
        with torch.no_grad():
            return self._act(obs.to(self.device, torch.float32), deterministic).to(obs.device)

    def _act(self, obs: Tensor, deterministic: bool) -> Tensor:
        """``self.actor(obs, deterministic, self._generator)[0]`` without the log-density: the same operations on
        the same values in the same order (so the same bits and the same generator draws), done in place where
        the intermediate is this call's own."""
        hidden = obs.to(self.dtype)
        for function in self._trunk:
            hidden = function(hidden)
        mean, log_std = hidden.float().chunk(2, dim=-1)
        if deterministic:
            noise = torch.zeros_like(mean)
        else:
            noise = torch.randn(mean.shape, generator=self._generator, device=mean.device, dtype=mean.dtype)
        pre_tanh = mean + log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp_().mul_(noise)
        return pre_tanh.tanh_().mul_(self.actor.action_scale).add_(self.actor.action_bias)


def _plan(critic: EnsembleMLP) -> list[tuple[str, int, nn.Module]]:
    """How ``SACLearner._q_with`` evaluates ``critic``: per layer (step, index of its first parameter in
    ``critic.parameters()``, module); the final one-output linear layer is the step "head". Other modules are
    called as they are, so they must have no parameters."""
    plan: list[tuple[str, int, nn.Module]] = []
    index = 0
    for module in critic.layers:
        if type(module) is EnsembleLinear:
            head = module is critic.layers[-1] and module.out_features == 1
            plan.append(("head" if head else "linear", index, module))
        elif type(module) is EnsembleLayerNorm:
            plan.append(("norm", index, module))
        elif type(module) is nn.ReLU:
            plan.append(("relu", index, module))
        elif any(True for _ in module.parameters()):
            raise TypeError(f"critic layer {module!r} has parameters; expected EnsembleLinear or EnsembleLayerNorm")
        else:
            plan.append(("module", index, module))
        index += len(list(module.parameters()))
    return plan


class SACLearner:
    """Soft actor-critic with ``num_critics`` fused critics, Polyak targets and automatic entropy tuning."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: Any,
        action_high: Any,
        config: PolicyConfig,
        seed: int = 0,
    ):
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device, config.hidden_sizes)
        """Matmul dtype of the update (``config.precision`` resolved on this machine)."""
        self.target_entropy = float(-act_dim if config.target_entropy is None else config.target_entropy)
        with seeded_init(seed):
            self.actor = TanhGaussianActor(obs_dim, act_dim, config.hidden_sizes, action_low, action_high)
            self.critic = EnsembleMLP(
                config.num_critics, obs_dim + act_dim, 1, config.hidden_sizes,
                activation=nn.ReLU, layer_norm=config.critic_layer_norm,
            )
        self.actor.to(self.device)
        self.critic.to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        graphs = (config.cuda_graphs and self.device.type == "cuda" and config.critic_subset == config.num_critics
                  and hasattr(torch.cuda.CUDAGraph, "register_generator_state"))  # torch >= 2.6: our generator
        self._adam = {"fused": True, "capturable": graphs}
        """Options of the three Adams: fused kernels; capturable (their step counts on the device) for graphs."""
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, **self._adam)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, **self._adam)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr, **self._adam)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())
        self._actor_params = list(self.actor.parameters())
        self._critic_plan = _plan(self.critic)
        self._graphs = UpdateGraphs(self) if graphs else None
        """The update as CUDA graphs (``config.cuda_graphs`` on CUDA), or None: eager."""
        if config.compile and self.device.type == "cuda":
            self._compile_losses()
        self.num_updates = 0
        """Applied (not skipped) updates."""
        self.nonfinite_streak = 0
        """Consecutive updates skipped because a loss or gradient norm was non-finite."""
        self.anchor: TanhGaussianActor | None = None
        """Frozen actor the update keeps the policy near (``config.anchor_weight``), or None."""

    def set_anchor(self) -> None:
        """Freeze a copy of the actor as it is now as the anchor of ``config.anchor_weight``'s trust region."""
        self.anchor = copy.deepcopy(self.actor).requires_grad_(False)
        self._recapture()

    def _recapture(self) -> None:
        """Drop the captured graphs: tensors they read were replaced (the anchor, the optimizers' state)."""
        if self._graphs is not None:
            self._graphs = UpdateGraphs(self)

    def _compile_losses(self) -> None:
        """``_losses`` through ``torch.compile`` from now on (``config.compile``; the tests call it on the CPU)."""
        self._losses = torch.compile(self._losses)

    def _anchor_distance(self, obs: Tensor) -> Tensor:
        """(B,) squared distance between the actor's and the anchor's deterministic actions in [-1, 1] units."""
        mean = self.actor.trunk(obs).float().chunk(2, dim=-1)[0]
        with torch.no_grad():
            anchor = self.anchor.trunk(obs).float().chunk(2, dim=-1)[0]
        return (torch.tanh(mean) - torch.tanh(anchor)).pow(2).sum(-1)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def _q(self, critic: EnsembleMLP, obs: Tensor, action: Tensor) -> Tensor:
        """Q-values of every critic in one batched forward: (B, O), (B, A) -> (E, B)."""
        return self._q_with(list(critic.parameters()), obs, action)

    def _q_with(self, params: Sequence[Tensor], obs: Tensor, action: Tensor) -> Tensor:
        """Q-values (E', B) of the critic ensemble whose parameters, in ``critic.parameters()`` order, are
        ``params`` (the critic's own, detached ones, or a subset of E' members of each)."""
        hidden = torch.cat([obs, action], dim=-1)
        hidden = hidden.expand(params[0].shape[0], *hidden.shape)
        for step, index, module in self._critic_plan:
            if step == "linear":  # (E', B, I) -> (E', B, H)
                hidden = torch.baddbmm(params[index + 1], hidden, params[index])
            elif step == "head":  # (E', B, H) -> (E', B): one output column as multiply and sum
                hidden = (hidden * params[index].transpose(1, 2)).sum(-1) + params[index + 1].squeeze(-1)
            elif step == "norm":
                normalized = F.layer_norm(hidden, (module.features,), eps=module.eps)
                hidden = torch.addcmul(params[index + 1], normalized, params[index])
            elif step == "relu":  # in place: the producing op does not keep its output for backward
                hidden = torch.relu_(hidden)
            else:
                hidden = module(hidden)
        return hidden

    def _critic_subset(self) -> Tensor | None:
        """Indices (M,) of the target critics of this update's Bellman target, drawn from the learner's generator;
        None when the target uses every critic (M = E), which draws nothing."""
        if self.config.critic_subset == self.config.num_critics:
            return None
        order = torch.randperm(self.config.num_critics, generator=self._generator, device=self.device)
        return order[: self.config.critic_subset]

    @torch.no_grad()
    def _targets(self, tensors: Mapping[str, Tensor], alpha: Tensor | None = None) -> Tensor:
        """Soft Bellman targets (B,): r + gamma * (1 - terminated) * (min_M Q'(s', a') - alpha * log pi(a'|s')).

        The minimum is over every target critic, or with M < E over M of them drawn after the next actions' noise
        (``_critic_subset``). Truncated rows bootstrap like any non-terminal row; terminal rows never read the
        next-state value.
        """
        alpha = self.log_alpha.exp() if alpha is None else alpha
        next_action, next_log_prob = self.actor(tensors["next_obs"], generator=self._generator)
        subset = self._critic_subset()
        params = self._target_params if subset is None else [p[subset] for p in self._target_params]
        next_q = self._q_with(params, tensors["next_obs"], next_action).min(dim=0).values
        next_value = torch.where(tensors["terminated"] > 0, 0.0, next_q - alpha * next_log_prob)
        return tensors["reward"] + self.config.gamma * next_value

    def _tensors(self, batch: Mapping[str, np.ndarray], checked: bool = False) -> dict[str, Tensor]:
        return to_tensors(batch, _BATCH_COLUMNS, self.obs_dim, self.act_dim, self.device, checked=checked)

    def _weights(self, batch: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        """Importance weights (B,) from the batch's ``weight`` column (all 1 without one), validated; the update
        divides them by their maximum."""
        if "weight" not in batch:
            return np.ones(rows, dtype=np.float32)
        weights = np.asarray(batch["weight"], dtype=np.float32)
        if weights.shape != (rows,) or not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(
                f"batch['weight'] has shape {weights.shape} and range [{weights.min(initial=np.inf):g}, "
                f"{weights.max(initial=-np.inf):g}], expected ({rows},) finite weights > 0"
            )
        return weights

    def update(self, batch: Mapping[str, np.ndarray], update_actor: bool = True) -> dict[str, Any]:
        """One SAC update on ``batch`` (columns per docs/architecture.md; extra columns ignored).

        ``update_actor=False`` steps only the critics (and their targets): the actor and the temperature stay as
        they are (a critic warm-up, e.g. after behaviour cloning).

        Returns the metrics (floats); if any loss or gradient norm is non-finite no parameter changes, the metrics
        carry ``skipped: 1.0`` and ``nonfinite_streak`` grows. With ``config.prioritized`` each row's squared TD
        error in the critic loss is weighted by the batch's ``weight`` column (importance weights, divided by
        their maximum; all 1 when the column is missing), and an applied update also returns ``td_error``: each
        row's |Q - target| averaged over the critics, a float32 array (B,), for the rows' new priorities.

        On CUDA with ``config.cuda_graphs`` the losses and the step are replays of CUDA graphs (``UpdateGraphs``):
        the same kernels on the same values, one read-back per update (the metrics).
        """
        rows = check_columns(batch, _BATCH_COLUMNS, self.obs_dim, self.act_dim)
        anchored = self.anchor is not None and self.config.anchor_weight > 0
        if self.config.prioritized:
            batch = {**batch, "weight": self._weights(batch, rows)}
        if self._graphs is not None:
            values, td, grads = self._graphs.losses(batch, rows, anchored)
        else:
            tensors = self._tensors(batch, checked=True)
            weights = None
            if self.config.prioritized:
                weights = torch.from_numpy(batch["weight"]).to(self.device, non_blocking=True)
            values, td, grads = self._losses(tensors, weights, anchored)

        values = values.tolist()  # the one read-back of the update
        metrics = dict(zip(_METRICS + (("anchor_distance",) if anchored else ()), values))
        if not all(math.isfinite(v) for v in values):
            self.nonfinite_streak += 1
            return {**metrics, "skipped": 1.0}
        if self.config.prioritized:  # read back before the step's kernels are queued (one wait on an accelerator)
            metrics["td_error"] = td.abs().mean(dim=0).cpu().numpy()
        if self._graphs is not None:
            self._graphs.step(grads, rows, anchored, update_actor)
        else:
            self._step(grads, update_actor)
        self.num_updates += 1
        self.nonfinite_streak = 0
        return metrics

    def _losses(self, tensors: Mapping[str, Tensor], weights: Tensor | None, anchored: bool,
                ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """The update's losses and gradients, with no host read and no parameter change (a CUDA graph replays
        it): the metrics (``_METRICS``, then the anchor distance when ``anchored``) as one tensor, the TD errors
        (E, B) and the gradients of the critics, the actor and log(alpha) in that order."""
        alpha = self.log_alpha.detach().exp()
        critic_params, actor_params = self._critic_params, self._actor_params

        with autocast(self.device, self.dtype):  # matmuls in self.dtype; Q-values and log-densities come out fp32
            # targets
            target = self._targets(tensors, alpha)

            # losses (the actor reads the critics through detached parameters: no gradient reaches them from it)
            q = self._q_with(critic_params, tensors["obs"], tensors["action"])
            td = q - target  # (E, B)
            squared = td.pow(2) if weights is None else td.pow(2) * (weights / weights.max())
            critic_loss = squared.mean(dim=1).sum()
            action, log_prob = self.actor(tensors["obs"], generator=self._generator)
            q_pi = self._q_with([p.detach() for p in critic_params], tensors["obs"], action)
            if self.config.critic_subset == self.config.num_critics:
                q_pi = q_pi.min(dim=0).values
            else:
                q_pi = q_pi.mean(dim=0)
            actor_loss = (alpha * log_prob - q_pi).mean()
            extra = []
            if anchored:
                anchor_distance = self._anchor_distance(tensors["obs"]).mean()
                actor_loss = actor_loss + self.config.anchor_weight * q_pi.detach().abs().mean() * anchor_distance
                extra.append(anchor_distance.detach())
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

        # gradients: one backward pass; the three losses share no parameter
        grads = torch.autograd.grad(critic_loss + actor_loss + alpha_loss, [*critic_params, *actor_params,
                                                                            self.log_alpha])
        critic_grads, actor_grads = grads[: len(critic_params)], grads[len(critic_params): -1]
        values = torch.stack([
            critic_loss.detach(), actor_loss.detach(), alpha, alpha_loss.detach(), -log_prob.detach().mean(),
            q.detach().mean(), torch.nn.utils.get_total_norm(critic_grads),
            torch.nn.utils.get_total_norm(actor_grads), *extra,
        ])
        return values, td.detach(), grads

    def _step(self, grads: Sequence[Tensor], update_actor: bool) -> None:
        """Apply ``_losses``'s gradients: the Adam steps (the critics'; the actor's and the temperature's too when
        ``update_actor``), then the Polyak update of the target critics. No host read (a CUDA graph replays it)."""
        for param, grad in zip([*self._critic_params, *self._actor_params, self.log_alpha], grads):
            param.grad = grad
        self.critic_optimizer.step()
        if update_actor:
            self.actor_optimizer.step()
            self.alpha_optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)

    def bc_update(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """One behaviour-cloning step of the actor on ``batch``'s (obs, action): maximise the tanh-Gaussian
        log-likelihood of the data actions (their mean and spread, the log std down to :data:`BC_LOG_STD_MIN`),
        actions clipped to 0.999 of the box so that their pre-tanh value stays finite. The critics and the
        temperature are not touched.

        Returns ``bc_loss`` (negative mean log-likelihood), ``bc_action_mse`` (deterministic action vs data, env
        units) and ``actor_grad_norm``; a non-finite loss or gradient changes nothing (``skipped: 1.0``).
        """
        tensors = to_tensors(batch, ("obs", "action"), self.obs_dim, self.act_dim, self.device)
        obs, action = tensors["obs"].reshape(-1, self.obs_dim), tensors["action"].reshape(-1, self.act_dim)
        actor = self.actor
        unit = ((action - actor.action_bias) / actor.action_scale).clamp(-0.999, 0.999)
        pre_tanh = torch.atanh(unit)
        mean, log_std = actor.trunk(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(BC_LOG_STD_MIN, LOG_STD_MAX)
        noise = (pre_tanh - mean) / log_std.exp()
        log_det_tanh = (2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        log_prob = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1) - log_det_tanh
        loss = -log_prob.mean()
        grads = torch.autograd.grad(loss, self._actor_params)
        grad_norm = torch.nn.utils.get_total_norm(grads)
        with torch.no_grad():
            deterministic = torch.tanh(mean) * actor.action_scale + actor.action_bias
            mse = (deterministic - action).pow(2).mean()
        values = torch.stack([loss.detach(), mse, grad_norm]).tolist()
        metrics = dict(zip(("bc_loss", "bc_action_mse", "actor_grad_norm"), values))
        if not all(math.isfinite(v) for v in values):
            self.nonfinite_streak += 1
            return {**metrics, "skipped": 1.0}
        for param, grad in zip(self._actor_params, grads):
            param.grad = grad
        self.actor_optimizer.step()
        self.num_updates += 1
        self.nonfinite_streak = 0
        return metrics

    def policy_state(self) -> dict[str, Tensor]:
        """CPU copy of the actor's weights, what ``Policy.load_state`` takes."""
        return to_cpu(self.actor.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Full learner state as CPU tensors and plain containers (loadable with ``weights_only=True``)."""
        return to_cpu({
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha,
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "generator": generator_state(self._generator),
            "num_updates": self.num_updates,
            "nonfinite_streak": self.nonfinite_streak,
            **({} if self.anchor is None else {"anchor": self.anchor.state_dict()}),
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output onto this learner's device (the sampling generator is restored
        only when it was saved from the same device type)."""
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        for optimizer in (self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer):
            for group in optimizer.param_groups:  # saved groups replace ours: keep our kernels' options
                group.update(foreach=None, **self._adam)
        self._recapture()
        load_generator_state(self._generator, state["generator"])
        self.num_updates = int(state["num_updates"])
        if "anchor" in state:
            self.set_anchor()
            self.anchor.load_state_dict(state["anchor"])
        self.nonfinite_streak = int(state["nonfinite_streak"])


class UpdateGraphs:
    """``SACLearner.update``'s losses and step as CUDA graphs (``learners/cuda_graphs.py``), one pair per batch size
    and anchoring: the batch's columns arrive through a ``PinnedBatch``; ``_losses`` and ``_step`` (one per value of
    ``update_actor``) are ``CapturedCall``s. The step's graph reads the gradients the losses' graph writes."""

    _COLUMNS = ("obs", "action", "reward", "next_obs", "terminated")

    def __init__(self, learner: SACLearner):
        self._learner = learner
        self._entries: dict[tuple[int, bool], tuple[PinnedBatch, CapturedCall, dict[bool, CapturedCall]]] = {}

    def _entry(self, rows: int, anchored: bool) -> tuple[PinnedBatch, CapturedCall, dict[bool, CapturedCall]]:
        key = (rows, anchored)
        if key not in self._entries:
            learner = self._learner
            obs, act = learner.obs_dim, learner.act_dim
            shapes = {"obs": (rows, obs), "action": (rows, act), "reward": (rows,), "next_obs": (rows, obs),
                      "terminated": (rows,)}
            if learner.config.prioritized:
                shapes["weight"] = (rows,)
            names = self._COLUMNS

            def losses(*columns: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
                weights = columns[len(names)] if len(columns) > len(names) else None
                return learner._losses(dict(zip(names, columns)), weights, anchored)

            def step(update_actor: bool) -> CapturedCall:
                return CapturedCall(lambda *grads: learner._step(grads, update_actor), learner.device)

            self._entries[key] = (
                PinnedBatch(shapes, learner.device),
                CapturedCall(losses, learner.device, generators=[learner._generator]),
                {True: step(True), False: step(False)},
            )
        return self._entries[key]

    def losses(self, batch: Mapping[str, np.ndarray], rows: int, anchored: bool,
               ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """``SACLearner._losses`` on ``batch`` (checked by the caller: ``rows`` rows)."""
        staged, losses, _ = self._entry(rows, anchored)
        columns = staged.load(batch)
        return losses(*columns.values())

    def step(self, grads: Sequence[Tensor], rows: int, anchored: bool, update_actor: bool) -> None:
        """``SACLearner._step`` with the gradients ``losses`` returned for the same batch."""
        self._entry(rows, anchored)[2][update_actor](*grads)
