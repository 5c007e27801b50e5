"""Imagination workers: branched model rollouts from real start states (MBPO), written to ``imagined``.

Rollouts can be conservative, as in MOPO and COPlanner: every imagined reward is lowered by
``penalty_scale * disagreement``, and a row stops before a transition whose disagreement passes
``max_disagreement``. The disagreement is the world model's (``learners.world_model.disagreement``): the std across
the elites of their predicted state change, in units of the typical state change, so a threshold carries over
between envs; the world-model learner reports it and how well it tracks the model's error on held-out real
transitions (``world_model_val_disagreement_*``, ``world_model_val_calib_*``).

Dimensions: B start states per rollout batch, H horizon, O observation size, A action size.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import MISSING, dataclass, field, fields, make_dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from actors.metrics import ImaginationRecorder
from actors.config import ImaginationConfig
from learners._common import resolve_precision
from replay.writers import RowStamper

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImaginationReport:
    """What one :meth:`ImaginationWorker.run` call did."""

    index: int
    """The worker's number in its pool."""
    writer_id: int
    """The worker's writer id: a new one tells that Ray restarted the worker."""
    horizon: int
    """Rollout horizon H used in the call."""
    seconds: float
    """Wall time of the call."""
    policy_version: int
    """Version of the policy the worker held at the end of the call."""
    model_version: int
    """Version of the world model the worker held at the end of the call."""
    transitions: int = 0
    """Imagined transitions written to ``imagined``."""
    rollouts: int = 0
    """Rollout batches made."""
    skipped_starts: int = 0
    """Start states skipped because no policy or no world model was published yet."""
    terminated: int = 0
    """Rows the model ended with a predicted termination."""
    stopped_nonfinite: int = 0
    """Rows stopped before a transition with a non-finite prediction (not written)."""
    stopped_uncertain: int = 0
    """Rows stopped before a transition whose disagreement passed ``max_disagreement`` (not written)."""
    penalized: int = 0
    """Rows written with a reward lowered by the disagreement penalty."""
    penalty_mean: float = 0.0
    """Mean reward penalty over the rows written."""
    disagreement_mean: float = 0.0
    """Mean elite disagreement over the rows written."""


_Tally = make_dataclass("_Tally", [(f.name, f.type, field(default=f.default)) for f in fields(ImaginationReport)
                                   if f.default is not MISSING])
"""The counts of an :class:`ImaginationReport` (its fields with defaults), mutable while its call runs."""


_ROLLOUT_COLUMNS = ("obs", "action", "reward", "next_obs", "terminated", "truncated", "start", "step", "disagreement",
                    "penalty")


def bucket_rows(rows: int) -> int:
    """The row count a forward of ``rows`` rows is padded to: the next power of two (at most 2x the work, and
    log2(B) + 1 distinct shapes however rollouts end)."""
    return 1 << max(rows - 1, 0).bit_length()


def _step(policy: Any, model: Any, obs: torch.Tensor, padded: bool) -> tuple[torch.Tensor, ...]:
    """One imagined step of every row of ``obs`` (B, O): (action, next_obs, reward, terminated, disagreement). With
    ``padded`` the forwards see :func:`bucket_rows` rows (copies of the first row fill the rest), and each output
    keeps the first B."""
    rows = obs.shape[0]
    if padded and (size := bucket_rows(rows)) != rows:
        obs = torch.cat([obs, obs[:1].expand(size - rows, -1)])
    action = policy.act_tensor(obs)
    return tuple(x[:rows] for x in (action, *model.step(obs, action)))


