"""The learners' settings: one frozen dataclass per learner and the checks their fields declare.

Light on purpose (no torch): ``system.config`` composes these into the run's config, and a command that only reads a
config (``dynaray status``, ``dynaray scale``, ``dynaray train`` up to its checks of the input) imports them without
the learners.
``metadata["check"]`` declares a field's constraint (checked by ``system.config``); cross-field rules are in
``__post_init__``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from learners.termination import AUTO, termination_fn_problem

PRECISIONS = ("auto", "fp32", "bf16")
"""Values of a ``precision`` field: 'fp32'; 'bf16' (matmuls in bfloat16: autocast in the learners, bf16 weight copies
in inference); 'auto' (the default): bf16 on a CPU with bf16 matrix instructions (Intel AMX, AVX-512 BF16) for
networks whose hidden layers are all at least ``learners._common.BF16_MIN_WIDTH`` wide, where it is the faster,
fp32 elsewhere, CUDA included (:func:`learners._common.resolve_precision`)."""


def require(ok: bool, section: str, field: str, value: Any, allowed: str) -> None:
    """Raise ``ValueError("<section>.<field>=<value>: expected <allowed>")`` unless ``ok`` (cross-field rules of the
    configs' ``__post_init__``; single fields declare their constraint as ``metadata={"check": ...}``)."""
    if not ok:
        raise ValueError(f"{section}.{field}={value!r}: expected {allowed}")


_COMMON_DEVICE = re.compile(r"(cpu|cuda)(:[0-9]+)?")
"""Device names ``torch.device`` accepts, checked without importing torch."""


def device_problem(name: Any) -> str | None:
    """``metadata["check"]`` of a ``device`` field: what was expected, or None when ``name`` is a device name.
    Syntax only: whether CUDA exists is decided where the learner runs (``resolve_device``)."""
    ok = isinstance(name, str)
    if ok and name != "auto" and not _COMMON_DEVICE.fullmatch(name):  # other names: torch decides (imported here only)
        import torch

        try:
            torch.device(name)
        except (RuntimeError, TypeError):
            ok = False
    return None if ok else "'auto', 'cpu', 'cuda' or 'cuda:<index>'"


def precision_problem(name: Any) -> str | None:
    """``metadata["check"]`` of a ``precision`` field: what was expected, or None when ``name`` is one of
    :data:`PRECISIONS`."""
    return None if name in PRECISIONS else "'auto', 'fp32' or 'bf16'"


@dataclass(frozen=True)
class PolicyConfig:
    """Hyper-parameters of the SAC policy learner (and the policy-side schedule read by ``system/``).

    Defaults: the settings measured best on InvertedPendulum-v5 (docs/benchmarks.md). ``metadata["check"]`` declares
    each field's constraint; ``system.config`` checks it when a config is loaded."""

    hidden_sizes: tuple[int, ...] = field(default=(128, 128), metadata={"check": ">= 1", "nonempty": True})
    """Hidden layer widths of the actor and of each critic."""
    actor_lr: float = field(default=1e-3, metadata={"check": "> 0"})
    """Adam learning rate of the actor."""
    critic_lr: float = field(default=1e-3, metadata={"check": "> 0"})
    """Adam learning rate of the critics."""
    alpha_lr: float = field(default=3e-4, metadata={"check": "> 0"})
    """Adam learning rate of log(alpha), the entropy temperature."""
    gamma: float = field(default=0.99, metadata={"check": "in (0, 1]"})
    """Discount factor."""
    tau: float = field(default=0.005, metadata={"check": "in (0, 1]"})
    """Polyak averaging rate of the target critics (1 = hard copy every update)."""
    batch_size: int = field(default=256, metadata={"check": ">= 1"})
    """Rows per update batch (sampled by ``system/``)."""
    init_alpha: float = field(default=0.2, metadata={"check": "> 0"})
    """Initial entropy temperature."""
    target_entropy: float | None = None
    """Entropy target of automatic temperature tuning; None means -action_dim."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics."""
    num_critics: int = field(default=2, metadata={"check": ">= 2"})
    """Number of critics E (one batched ensemble)."""
    critic_subset: int = 2
    """Critics M in each Bellman target's minimum, 1 <= M <= E. M = E: the minimum over all critics for the target and
    the actor (clipped double Q). M < E: REDQ: a fresh random subset of M target critics per update, the actor on the
    mean of all E critics."""
    updates_per_step: float = field(default=10.0, metadata={"check": "> 0"})
    """Policy updates per real env step (read by ``system/``)."""
    real_ratio: float = field(default=0.5, metadata={"check": "in [0, 1]"})
    """Fraction of each batch drawn from real rather than imagined transitions (read by ``system/``)."""
    learning_starts: int = field(default=250, metadata={"check": ">= 0"})
    """Real env steps before the first policy update (read by ``system/``)."""
    publish_every: int = field(default=10, metadata={"check": ">= 1"})
    """Policy updates between weight publications (read by ``system/``)."""
    device: str = field(default="auto", metadata={"check": device_problem})
    """Torch device of the learner: 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:<i>'."""
    precision: str = field(default="auto", metadata={"check": precision_problem})
    """Matmul precision of the update: 'fp32'; 'bf16' (``torch.autocast`` to bfloat16: matmuls and their gradients in
    bf16, the losses, the action distribution, the optimizer and the weights in fp32); 'auto': bf16 where the CPU
    has bf16 matrix instructions and the networks are wide enough (:data:`PRECISIONS`). bf16 learned as well
    on InvertedPendulum's 5 seeds, and a 30-minute soak holds every process flat in it (docs/benchmarks.md, "bf16 on
    AMX and the fp32 ceiling")."""
    cuda_graphs: bool = True
    """On CUDA, run each update as two CUDA graphs (its losses and gradients, then its optimizer steps and target
    update), captured after a few eager updates and then replayed: the same kernels on the same values, launched
    once per graph instead of one by one from Python (``learners/cuda_graphs.py``; 6.5x the eager update on an
    H200, docs/benchmarks.md, "Device check").
    Ignored off CUDA, and with REDQ subsets (``critic_subset`` < ``num_critics``: the subset's draw stays eager)."""
    compile: bool = False
    """On CUDA, compile the update's losses and gradients with ``torch.compile`` (inductor fuses their small
    elementwise kernels) before the CUDA graphs capture them: 1.52x the graphed update's rate on an H200 (2,544
    against 1,677 updates/s at the hopper preset's sizes, metrics equal to 1.2e-7 relative) measured alone, but only
    about 5% in a run whose learners share the GPU with other processes, after some 30 s of compiling. Ignored off
    CUDA, where it was slower (docs/benchmarks.md, "Device check")."""
    prioritized: bool = False
    """Prioritized replay (Schaul et al., 2016) on table ``real``: rows drawn with probability proportional to
    ``priority ** priority_alpha``, the critic loss weighted by each row's importance weight, and each sampled
    row's priority set to its |TD error| + ``priority_eps`` after the update. The table's sampler serves every
    consumer of ``real``: the world-model learner and the imagination start states are then drawn by priority
    too (without weights). Imagined rows stay uniform."""
    priority_alpha: float = field(default=0.6, metadata={"check": ">= 0"})
    """Priority exponent alpha: ``P(i) = p_i^alpha / sum_j p_j^alpha``; 0 samples uniformly."""
    priority_beta: float = field(default=0.4, metadata={"check": "in [0, 1]"})
    """Importance exponent beta in [0, 1]: row weights ``(N * P(i))^-beta``, normalised by the batch maximum; 1
    corrects the sampling bias fully, 0 not at all."""
    priority_eps: float = field(default=1e-6, metadata={"check": "> 0"})
    """Added to |TD error| so that no row's priority is 0 (it would never be drawn again)."""
    bc_init_updates: int = field(default=0, metadata={"check": ">= 0", "note": "0: none"})
    """Offline mode (read by ``system/``): the policy's first updates are this many behaviour-cloning updates
    (``SACLearner.bc_update``) on dataset rows, before any SAC update."""
    anchor_weight: float = field(default=0.0, metadata={"check": ">= 0", "note": "0: none"})
    """Trust region around a frozen anchor actor (``SACLearner.set_anchor``: offline mode anchors the cloned
    policy): the actor loss adds ``anchor_weight * mean|Q| *`` the squared distance between its deterministic action
    and the anchor's on the batch's states, in [-1, 1] action units (TD3+BC's scale-free weighting: 0.4 is its
    alpha of 2.5). SAC's entropy bonus and a young critic otherwise pull a cloned policy away from the data in its
    first updates."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        require(
            1 <= self.critic_subset <= self.num_critics, "policy", "critic_subset", self.critic_subset,
            f"1 <= critic_subset <= num_critics ({self.num_critics})",
        )


@dataclass(frozen=True)
class WorldModelConfig:
    """Hyper-parameters of the dynamics ensemble (and the model-side schedule read by ``system/``).

    Defaults: the settings measured best on InvertedPendulum-v5 (docs/benchmarks.md). ``metadata["check"]`` declares
    each field's constraint; ``system.config`` checks it when a config is loaded."""

    enabled: bool = True
    """Train the model and imagine rollouts; False runs model-free SAC (read by ``system/``)."""
    ensemble_size: int = field(default=7, metadata={"check": ">= 1"})
    """Number of ensemble members E."""
    num_elites: int = 5
    """Members with the lowest validation MSE used for imagination, 1 <= num_elites <= ensemble_size."""
    hidden_sizes: tuple[int, ...] = field(default=(200, 200, 200, 200), metadata={"check": ">= 1", "nonempty": True})
    """Hidden layer widths of each member."""
    lr: float = field(default=1e-3, metadata={"check": "> 0"})
    """Adam learning rate."""
    weight_decay: float = field(default=5e-5, metadata={"check": ">= 0"})
    """L2 coefficient on the linear weights, added to the loss as weight_decay * sum(W^2) / 2."""
    batch_size: int = field(default=256, metadata={"check": ">= 1"})
    """Rows per update batch (sampled by ``system/``)."""
    holdout_ratio: float = field(default=0.1, metadata={"check": "in [0, 1)"})
    """Fraction of rows (by hash of episode_id, step) held out for validation and never trained on."""
    validation_size: int = field(default=5000, metadata={"check": ">= 1"})
    """Capacity of the FIFO buffer of holdout rows."""
    validate_every: int = field(default=100, metadata={"check": ">= 1"})
    """Updates between validations (member ranking and elite selection)."""
    updates_per_step: float = field(default=2.0, metadata={"check": "> 0"})
    """Model updates per real env step (read by ``system/``)."""
    learning_starts: int = field(default=250, metadata={"check": ">= 0"})
    """Real env steps before the first model update (read by ``system/``)."""
    publish_every: int = field(default=100, metadata={"check": ">= 1"})
    """Model updates between weight publications (read by ``system/``)."""
    device: str = field(default="auto", metadata={"check": device_problem})
    """Torch device of the learner: 'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:<i>'."""
    precision: str = field(default="auto", metadata={"check": precision_problem})
    """Matmul precision of the training step: 'fp32'; 'bf16' (``torch.autocast`` to bfloat16: the network's matmuls and
    their gradients in bf16, its outputs, the losses, the optimizer and the weights in fp32); 'auto': bf16 where the
    CPU has bf16 matrix instructions and the network is wide enough (:data:`PRECISIONS`). Validation always runs in
    fp32."""
    termination_fn: str | None = field(default=AUTO, metadata={"check": termination_fn_problem})
    """Known termination function used by imagination instead of the learned termination head: 'module:function'
    taking numpy (obs, action, next_obs) -> bool (N,) (e.g. 'learners.termination:hopper'); 'auto': the one
    ``learners.termination.KNOWN`` lists for the env (resolved by ``system/`` from ``env.id``), else the learned
    head; None: the learned head. A ``WorldModel`` made directly with 'auto' has no env to go by: learned head."""
    improvement_threshold: float = field(default=0.01, metadata={"check": "in [0, 1)"})
    """Relative decrease of a member's holdout MSE that counts as an improvement (early-stopping signal)."""
    early_stop_patience: int = field(default=0, metadata={"check": ">= 0", "note": "0: never pause"})
    """Validations without improvement after which gradient steps pause until the holdout MSE gets worse
    (new data); 0 never pauses (the signal ``val_since_improvement`` is reported either way)."""
    calibration_bins: int = field(default=5, metadata={"check": ">= 1"})
    """Q: disagreement quantile bins of the calibration table reported by ``validate()``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        require(
            1 <= self.num_elites <= self.ensemble_size, "world_model", "num_elites", self.num_elites,
            f"1 <= num_elites <= ensemble_size={self.ensemble_size}",
        )
