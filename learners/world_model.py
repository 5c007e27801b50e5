"""Probabilistic ensemble dynamics model: the learner (``WorldModelLearner``) and its inference half (``WorldModel``).

Each member maps normalised (obs, action) to a diagonal Gaussian over the normalised target
``[next_obs - obs, reward]`` and a termination logit. Rows are split into train and holdout by a hash of
(episode_id, step); holdout rows fill a FIFO validation buffer that ranks members and picks the elites used
for imagination.

Uncertainty: the ensemble *disagreement* of a row is the standard deviation across the K elites of their mean
predictions of the normalised state delta, root-mean-squared over the O delta features (``disagreement()``). It is
in units of the typical state change (the target normaliser's std), so one threshold means about the same on
every env; it is what imagination penalises and truncates on, and what ``validate()`` checks against the elite
mean's actual error on holdout rows (rank correlation and a calibration table by disagreement quantile).

Dimensions: E ensemble members, K elites, B batch rows (N in the inference API), O obs dim, A action dim,
T = O + 1 target dim (state delta and reward), Q calibration bins.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learners._batch import check_columns, to_tensors
from learners._common import autocast, generator_state, load_generator_state, resolve_precision, to_cpu
from learners.config import WorldModelConfig
from learners.networks import EnsembleLinear, EnsembleMLP, resolve_device, seeded_init
from learners.termination import AUTO, TerminationFn, load_termination_fn

_LOG_2PI = math.log(2.0 * math.pi)
_FLOAT_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated")
_ID_COLUMNS = ("episode_id", "step")
_LOGVAR_BOUND_COEF = 0.01
_VALIDATION_CHUNK = 8192
_ROW_BLOCK = 512
INTERVAL_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Central interval probabilities 0.05, 0.10, ..., 0.95 whose coverage ``validate()`` measures (ECE over these)."""
"""Rows per block of ``WorldModel``'s forward: (K, 512, 200) float32 activations are 2 MB; on a 2-core EPYC VM with
1 MB of L2 per core this gave 75% of the matmul peak at 4096 rows, against 58% for the whole batch at once."""


def holdout_mask(episode_id: np.ndarray, step: np.ndarray, holdout_ratio: float) -> np.ndarray:
    """Boolean (B,) mask of holdout rows: splitmix64 hash of (episode_id, step) mapped to [0, 1) < ratio.

    Depends only on the row's identity, so a row lands on the same side every time it is sampled.
    """
    with np.errstate(over="ignore"):
        x = np.asarray(episode_id).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.asarray(step).astype(np.uint64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    fraction = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return fraction < holdout_ratio


def disagreement(elite_means: Tensor, obs_dim: int) -> Tensor:
    """Ensemble disagreement per row: normalised elite means (K, N, T) -> (N,).

    The std across the K elites of the predicted normalised state delta, root-mean-squared over the O delta
    features (0 with a single elite).
    """
    return elite_means[..., :obs_dim].var(dim=0, unbiased=False).mean(dim=-1).sqrt()


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 0..N-1 of a 1-D tensor (float64); tied values share the mean of their ranks."""
    order = torch.argsort(x)
    _, group, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    group_rank = ends - (counts.to(torch.float64) + 1.0) / 2.0
    ranks = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    ranks[order] = group_rank[group]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors of the same length (ties get average ranks).

    NaN when either is constant: the correlation is undefined there, and a metric should show that.
    """
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"spearman: x has shape {tuple(x.shape)} and y {tuple(y.shape)}, expected two equal (N,)")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float((rx.pow(2).sum() * ry.pow(2).sum()).sqrt())
    return float((rx * ry).sum()) / denominator if denominator > 0 else math.nan


def calibration_table(spread: Tensor, error: Tensor, bins: int) -> list[tuple[float, float]]:
    """Rows (N,) sorted by ``spread`` into ``bins`` equal-count quantile bins, lowest first; per bin the RMS of
    ``spread`` and the RMS of ``error`` over its rows (NaN for an empty bin)."""
    table = []
    for part in torch.tensor_split(torch.argsort(spread), bins):
        if part.numel() == 0:
            table.append((math.nan, math.nan))
        else:
            table.append((float(spread[part].pow(2).mean().sqrt()), float(error[part].pow(2).mean().sqrt())))
    return table


def mixture_pit(means: Tensor, variances: Tensor, target: Tensor) -> Tensor:
    """Probability integral transform of ``target`` (N, T) under the equal-weight mixture of K Gaussians with
    ``means`` and ``variances`` (K, N, T): the mixture's CDF at each target value, (N, T) in [0, 1]."""
    z = (target.unsqueeze(0) - means) * variances.rsqrt()
    return (0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))).mean(dim=0)