def rollout(
    policy: Any,
    model: Any,
    obs: torch.Tensor,
    horizon: int,
    penalty_scale: float = 0.0,
    max_disagreement: float = math.inf,
    padded: bool = False,
) -> dict[str, torch.Tensor]:
    """Roll ``model`` out for ``horizon`` steps under ``policy`` from ``obs`` (B, O).

    ``model.step(obs, action)`` returns (next_obs, reward, terminated, disagreement) as ``WorldModel.step``.
    Returns the written rows of every step stacked, columns: obs, action, reward (penalised), next_obs,
    terminated, truncated, start (index of the start state), step, disagreement, penalty; and the counts
    ``nonfinite`` and ``uncertain`` of rows stopped.

    A row ends when the model predicts termination, at the horizon (its last transition marked truncated), or
    before a transition that is not trusted: one with a non-finite value (counted in ``nonfinite``) or with a
    disagreement above ``max_disagreement`` (counted in ``uncertain``). An untrusted transition is not written;
    the row's previous transition, if any, is marked truncated, as the rollout was cut there.

    ``padded``: the forwards see power-of-two row counts only (:func:`_step`). The live rows shrink step by step
    and differ per batch; oneDNN's bf16 kernels on CPU are made and kept per operand shape, so a worker that saw
    every count grew by a kernel each (docs/benchmarks.md, "bf16 on AMX").
    """
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in _ROLLOUT_COLUMNS}
    start = torch.arange(obs.shape[0], device=obs.device)
    previous = None  # index of each live row in the previous step's written rows
    nonfinite = uncertain = 0
    for h in range(horizon):
        action, next_obs, reward, terminated, spread = _step(policy, model, obs, padded)

        # stop untrusted rows: non-finite predictions, then disagreement above the threshold
        finite = torch.isfinite(next_obs).all(dim=1) & torch.isfinite(reward) & torch.isfinite(spread)
        trusted = finite & (spread <= max_disagreement)
        if not bool(trusted.all()):
            nonfinite += int((~finite).sum())
            uncertain += int((finite & ~trusted).sum())
            if previous is not None:
                rows["truncated"][-1][previous[~trusted]] = True
            obs, action, next_obs, reward, terminated, spread, start = (
                x[trusted] for x in (obs, action, next_obs, reward, terminated, spread, start)
            )

        # write the trusted transitions with the penalised reward
        penalty = penalty_scale * spread
        rows["obs"].append(obs)
        rows["action"].append(action)
        rows["reward"].append(reward - penalty)
        rows["next_obs"].append(next_obs)
        rows["terminated"].append(terminated)
        rows["truncated"].append(~terminated if h == horizon - 1 else torch.zeros_like(terminated))
        rows["start"].append(start)
        rows["step"].append(torch.full_like(start, h))
        rows["disagreement"].append(spread)
        rows["penalty"].append(penalty)

        # continue the rows that did not terminate
        alive = ~terminated
        previous = torch.nonzero(alive).squeeze(1)
        obs, start = next_obs[alive], start[alive]
        if obs.shape[0] == 0:
            break
    out = {k: torch.cat(v) for k, v in rows.items()}
    out["nonfinite"] = torch.tensor(nonfinite)
    out["uncertain"] = torch.tensor(uncertain)
    return out


