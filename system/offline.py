"""Offline mode: a policy from a fixed dataset with no training env steps (``dynaray train offline DATASET``).

The same roles as an online run, wired differently (``system/wiring.py``, by ``offline.enabled``): no rollout
workers; table ``real`` holds the dataset (imported into the run's replay directory before the shards start, and
never rate-limited); the world-model learner fits it until its holdout early stopping pauses it (or
``offline.model_max_updates``), then is frozen; the policy learner first behaviour-clones the dataset
(``policy.bc_init_updates``) or starts from another run's actor (``offline.init_from``), then is refined by SAC
only on imagined rows branched from dataset states, with the imagination's uncertainty penalty and truncation set
from the frozen model's holdout calibration (:func:`conservatism_from_calibration`). The run stops after
``offline.total_updates`` policy updates. The real env is used only by the evaluators; every eval env step is
counted (``eval_env_steps_total``) and none is ever training data.

Phases, as ``system.offline_driver.OfflineDriver`` drives them: ``fit`` (model fitting and behaviour cloning side
by side) -> ``refine`` (imagination and SAC, once both ended) -> stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class OfflineConfig:
    """Offline mode (docs/offline.md). ``metadata["check"]`` declares a field's constraint."""

    enabled: bool = False
    """Train from ``dataset`` with no rollout workers (the ``offline`` preset turns it on)."""
    dataset: str = ""
    """The dataset: a Parquet or ``.npz`` file, a directory of them, or a Minari dataset (``dynaray collect``)."""
    init_from: str = ""
    """A run directory whose checkpointed actor starts the policy instead of behaviour cloning; empty: clone."""
    total_updates: int = field(default=20_000, metadata={"check": ">= 1"})
    """Stop after this many policy updates (behaviour cloning included)."""
    model_max_updates: int = field(default=50_000, metadata={"check": ">= 1"})
    """The world model's fit ends when holdout early stopping pauses it, at the latest after this many updates."""
    critic_warmup_updates: int = field(default=0, metadata={"check": ">= 0"})
    """First SAC updates of the refinement that train only the critics (the cloned actor stays as it is)."""
    eval_every_updates: int = field(default=2_000, metadata={"check": ">= 1"})
    """Evaluate the policy in the real env every this many policy updates (and after cloning, and at the end)."""
    calibrated_conservatism: bool = True
    """Set ``imagination.penalty_scale`` and ``imagination.max_disagreement`` from the model's holdout calibration
    when its fit ends (:func:`conservatism_from_calibration`); false keeps the configured values."""
    penalty_factor: float = field(default=1.0, metadata={"check": ">= 0"})
    """Multiplies the calibrated penalty scale (1: the expected reward error per unit of disagreement)."""
    truncation_factor: float = field(default=1.0, metadata={"check": "> 0"})
    """Multiplies the calibrated truncation threshold (1: the disagreement of the most uncertain bin of held-out
    dataset rows)."""


def offline_problem(config: Any) -> str | None:
    """What a system config with ``offline.enabled`` gets wrong (one line), or None."""
    offline = config.offline
    if not offline.enabled:
        rules = [
            (config.rollout.num_workers >= 1, "rollout.num_workers=0: expected >= 1 (0 only with "
                                              "offline.enabled=true)"),
            (not config.run.init_from or config.replay.persist_real,
             "replay.persist_real=false: expected true with run.init_from (the offline run's dataset reaches the "
             "shards through the replay directory)"),
        ]
        return next((message for ok, message in rules if not ok), None)
    rules = [
        (not config.run.init_from, f"run.init_from={config.run.init_from!r}: expected '' with offline.enabled=true "
                                   f"(an offline run starts from another run's actor with offline.init_from)"),
        (config.rollout.num_workers == 0,
         f"rollout.num_workers={config.rollout.num_workers}: expected 0 with offline.enabled=true"),
        (config.world_model.enabled, "world_model.enabled=false: expected true with offline.enabled=true"),
        (config.imagination.num_workers >= 1, "imagination.num_workers=0: expected >= 1 with offline.enabled=true "
                                              "(the policy is refined only on imagined rows)"),
        (config.world_model.early_stop_patience >= 1,
         "world_model.early_stop_patience=0: expected >= 1 with offline.enabled=true (the model's fit ends by "
         "holdout early stopping)"),
        (config.replay.persist_real, "replay.persist_real=false: expected true with offline.enabled=true (the "
                                     "dataset reaches the shards through the replay directory)"),
        (not config.gateway.enabled, "gateway.enabled=true: expected false with offline.enabled=true"),
        (not config.policy.prioritized, "policy.prioritized=true: expected false with offline.enabled=true"),
        (config.policy.real_ratio == 0, f"policy.real_ratio={config.policy.real_ratio}: expected 0 with "
                                        "offline.enabled=true (the policy is refined only on imagined rows)"),
    ]
    return next((message for ok, message in rules if not ok), None)