def interval_coverage(pit: Tensor, levels: Sequence[float] = INTERVAL_LEVELS) -> list[float]:
    """Fraction of values whose PIT ``pit`` (any shape) falls inside each central interval: for level p, the
    predicted interval between the (1 - p) / 2 and (1 + p) / 2 quantiles holds the value iff |pit - 0.5| <= p / 2.
    A calibrated predictive distribution covers a fraction p at every level."""
    distance = (pit - 0.5).abs().flatten()
    return [float((distance <= level / 2).to(torch.float64).mean()) if distance.numel() else math.nan
            for level in levels]


def expected_calibration_error(coverage: Sequence[float], levels: Sequence[float] = INTERVAL_LEVELS) -> float:
    """Mean over the interval levels of |observed coverage - level| (0 for a calibrated model, up to ~0.5)."""
    return float(np.mean([abs(c - p) for c, p in zip(coverage, levels)]))


class RunningNorm(nn.Module):
    """Per-feature running mean and variance (Chan/Welford batch merge), kept as float64 buffers.

    Features with (near) zero variance get std 1 so they are only centred. Before any data: mean 0, std 1.
    """

    def __init__(self, dim: int, min_std: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.min_std = min_std
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge a batch (B, D) into the running statistics."""
        x = x.to(torch.float64)
        batch_count = x.shape[0]
        batch_mean = x.mean(dim=0)
        batch_m2 = (x - batch_mean).pow(2).sum(dim=0)
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * (batch_count / total)
        self.m2 += batch_m2 + delta.pow(2) * (self.count * batch_count / total)
        self.count.copy_(total)

    @property
    def std(self) -> Tensor:
        std = (self.m2 / self.count.clamp_min(1.0)).sqrt()
        return torch.where(std < self.min_std, torch.ones_like(std), std)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


class EnsembleDynamics(nn.Module):
    """E members: normalised (obs, action) -> Gaussian (mean, log-variance) over the normalised target (T,)
    and a termination logit. Also holds the input and target normalisers so one state dict has it all."""

    def __init__(self, obs_dim: int, act_dim: int, ensemble_size: int, hidden_sizes: Sequence[int]):
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.target_dim = obs_dim + 1
        self.ensemble_size = ensemble_size
        self.net = EnsembleMLP(ensemble_size, obs_dim + act_dim, 2 * self.target_dim + 1, hidden_sizes, nn.SiLU)
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.target_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.target_dim), -10.0))
        self.input_norm = RunningNorm(obs_dim + act_dim)
        self.target_norm = RunningNorm(self.target_dim)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """obs (B, O) or (E, B, O), action likewise -> mean (E, B, T), logvar (E, B, T), logit (E, B)."""
        inputs = self.input_norm.normalize(torch.cat([obs, action], dim=-1))
        if inputs.dim() == 2:
            inputs = inputs.expand(self.ensemble_size, *inputs.shape)
        outputs = self.net(inputs).float()  # fp32 under autocast too
        mean, raw_logvar, logit = outputs.split([self.target_dim, self.target_dim, 1], dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, logit.squeeze(-1)

    @staticmethod
    def targets(obs: Tensor, next_obs: Tensor, reward: Tensor) -> Tensor:
        """Env-unit regression target [next_obs - obs, reward]: (B, T)."""
        return torch.cat([next_obs - obs, reward.unsqueeze(-1)], dim=-1)


class _ValidationBuffer:
    """FIFO ring of holdout rows on the learner's device: obs (C, O), action (C, A), target (C, T), terminated (C,)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity = capacity
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.action = torch.zeros(capacity, act_dim, device=device)
        self.target = torch.zeros(capacity, obs_dim + 1, device=device)
        self.terminated = torch.zeros(capacity, device=device)
        self.size = 0
        self._next = 0

    def add(self, obs: Tensor, action: Tensor, target: Tensor, terminated: Tensor) -> None:
        rows = min(obs.shape[0], self.capacity)
        index = (self._next + torch.arange(rows, device=obs.device)) % self.capacity
        self.obs[index] = obs[-rows:]
        self.action[index] = action[-rows:]
        self.target[index] = target[-rows:]
        self.terminated[index] = terminated[-rows:]
        self._next = (self._next + rows) % self.capacity
        self.size = min(self.size + rows, self.capacity)

    def data(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n = self.size
        return self.obs[:n], self.action[:n], self.target[:n], self.terminated[:n]

    def state_dict(self) -> dict[str, Any]:
        """The rows held (CPU copies, oldest first) for a checkpoint."""
        order = (torch.arange(self.size, device=self.obs.device) + (self._next - self.size)) % self.capacity
        return to_cpu({"obs": self.obs[order], "action": self.action[order], "target": self.target[order],
                       "terminated": self.terminated[order]})

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Hold the rows of ``state_dict()`` output (the newest ``capacity`` of them)."""
        self.size = self._next = 0
        if len(state["obs"]):
            self.add(*(state[k].to(self.obs.device) for k in ("obs", "action", "target", "terminated")))


class WorldModelLearner:
    """Trains ``EnsembleDynamics`` with per-member bootstrap resampling and ranks members on holdout rows.

    Early stopping (holdout-based, as MBPO's): each validation compares every member's holdout MSE with its
    best so far; ``val_since_improvement`` counts validations in which no member improved by more than
    ``improvement_threshold`` (relative). With ``early_stop_patience > 0`` the learner pauses its gradient steps
    once that count reaches the patience (``paused``); batches still feed the holdout buffer and a validation
    runs every ``validate_every`` batches. The holdout buffer moves with the data, so when the members' holdout
    MSE gets worse than their best by more than the threshold on average, the best values restart from the
    current ones and training resumes.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: WorldModelConfig, seed: int = 0):
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device, config.hidden_sizes)
        """Matmul dtype of the training step (``config.precision`` resolved on this machine)."""
        with seeded_init(seed):
            dynamics = EnsembleDynamics(obs_dim, act_dim, config.ensemble_size, config.hidden_sizes)
        self.dynamics = dynamics.to(self.device)
        self.optimizer = torch.optim.Adam(self.dynamics.parameters(), lr=config.lr)
        self.validation = _ValidationBuffer(config.validation_size, obs_dim, act_dim, self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        self._elites = list(range(config.num_elites))
        self.member_val_mse: np.ndarray | None = None
        """Validation MSE (normalised space) per member (E,), set by ``validate()``."""
        self.best_val_mse: np.ndarray | None = None
        """Best validation MSE per member (E,) since training last (re)started."""
        self.since_improvement = 0
        """Validations since a member's holdout MSE last improved by more than ``improvement_threshold``."""
        self.paused = False
        """Early stopping: gradient steps pause until the holdout MSE gets worse (``early_stop_patience``)."""
        self._paused_batches = 0
        self.num_updates = 0
        """Applied (not skipped) updates."""
        self.nonfinite_streak = 0
        """Consecutive updates skipped because of non-finite inputs, loss or gradient norm."""

    @property
    def elites(self) -> list[int]:
        """Indices of the elite members, ascending."""
        return list(self._elites)

    def update(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Route holdout rows to the validation buffer and take one gradient step on the training rows.

        Returns ``loss`` (the optimised sum over members), ``nll`` and ``termination_loss`` (per-member means)
        and ``grad_norm``, plus the ``validate()`` metrics every ``validate_every`` updates. ``skipped: 1.0``
        marks an update that changed no weights: non-finite inputs, loss or gradient norm (counted in
        ``nonfinite_streak``), a batch made only of holdout rows, or a paused learner (then also ``paused: 1.0``,
        and the ``validate()`` metrics every ``validate_every`` batches).
        """
        check_columns(batch, _FLOAT_COLUMNS + _ID_COLUMNS, self.obs_dim, self.act_dim)
        if not all(np.isfinite(batch[c]).all() for c in ("obs", "action", "reward", "next_obs")):
            self.nonfinite_streak += 1
            return {"skipped": 1.0}
        holdout = holdout_mask(batch["episode_id"], batch["step"], self.config.holdout_ratio)
        if holdout.any():
            self._add_validation({c: batch[c][holdout] for c in _FLOAT_COLUMNS})
        if self.paused:
            self._paused_batches += 1
            metrics = {"skipped": 1.0, "paused": 1.0}
            if self._paused_batches % self.config.validate_every == 0 and self.validation.size:
                metrics.update(self.validate())
            return metrics
        if holdout.all():
            return {"skipped": 1.0}
        train_rows = ~holdout
        train = to_tensors({c: batch[c][train_rows] for c in _FLOAT_COLUMNS}, _FLOAT_COLUMNS, self.obs_dim,
                           self.act_dim, self.device)
        metrics = self._train_step(train, int(train_rows.sum()))
        if "skipped" not in metrics and self.num_updates % self.config.validate_every == 0 and self.validation.size:
            metrics.update(self.validate())
        return metrics

    def _add_validation(self, rows: Mapping[str, np.ndarray]) -> None:
        t = to_tensors(rows, _FLOAT_COLUMNS, self.obs_dim, self.act_dim, self.device)
        target = EnsembleDynamics.targets(t["obs"], t["next_obs"], t["reward"])
        self.validation.add(t["obs"], t["action"], target, t["terminated"])

    def _train_step(self, t: Mapping[str, Tensor], rows: int) -> dict[str, float]:
        dynamics = self.dynamics
        target = EnsembleDynamics.targets(t["obs"], t["next_obs"], t["reward"])
        dynamics.input_norm.update(torch.cat([t["obs"], t["action"]], dim=-1))
        dynamics.target_norm.update(target)

        # targets: one bootstrap resample per member, gathered at once -> (E, B, ...). B is always batch_size, not the
        # training rows left after the holdout's (a count that changes every step): oneDNN's bf16 matmuls keep a
        # compiled kernel per shape, and one per row count grew a world-model learner by 200 MB in process
        index = torch.randint(rows, (dynamics.ensemble_size, self.config.batch_size), generator=self._generator,
                              device=self.device)
        normalized_target = dynamics.target_norm.normalize(target)[index]
        terminated = t["terminated"][index]
        with autocast(self.device, self.dtype):
            mean, logvar, logit = dynamics(t["obs"][index], t["action"][index])

        # losses: per-member means summed over members, so each member's gradient is independent of E
        nll = 0.5 * (((mean - normalized_target).pow(2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2)) + _LOG_2PI)
        termination_loss = F.binary_cross_entropy_with_logits(logit, terminated, reduction="none").mean(dim=1)
        l2 = 0.5 * self.config.weight_decay * sum(w.pow(2).sum() for w in dynamics.net.linear_weights())
        bound = _LOGVAR_BOUND_COEF * (dynamics.max_logvar.sum() - dynamics.min_logvar.sum())
        loss = nll.sum() + termination_loss.sum() + l2 + bound

        # step
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in dynamics.parameters() if p.grad is not None])
        values = torch.stack([loss.detach(), nll.detach().mean(), termination_loss.detach().mean(), grad_norm]).tolist()
        metrics = dict(zip(("loss", "nll", "termination_loss", "grad_norm"), values))
        if not all(math.isfinite(v) for v in values):
            self.nonfinite_streak += 1
            return {**metrics, "skipped": 1.0}
        self.optimizer.step()
        self.num_updates += 1
        self.nonfinite_streak = 0
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Rank members on the holdout buffer, reselect the elites, update the early-stopping signal, and
        measure the elites' calibration.

        Every metric is computed on held-out real transitions, in normalised target space, averaged over the
        elites where it is per member:

        - ``val_mse``, ``val_nll``: MSE and Gaussian NLL per target feature (all T features);
          ``val_nll_delta`` and ``val_nll_reward`` split the NLL by head (per feature);
          ``val_termination_bce`` and ``val_termination_acc``: the termination head's NLL and accuracy at 0.5.
        - ``val_elite_mse``: MSE of the elite mean (what the ensemble predicts as a whole), all T features.
        - ``val_disagreement_mean``: mean ``disagreement()`` per row (imagination's threshold has these units);
          ``val_disagreement_spearman``: rank correlation, over rows, between the disagreement and the elite
          mean's RMS error on the state delta; ``val_calib_q{i}_disagreement`` / ``val_calib_q{i}_error``
          (i = 1..Q, lowest disagreement first): RMS disagreement and RMS error of the rows in each quantile bin.
          A calibrated ensemble has a high correlation and errors rising with the bins.
        - ``val_coverage_50``, ``val_coverage_90``: the fraction of holdout target values (every row and all T
          features) inside the central 50% and 90% intervals of the elites' predictive distribution (the
          equal-weight mixture of their Gaussians: aleatoric and epistemic spread together);
          ``val_calibration_ece``: the expected calibration error, the mean |coverage - p| over the central intervals
          p = 0.05, 0.10, ..., 0.95 (:data:`INTERVAL_LEVELS`). Calibrated: coverages ~0.5 and ~0.9, ECE ~0;
          over-confident: coverages below p.
        - ``val_since_improvement``: the early-stopping signal (see the class docstring).

        Per-member MSEs are kept in ``member_val_mse``.
        """
        if self.validation.size == 0:
            raise RuntimeError(
                "validate(): the validation buffer is empty; it fills with holdout rows "
                f"(holdout_ratio={self.config.holdout_ratio}) passed to update()"
            )
        dynamics, obs_dim, target_dim = self.dynamics, self.obs_dim, self.dynamics.target_dim
        obs, action, target, terminated = self.validation.data()
        normalized_target = dynamics.target_norm.normalize(target)
        rows = obs.shape[0]
        chunks = [slice(start, start + _VALIDATION_CHUNK) for start in range(0, rows, _VALIDATION_CHUNK)]

        # every member: squared error, NLL per head, termination accuracy and BCE -> ranking and elites
        sums = torch.zeros(5, dynamics.ensemble_size, dtype=torch.float64, device=self.device)
        for chunk in chunks:
            mean, logvar, logit = dynamics(obs[chunk], action[chunk])
            error = (mean - normalized_target[chunk]).pow(2)
            nll = 0.5 * (error * torch.exp(-logvar) + logvar + _LOG_2PI)
            done = terminated[chunk].expand_as(logit)
            sums[0] += error.sum(dim=(1, 2))
            sums[1] += nll[..., :obs_dim].sum(dim=(1, 2))
            sums[2] += nll[..., obs_dim].sum(dim=1)
            sums[3] += ((logit > 0) == (done > 0.5)).sum(dim=1)
            sums[4] += F.binary_cross_entropy_with_logits(logit, done, reduction="none").sum(dim=1)
        counts = torch.tensor([rows * target_dim, rows * obs_dim, rows, rows, rows], device=self.device)
        member_mse, nll_delta, nll_reward, accuracy, bce = (sums / counts.unsqueeze(1)).cpu().numpy()
        self.member_val_mse = member_mse
        self._elites = sorted(np.argsort(member_mse, kind="stable")[: self.config.num_elites].tolist())
        self._track_improvement(member_mse)
        elites = self._elites
        metrics = {
            "val_mse": float(member_mse[elites].mean()),
            "val_nll": float(((nll_delta * obs_dim + nll_reward) / target_dim)[elites].mean()),
            "val_nll_delta": float(nll_delta[elites].mean()),
            "val_nll_reward": float(nll_reward[elites].mean()),
            "val_termination_bce": float(bce[elites].mean()),
            "val_termination_acc": float(accuracy[elites].mean()),
        }

        # the elites together: error of their mean, and their disagreement per row
        elite_index = torch.tensor(elites, device=self.device)
        elite_sq_error = torch.zeros((), dtype=torch.float64, device=self.device)
        row_error, row_spread, pits = [], [], []
        for chunk in chunks:
            all_means, all_logvars, _ = dynamics(obs[chunk], action[chunk])
            elite_means = all_means[elite_index]
            pits.append(mixture_pit(elite_means, all_logvars[elite_index].exp(), normalized_target[chunk]))
            sq_error = (elite_means.mean(dim=0) - normalized_target[chunk]).pow(2)
            elite_sq_error += sq_error.sum()
            row_error.append(sq_error[:, :obs_dim].mean(dim=1).sqrt())
            row_spread.append(disagreement(elite_means, obs_dim))
        error, spread = torch.cat(row_error), torch.cat(row_spread)
        metrics["val_elite_mse"] = float(elite_sq_error) / (rows * target_dim)
        metrics["val_disagreement_mean"] = float(spread.mean())
        metrics["val_disagreement_spearman"] = spearman(spread, error)
        for i, (bin_spread, bin_error) in enumerate(calibration_table(spread, error, self.config.calibration_bins), 1):
            metrics[f"val_calib_q{i}_disagreement"] = bin_spread
            metrics[f"val_calib_q{i}_error"] = bin_error
        coverage = interval_coverage(torch.cat(pits))
        metrics["val_coverage_50"] = coverage[INTERVAL_LEVELS.index(0.5)]
        metrics["val_coverage_90"] = coverage[INTERVAL_LEVELS.index(0.9)]
        metrics["val_calibration_ece"] = expected_calibration_error(coverage)
        metrics["val_since_improvement"] = float(self.since_improvement)
        return metrics

    def _track_improvement(self, member_mse: np.ndarray) -> None:
        """Early-stopping bookkeeping after a validation (see the class docstring)."""
        threshold = self.config.improvement_threshold
        best = self.best_val_mse
        if best is None or best.shape != member_mse.shape:
            self.best_val_mse, self.since_improvement = member_mse.copy(), 0
        elif float(np.mean((member_mse - best) / np.maximum(best, 1e-12))) > threshold:
            self.best_val_mse, self.since_improvement = member_mse.copy(), 0
        else:
            improved = (best - member_mse) / np.maximum(best, 1e-12) > threshold
            self.best_val_mse = np.where(improved, member_mse, best)
            self.since_improvement = 0 if improved.any() else self.since_improvement + 1
        patience = self.config.early_stop_patience
        paused = patience > 0 and self.since_improvement >= patience
        if paused and not self.paused:
            self._paused_batches = 0
        self.paused = paused

    def model_state(self) -> dict[str, Tensor]:
        """CPU tensors for ``WorldModel.load_state``: weights, log-variance bounds, normalisers, elites (int64)."""
        state = to_cpu(self.dynamics.state_dict())
        state["elites"] = torch.tensor(self._elites, dtype=torch.int64)
        return state

    def state_dict(self) -> dict[str, Any]:
        """Full learner state (the holdout rows of the validation buffer included) as CPU tensors and plain
        containers."""
        return to_cpu({
            "validation": self.validation.state_dict(),
            "paused_batches": self._paused_batches,
            "dynamics": self.dynamics.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "elites": torch.tensor(self._elites, dtype=torch.int64),
            "member_val_mse": None if self.member_val_mse is None else torch.from_numpy(self.member_val_mse),
            "best_val_mse": None if self.best_val_mse is None else torch.from_numpy(self.best_val_mse),
            "since_improvement": self.since_improvement,
            "paused": self.paused,
            "generator": generator_state(self._generator),
            "num_updates": self.num_updates,
            "nonfinite_streak": self.nonfinite_streak,
        })

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output onto this learner's device."""
        self.dynamics.load_state_dict(state["dynamics"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._elites = _check_elites(state["elites"], self.config.ensemble_size).tolist()
        mse = state["member_val_mse"]
        self.member_val_mse = None if mse is None else mse.cpu().numpy().astype(np.float64)
        best = state.get("best_val_mse")
        self.best_val_mse = None if best is None else best.cpu().numpy().astype(np.float64)
        self.since_improvement = int(state.get("since_improvement", 0))
        self.paused = bool(state.get("paused", False))
        self._paused_batches = int(state.get("paused_batches", 0))
        if "validation" in state:
            self.validation.load_state_dict(state["validation"])
        load_generator_state(self._generator, state["generator"])
        self.num_updates = int(state["num_updates"])
        self.nonfinite_streak = int(state["nonfinite_streak"])


def _check_elites(elites: Tensor, ensemble_size: int) -> Tensor:
    elites = torch.as_tensor(elites)
    if elites.dim() != 1 or elites.numel() == 0 or elites.dtype != torch.int64:
        raise ValueError(f"elites has shape {tuple(elites.shape)}, dtype {elites.dtype}; expected (K,) int64, K >= 1")
    if int(elites.min()) < 0 or int(elites.max()) >= ensemble_size:
        raise ValueError(f"elites {elites.tolist()}: expected indices in [0, {ensemble_size})")
    return elites.cpu()


class ModelStep(NamedTuple):
    """One imagined transition per row, from ``WorldModel.step``."""

    next_obs: Tensor
    """(N, O) sampled next observation."""
    reward: Tensor
    """(N,) sampled reward."""
    terminated: Tensor
    """(N,) bool: the termination function's answer, or the sampled member's head thresholded at 0.5."""
    disagreement: Tensor
    """(N,) ensemble disagreement of the elites (``disagreement()``), >= 0."""


class _InferenceWeights(NamedTuple):
    """What ``WorldModel``'s forward reads, taken from ``EnsembleDynamics`` once per ``load_state``: float32."""

    layers: list[tuple[Tensor, Tensor, bool]]
    """Every linear layer of all E members: weight (E, I, U), bias (E, 1, U), SiLU after it (True for hidden
    layers); the dynamics' own parameters, not copies."""
    elite_layers: list[tuple[Tensor, Tensor, bool]]
    """The same for the K elites, contiguous copies (K, I, U) and (K, 1, U)."""
    input_mean: Tensor
    input_std: Tensor
    target_mean: Tensor
    target_std: Tensor
    max_logvar: Tensor
    """(1, T) log-variance bounds."""
    min_logvar: Tensor


class WorldModel:
    """Inference half of the dynamics ensemble for imagination workers (weights from ``model_state()``).

    With ``config.termination_fn`` a 'module:function', termination comes from that function instead of the learned
    head (the system resolves 'auto' from the env id before it makes one; here 'auto' and None mean the head).

    Inference reads the weights as ``load_state`` left them: the normalisers' float32 statistics and the elites'
    weights are taken once there, not at every call, and ``step`` evaluates only the K elites (the other members
    are neither sampled nor part of the disagreement). Weights changed in ``dynamics`` by other means take effect
    at the next ``load_state``.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: WorldModelConfig, seed: int = 0, device: str = "cpu"):
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden_sizes = tuple(config.hidden_sizes)
        self.device = resolve_device(device)
        with seeded_init(seed):
            dynamics = EnsembleDynamics(obs_dim, act_dim, config.ensemble_size, config.hidden_sizes)
        self.dynamics = dynamics.to(self.device).eval().requires_grad_(False)
        self._elites = torch.arange(config.num_elites, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        self.dtype = torch.float32
        """Dtype of the network's matmuls (``set_dtype``); inputs, normalisers and outputs are fp32."""
        self._termination_name = config.termination_fn
        self._termination_fn: TerminationFn | None = (
            None if config.termination_fn in (None, AUTO) else load_termination_fn(config.termination_fn)
        )
        self._weights = self._inference_weights()

    @property
    def elites(self) -> list[int]:
        return self._elites.tolist()

    def load_state(self, model_state: Mapping[str, Tensor]) -> None:
        """Load ``WorldModelLearner.model_state()`` (from any device)."""
        state = dict(model_state)
        elites = _check_elites(state.pop("elites"), self.dynamics.ensemble_size)
        self.dynamics.load_state_dict(state)
        self._elites = elites.to(self.device)
        self._weights = self._inference_weights()

    def reseed(self, seed: int) -> None:
        """Restart the sampling generator at ``seed``: the same draws again (evaluations in the model compare
        policies on common random numbers)."""
        self._generator.manual_seed(seed)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run the network's matmuls in ``dtype`` (torch.bfloat16 or torch.float32) on copies of the weights made
        here and at every ``load_state``; the network's outputs are cast back to fp32."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"WorldModel dtype {dtype}: expected torch.float32 or torch.bfloat16")
        self.dtype = dtype
        self._weights = self._inference_weights()

    @torch.no_grad()
    def _inference_weights(self) -> _InferenceWeights:
        dynamics, layers = self.dynamics, []
        modules = list(dynamics.net.layers)
        for i, module in enumerate(modules):
            if isinstance(module, EnsembleLinear):
                following = modules[i + 1] if i + 1 < len(modules) else None
                if following is not None and type(following) is not nn.SiLU:
                    raise ValueError(f"WorldModel: layer {i + 1} of the dynamics network is {following}, "
                                     "expected nn.SiLU after every hidden EnsembleLinear")
                layers.append((module.weight.to(self.dtype), module.bias.to(self.dtype), following is not None))
        elites = self._elites
        elite_layers = [(w[elites].contiguous(), b[elites].contiguous(), act) for w, b, act in layers]
        norms = (dynamics.input_norm, dynamics.target_norm)
        (input_mean, input_std), (target_mean, target_std) = (
            (n.mean.to(torch.float32), n.std.to(torch.float32)) for n in norms
        )
        return _InferenceWeights(layers, elite_layers, input_mean, input_std, target_mean, target_std,
                                 dynamics.max_logvar[0], dynamics.min_logvar[0])

    def _inputs(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected (N, {self.obs_dim})")
        if action.dim() != 2 or action.shape != (obs.shape[0], self.act_dim):
            raise ValueError(f"action has shape {tuple(action.shape)}, expected ({obs.shape[0]}, {self.act_dim})")
        return obs.to(self.device, torch.float32), action.to(self.device, torch.float32)

    def _net(self, obs: Tensor, action: Tensor, elites_only: bool) -> Tensor:
        """Raw outputs (E, N, 2T + 1) of all members, or (K, N, 2T + 1) of the elites with ``elites_only``, for
        env-unit obs (N, O), action (N, A): ``EnsembleDynamics``'s normalisation and network, with the activation
        applied in place, over blocks of ``_ROW_BLOCK`` rows so that a block's activations stay in the core's
        cache."""
        weights = self._weights
        inputs = torch.cat([obs, action], dim=-1).sub_(weights.input_mean).div_(weights.input_std).to(self.dtype)
        layers = weights.elite_layers if elites_only else weights.layers
        members, rows = layers[0][0].shape[0], inputs.shape[0]
        out = None if rows <= _ROW_BLOCK else inputs.new_empty(members, rows, layers[-1][0].shape[2])
        for first in range(0, max(rows, 1), _ROW_BLOCK):  # once for 0 rows
            block = inputs[first:first + _ROW_BLOCK]
            hidden = block.expand(members, *block.shape)
            for weight, bias, activation in layers:
                if not activation and out is not None:
                    torch.baddbmm(bias, hidden, weight, out=out[:, first:first + _ROW_BLOCK])
                    break
                hidden = torch.baddbmm(bias, hidden, weight)
                if activation:
                    F.silu(hidden, inplace=True)
        return (hidden if out is None else out).float()

    def _bound_logvar(self, raw_logvar: Tensor) -> Tensor:
        """``EnsembleDynamics``'s soft clamps of the log-variance, for (..., T)."""
        upper, lower = self._weights.max_logvar, self._weights.min_logvar
        logvar = upper - F.softplus(upper - raw_logvar)
        return lower + F.softplus(logvar - lower)

    @torch.no_grad()
    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every member's normalised prediction for obs (N, O), action (N, A) in env units, as
        ``EnsembleDynamics``: mean (E, N, T), bounded log-variance (E, N, T), termination logit (E, N); on
        ``self.device``."""
        obs, action = self._inputs(obs, action)
        target_dim = self.obs_dim + 1
        mean, raw_logvar, logit = self._net(obs, action, False).split([target_dim, target_dim, 1], dim=-1)
        return mean, self._bound_logvar(raw_logvar), logit.squeeze(-1)

    def _known_termination(self, function: TerminationFn, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """The termination function on (N, O), (N, A), (N, O) -> (N,) bool on ``self.device``."""
        rows = obs.shape[0]
        result = np.asarray(function(obs.cpu().numpy(), action.cpu().numpy(), next_obs.cpu().numpy()))
        if result.shape != (rows,):
            raise ValueError(
                f"termination_fn {self._termination_name!r} returned shape {result.shape}, expected ({rows},)"
            )
        return torch.from_numpy(result.astype(bool)).to(self.device)

    @torch.no_grad()
    def step(self, obs: Tensor, action: Tensor, members: Tensor | None = None) -> ModelStep:
        """Sample one transition per row from a random elite (drawn per row and call), or from elite
        ``members[n]`` (an index into ``elites``) for row n: a rollout that keeps one member per row follows that
        member's dynamics (policy evaluation in the model spreads its estimate over the members).

        Returns next_obs (N, O), reward (N,), terminated (N,) bool and disagreement (N,), on ``obs.device``.
        """
        out_device = obs.device
        obs, action = self._inputs(obs, action)
        rows, obs_dim, target_dim = obs.shape[0], self.obs_dim, self.obs_dim + 1
        out = self._net(obs, action, True)  # (K, N, 2T + 1), the elites only
        spread = disagreement(out[..., :target_dim], obs_dim)
        if members is None:
            pick = torch.randint(self._elites.numel(), (rows,), generator=self._generator, device=self.device)
        else:
            pick = self._checked_members(members, rows)
        picked = out[pick, torch.arange(rows, device=self.device)]  # (N, 2T + 1): each row's elite
        mean, raw_logvar, logit = picked.split([target_dim, target_dim, 1], dim=-1)
        noise = torch.randn(mean.shape, generator=self._generator, device=self.device)
        weights = self._weights
        sample = (self._bound_logvar(raw_logvar) * 0.5).exp_().mul_(noise).add_(mean)
        sample = sample.mul_(weights.target_std).add_(weights.target_mean)
        next_obs = obs + sample[:, :obs_dim]
        if self._termination_fn is None:
            terminated = logit.squeeze(-1) > 0
        else:
            terminated = self._known_termination(self._termination_fn, obs, action, next_obs)
        return ModelStep(
            next_obs.to(out_device), sample[:, obs_dim].to(out_device), terminated.to(out_device),
            spread.to(out_device),
        )

    def _checked_members(self, members: Tensor, rows: int) -> Tensor:
        elites = self._elites.numel()
        if members.shape != (rows,) or members.dtype != torch.int64:
            raise ValueError(f"members has shape {tuple(members.shape)}, dtype {members.dtype}; "
                             f"expected ({rows},) int64")
        if rows and (int(members.min()) < 0 or int(members.max()) >= elites):
            raise ValueError(f"members in [{int(members.min())}, {int(members.max())}]: expected indices into the "
                             f"{elites} elites, in [0, {elites})")
        return members.to(self.device)

    @torch.no_grad()
    def predict(self, obs: Tensor, action: Tensor) -> dict[str, Tensor]:
        """Every member's prediction in env units, on ``obs.device``.

        ``mean`` (E, N, T): ``[..., :O]`` next-obs mean, ``[..., O]`` reward mean; ``var`` (E, N, T) the
        matching variances; ``termination_prob`` (E, N) (with a termination function: its 0/1 answer on each
        member's mean next observation); ``disagreement`` (N,) of the elites.
        """
        out_device = obs.device
        obs, action = self._inputs(obs, action)
        weights = self._weights
        normalized_mean, logvar, logit = self.forward(obs, action)
        mean = normalized_mean * weights.target_std + weights.target_mean
        mean = torch.cat([mean[..., : self.obs_dim] + obs, mean[..., self.obs_dim:]], dim=-1)
        var = torch.exp(logvar) * weights.target_std.pow(2)
        if self._termination_fn is None:
            termination_prob = torch.sigmoid(logit)
        else:
            members, rows = logit.shape
            member_next_obs = mean[..., : self.obs_dim].reshape(members * rows, self.obs_dim)
            terminated = self._known_termination(
                self._termination_fn, obs.repeat(members, 1), action.repeat(members, 1), member_next_obs
            )
            termination_prob = terminated.reshape(members, rows).float()
        return {
            "mean": mean.to(out_device),
            "var": var.to(out_device),
            "termination_prob": termination_prob.to(out_device),
            "disagreement": disagreement(normalized_mean[self._elites], self.obs_dim).to(out_device),
        }