class ImaginationWorker:
    """Makes synthetic experience with the newest world model and policy.

    Usage (the driver's loop, one call in flight per worker)::

        worker = ImaginationWorker(config, replay, policy_weights, model_weights, make_policy, make_model)
        while running:
            report = worker.run(env_steps=driver_env_steps, max_seconds=2.0)   # an ImaginationReport

    ``metrics`` makes the worker's Prometheus recorder in its process (``actors.metrics.ImaginationRecorder``, the
    default, records nothing).
    """

    def __init__(
        self,
        config: ImaginationConfig,
        replay: Any,
        policy_weights: Any,
        model_weights: Any,
        make_policy: Callable[[], Any],
        make_model: Callable[[], Any],
        index: int = 0,
        local: bool = False,
        metrics: Callable[[int], ImaginationRecorder] = ImaginationRecorder,
    ):
        self.config, self.index, self._stamper = config, index, RowStamper("imagination", index)
        self.writer_id = self._stamper.writer_id
        self._replay, self._local = replay, local
        self._policy_weights, self._model_weights = policy_weights, model_weights
        self._policy, self._model = make_policy(), make_model()
        self._padded = False
        """Forwards on power-of-two row counts: bf16 on a CPU (:func:`rollout`)."""
        for part in (self._policy, self._model):  # config.precision, resolved on the part's device
            if hasattr(part, "set_dtype"):
                device = torch.device(part.device)
                dtype = resolve_precision(config.precision, device, part.hidden_sizes)
                part.set_dtype(dtype)
                self._padded |= dtype == torch.bfloat16 and device.type == "cpu"
        self._pending: deque = deque()
        self.transitions = 0
        self._metrics = metrics(index)  # Prometheus

    def _refresh(self) -> bool:
        """Load newer weights; True once both a policy and a model are there."""
        for client, target in ((self._policy_weights, self._policy), (self._model_weights, self._model)):
            state = client.poll()
            if state is not None:
                target.load_state(state)
        return self._policy_weights.version >= 0 and self._model_weights.version >= 0

    def run(self, env_steps: int, max_seconds: float) -> ImaginationReport:
        """Roll out batches until ``max_seconds`` pass (or, in process, until no start states are ready)."""
        start = time.perf_counter()
        horizon = self.config.horizon(env_steps)
        report = _Tally()
        while time.perf_counter() - start < max_seconds:
            while len(self._pending) < self.config.prefetch:
                self._pending.append(self._replay.submit_sample("real", self.config.batch_size, "imagination"))
            if not self._pending[0].done():
                if self._local:
                    break
                time.sleep(0.005)
                continue
            starts = self._pending.popleft().result()
            if not self._refresh():
                report.skipped_starts += len(starts["obs"])
                continue
            self._imagine(starts, horizon, report)
        done = ImaginationReport(
            index=self.index, writer_id=self.writer_id, horizon=horizon, **vars(report),
            seconds=time.perf_counter() - start, policy_version=self._policy_weights.version,
            model_version=self._model_weights.version,
        )
        self._metrics.record(done)
        return done

    def flush(self) -> None:
        """Wait until replay has acknowledged every transition written so far."""
        self._replay.flush()

    def set_conservatism(self, penalty_scale: float, max_disagreement: float) -> None:
        """Use this uncertainty penalty and truncation threshold from now on (offline mode sets them from the frozen
        model's calibration)."""
        if not (penalty_scale >= 0 and max_disagreement > 0) or math.isnan(penalty_scale):
            raise ValueError(f"set_conservatism(penalty_scale={penalty_scale}, max_disagreement={max_disagreement}): "
                             f"expected penalty_scale >= 0 and max_disagreement > 0")
        self.config = replace(self.config, penalty_scale=float(penalty_scale),
                              max_disagreement=float(max_disagreement))

    def _imagine(self, starts: dict[str, np.ndarray], horizon: int, report: _Tally) -> None:
        obs = torch.as_tensor(starts["obs"], dtype=torch.float32)
        with torch.inference_mode():
            out = rollout(self._policy, self._model, obs, horizon, self.config.penalty_scale,
                          self.config.max_disagreement, self._padded)
        n = int(out["obs"].shape[0])
        # every start state of the batch is an episode of its own: batch_size episode ids per rollout batch
        episode_ids = self._stamper.start_episodes(self.config.batch_size)
        chunk = self._stamper.stamp({
            "obs": out["obs"].cpu().numpy(),
            "action": out["action"].cpu().numpy(),
            "reward": out["reward"].cpu().numpy(),
            "next_obs": out["next_obs"].cpu().numpy(),
            "terminated": out["terminated"].cpu().numpy(),
            "truncated": out["truncated"].cpu().numpy(),
            "episode_id": episode_ids[out["start"].cpu().numpy()],
            "step": out["step"].cpu().numpy().astype(np.int64),
        }, policy_version=self._policy_weights.version)
        if n:
            self._replay.insert("imagined", chunk, self.writer_id)
        report.transitions += n
        report.rollouts += 1
        report.terminated += int(out["terminated"].sum())
        self._count_conservative(out, n, report)
        self.transitions += n

    def _count_conservative(self, out: dict[str, torch.Tensor], n: int, report: _Tally) -> None:
        """Add one rollout's stopped rows, penalties and disagreement to ``report`` (means over written rows)."""
        nonfinite = int(out["nonfinite"])
        if nonfinite and not report.stopped_nonfinite:
            logger.warning("imagination worker %d: %d rows stopped on non-finite model predictions (not written; "
                           "counted in stopped_nonfinite, logged once per report)", self.index, nonfinite)
        report.stopped_nonfinite += nonfinite
        report.stopped_uncertain += int(out["uncertain"])
        report.penalized += int((out["penalty"] > 0).sum())
        before = report.transitions - n  # the rows the means already cover
        if n:
            penalty, disagreement = float(out["penalty"].sum()), float(out["disagreement"].sum())
            report.penalty_mean = (report.penalty_mean * before + penalty) / (before + n)
            report.disagreement_mean = (report.disagreement_mean * before + disagreement) / (before + n)