# ---------------------------------------------------------------------------------------------------------------
# the dataset


class OfflineDataError(ValueError):
    """A dataset that does not fit offline training (one line: what, expected vs actual)."""


@dataclass(frozen=True)
class OfflineData:
    """What the run knows of its dataset once it is in the replay directory."""

    rows: int
    episodes: int
    reward_std: float
    """Standard deviation of the dataset's rewards (the penalty's unit)."""
    behaviour_return: float
    """Mean return of the dataset's episodes (the behaviour policy's; a cut last episode included)."""
    source: str


def prepare_dataset(config: Any, spec: Any, replay_dir: str) -> OfflineData:
    """Read ``offline.dataset``, check it against the env's spaces and the ``real`` table's capacity, and import it
    into ``real`` of ``replay_dir`` (which the run's shards then recover).

    Raises:
        OfflineDataError: empty, shapes that do not fit the env (naming the column and both shapes), too many
            rows; ``replay.stored.OfflineError`` / ``SchemaError`` for unreadable or non-finite data.
    """
    from replay.datasets import load_dataset
    from replay.importer import import_dataset

    source = config.offline.dataset
    if not source:
        raise OfflineDataError("offline.dataset='': expected a dataset path (dynaray train offline DATASET)")
    dataset = load_dataset(source)
    if dataset.rows == 0:
        raise OfflineDataError(f"dataset {source!r} has no rows; expected at least one transition")
    for column, shape in (("obs", spec.obs_shape), ("next_obs", spec.obs_shape), ("action", spec.action_shape)):
        got = tuple(dataset.data[column].shape[1:])
        if int(np.prod(got)) != int(np.prod(shape)) or len(got) != len(shape):
            raise OfflineDataError(f"dataset {source!r}: column {column!r} has shape {got} per row, expected "
                                   f"{tuple(shape)} (env {config.env.id})")
    if dataset.rows > config.replay.real_capacity:
        raise OfflineDataError(f"dataset {source!r} has {dataset.rows:,} rows: expected <= replay.real_capacity="
                               f"{config.replay.real_capacity:,}; raise replay.real_capacity")
    import_dataset(dataset, replay_dir, "real", shards=config.replay.num_shards)
    rewards = dataset.data["reward"].astype(np.float64)
    returns = np.bincount(dataset.episode, weights=rewards)
    return OfflineData(dataset.rows, dataset.episodes, float(rewards.std()), float(returns.mean()), source)


# ---------------------------------------------------------------------------------------------------------------
# uncertainty penalty and truncation from the calibration


def conservatism_from_calibration(metrics: Mapping[str, float], reward_std: float, bins: int,
                                  penalty_factor: float = 1.0, truncation_factor: float = 1.0
                                  ) -> tuple[float, float]:
    """``(penalty_scale, max_disagreement)`` for imagination from the world model's holdout calibration metrics
    (``val_calib_q{i}_disagreement`` / ``_error`` for i = 1..``bins``, ``val_coverage_90``; with or without the
    ``world_model_`` prefix).

    - Truncation (MOReL's unknown-state detector): ``max_disagreement`` = ``truncation_factor`` x the RMS
      disagreement of the most uncertain bin of held-out dataset rows: imagined transitions more uncertain than
      the model ever is on the data it fits count as unknown.
    - Penalty (MOPO's lambda): the disagreement-to-error slope ``k`` of the calibration table (least squares
      through the origin over the bins: the model's expected error in units of the typical state change per unit
      disagreement), raised when the 90% intervals under-cover by z(0.95) / z((1 + coverage_90) / 2), times the
      dataset's reward std, times ``penalty_factor``: each imagined reward is lowered by about the reward error the
      model is expected to make there.

    Raises:
        ValueError: a metric is missing or not finite (the model has not validated yet).
    """
    def value(name: str) -> float:
        for key in (name, f"world_model_{name}"):
            if key in metrics and metrics[key] is not None and math.isfinite(float(metrics[key])):
                return float(metrics[key])
        raise ValueError(f"world-model metric {name!r} is missing or not finite; expected a validated model")

    spread = np.array([value(f"val_calib_q{i}_disagreement") for i in range(1, bins + 1)])
    error = np.array([value(f"val_calib_q{i}_error") for i in range(1, bins + 1)])
    slope = float((spread * error).sum() / max(float((spread ** 2).sum()), 1e-12))
    coverage = min(max(value("val_coverage_90"), 1e-3), 0.999)
    inflation = max(1.0, NormalDist().inv_cdf(0.95) / NormalDist().inv_cdf((1.0 + coverage) / 2.0))
    penalty = penalty_factor * slope * inflation * reward_std
    threshold = truncation_factor * float(spread[-1])
    return penalty, threshold if threshold > 0 else math.inf
