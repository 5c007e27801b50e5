"""``dynaray bench sac``: policy-learner updates/s of dynaray's SACLearner next to Stable-Baselines3's SAC.

    dynaray bench sac [--dims 17x6,11x3] [--variants twin,twin_bf16,redq,redq_bf16,layernorm] [--updates N]
                      [--rounds R] [--no-sb3] [--json OUT]

Everything runs in one process on one torch thread, with batch 256 and 256x256 networks (actor and each critic),
observation and action sizes from ``--dims`` (17x6: HalfCheetah, 11x3: Hopper). What one round measures, per size:

- ours: ``--updates`` calls of ``SACLearner.update`` per variant (``twin``: 2 critics, the minimum of both;
  ``redq``: 10 critics, targets on a random 2 of them, as REDQ; ``layernorm``: twin critics with LayerNorm; all
  fp32; ``twin_bf16`` and ``redq_bf16``: the same with ``precision=bf16``, matmuls under bf16 autocast), each
  on a batch of 256 rows drawn uniformly from a pool of random transitions (fancy indexing of numpy columns, timed
  with the update, as SB3's buffer sampling is timed with its update).
- SB3: ``SAC.train(gradient_steps=--updates, batch_size=256)`` of a ``SAC("MlpPolicy", net_arch=[256, 256])``
  (twin critics, automatic entropy, target update every step; its defaults otherwise) whose replay buffer holds the
  same kind of random data: SB3's own update loop, buffer sampling included.

Rounds interleave the implementations (ours, SB3, ours, SB3, ...), so load from other processes falls on both
alike; the tables show medians over rounds, and each ratio is the median of the per-round ratios against SB3's rate
in the same round. Rates are given per wall-clock second and per CPU second of this process (which other processes
taking turns on the CPUs do not lower); both implementations run on one thread, so the CPU-second rates compare
their work.

FLOP/s: the matmul FLOPs of one of our updates (:func:`update_flops`: 2 per multiply-add; the backward of a
trained layer is twice its forward, weight and input gradients, less the input gradient of a first layer, whose
inputs need none) times updates per CPU second, against the best of several 2048x2048 fp32 ``torch.mm`` on this
thread in the same run (also per CPU second): how close the update gets to the core's matmul peak. Beside each of
our variants, in the same rounds, its matmuls alone: the matmul calls of one of its updates, recorded as the
kernels saw them (shapes, strides, dtypes) and replayed on random operands with nothing else between them; the
same FLOPs over their time give the ceiling an eager update of these shapes could reach if every other op (the
activations' backward, the Q head, Adam, the sampling) were free.

torch and Stable-Baselines3 are imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from system.bench.harness import (
    Span, add_json_option, finish, load_averages, machine, positive_int, progress, random_transitions,
    sb3_import_error, targets_table, write_report,
)

__all__ = ["BATCH", "HIDDEN", "MATMULS", "VARIANTS", "Operand", "Rates", "Report", "add_arguments",
           "matmul_calls", "matmul_peak", "matmuls_alone", "run", "sb3_import_error", "update_flops"]

BATCH = 256
"""Rows per update, ours and SB3's."""
HIDDEN = (256, 256)
"""Hidden layers of the actor and of each critic."""
POOL_ROWS = 10_000
"""Random transitions in our sampling pool and in SB3's replay buffer."""
VARIANTS: dict[str, dict[str, Any]] = {
    "twin": {"num_critics": 2, "critic_subset": 2, "precision": "fp32"},
    "twin_bf16": {"num_critics": 2, "critic_subset": 2, "precision": "bf16"},
    "redq": {"num_critics": 10, "critic_subset": 2, "precision": "fp32"},
    "redq_bf16": {"num_critics": 10, "critic_subset": 2, "precision": "bf16"},
    "layernorm": {"num_critics": 2, "critic_subset": 2, "critic_layer_norm": True, "precision": "fp32"},
}
"""Our configurations, as ``PolicyConfig`` fields (``_bf16``: matmuls under bf16 autocast, ``policy.precision``)."""
DEFAULT_DIMS = ((17, 6), (11, 3))
TARGET_SB3_RATIO = 2.0
"""The issue's target: our updates/s at least twice SB3's (twin critics, the same sizes)."""
TARGET_PEAK_FRACTION = 0.85
"""Issue 16's target: an update's matmul GFLOP/s (per CPU second) at least this share of the measured fp32 peak."""
SB3_INSTALL = "pip install stable-baselines3 (or: pip install -e '.[bench]')"


# ---------------------------------------------------------------------------------------------------- FLOPs


def update_flops(obs_dim: int, act_dim: int, hidden: Sequence[int] = HIDDEN, num_critics: int = 2,
                 critic_subset: int = 2, batch: int = BATCH) -> int:
    """Matmul FLOPs of one ``SACLearner.update`` (2 per multiply-add; biases, norms and activations left out).

    Target: actor forward on the next observations and ``critic_subset`` target critics forward. Critic loss: E
    critics forward, weight gradients, input gradients of every layer but the first. Actor loss: actor forward,
    E critics forward and input gradients of every layer (down to the action), actor weight gradients and input
    gradients of every layer but the first.
    """

    def macs(widths: Sequence[int]) -> tuple[int, int]:
        """Multiply-adds per row of an MLP with these widths, and the same without its first layer."""
        layers = [a * b for a, b in zip(widths[:-1], widths[1:])]
        return sum(layers), sum(layers[1:])

    critic, critic_upper = macs([obs_dim + act_dim, *hidden, 1])
    actor, actor_upper = macs([obs_dim, *hidden, 2 * act_dim])
    e, m = num_critics, critic_subset
    target = actor + m * critic
    critic_loss = e * (critic + critic + critic_upper)
    actor_loss = actor + e * (critic + critic) + actor + actor_upper
    return 2 * batch * (target + critic_loss + actor_loss)


def matmul_peak(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s of ``repeats`` fp32 ``torch.mm`` of two ``size`` x ``size`` matrices on the current torch
    threads, per wall-clock second and per CPU second of this process."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    flops = 2 * size**3
    wall, cpu = [], []
    for _ in range(repeats):
        span = Span()
        torch.mm(a, b)
        spent = span.end()
        wall.append(spent[0])
        cpu.append(spent[1])
    return {"size": size, "gflops_wall": flops / min(wall) / 1e9, "gflops_cpu": flops / max(min(cpu), 1e-9) / 1e9}


# -------------------------------------------------------------------------------------- the matmuls alone

MATMULS = ("mm", "addmm", "bmm", "baddbmm")
"""The aten matmuls an update's time is compared with (every matmul of ``SACLearner.update`` is one of these)."""


class Operand(NamedTuple):
    """A recorded tensor operand of a matmul: its layout and dtype, not its values."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: Any
    """A ``torch.dtype``."""


def matmul_calls(run: Callable[[int], None]) -> list[tuple[str, list, dict]]:
    """The matmul calls (:data:`MATMULS`) of one ``run(1)``, in order, as the kernels saw them (below autograd and
    autocast, so with their dtypes): (aten name, operands, keyword arguments), each tensor operand an
    :class:`Operand`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: list[tuple[str, list, dict]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in MATMULS:
                calls.append((func.overloadpacket.__name__, [
                    Operand(tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a for a in args
                ], dict(kwargs)))
            return func(*args, **kwargs)

    with Recorder():
        run(1)
    return calls


def matmuls_alone(calls: list[tuple[str, list, dict]], seed: int = 0) -> Callable[[int], None]:
    """A function running ``n`` times the recorded ``calls`` on random operands of the same shapes, strides (so the
    same transposed layouts) and dtypes: an update's matmuls with every other op left out, the ceiling of an eager
    update's GFLOP/s."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    def operand(spec: Any) -> Any:
        if not isinstance(spec, Operand):
            return spec
        size = 1 + sum((n - 1) * s for n, s in zip(spec.shape, spec.stride) if n > 0)
        return torch.randn(size, generator=generator).to(spec.dtype).as_strided(spec.shape, spec.stride)

    replay = [(getattr(torch.ops.aten, name), [operand(a) for a in args], kwargs) for name, args, kwargs in calls]

    def run(n: int) -> None:
        for _ in range(n):
            for op, args, kwargs in replay:
                op(*args, **kwargs)

    return run


# ------------------------------------------------------------------------------------------- implementations


def _pool(obs_dim: int, act_dim: int, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    return random_transitions(rows, obs_dim, act_dim, np.random.default_rng(seed), terminated_rate=0.01)


def ours(obs_dim: int, act_dim: int, variant: str, seed: int = 0) -> Callable[[int], None]:
    """A function running ``n`` of our updates (each on a fresh batch sampled from a random pool)."""
    from learners.config import PolicyConfig
    from learners.sac import SACLearner

    config = PolicyConfig(hidden_sizes=HIDDEN, batch_size=BATCH, device="cpu", **VARIANTS[variant])
    learner = SACLearner(obs_dim, act_dim, -1.0, 1.0, config, seed=seed)
    pool = _pool(obs_dim, act_dim, POOL_ROWS, seed)
    rng = np.random.default_rng(seed + 1)

    def run(n: int) -> None:
        for _ in range(n):
            rows = rng.integers(0, POOL_ROWS, BATCH)
            learner.update({name: column[rows] for name, column in pool.items()})

    return run


def sb3(obs_dim: int, act_dim: int, seed: int = 0) -> Callable[[int], None]:
    """A function running ``n`` gradient steps of SB3's ``SAC.train`` on a replay buffer of random data."""
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    class Spaces(gym.Env):
        """Only the spaces: SB3 builds its networks and buffer from them; it never steps this env."""

        def __init__(self) -> None:
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(obs_dim, np.float32), {}

        def step(self, action):
            return np.zeros(obs_dim, np.float32), 0.0, False, False, {}

    model = SAC(
        "MlpPolicy", Spaces(), buffer_size=POOL_ROWS, learning_starts=0, batch_size=BATCH,
        policy_kwargs={"net_arch": list(HIDDEN)}, device="cpu", seed=seed, verbose=0,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))
    buffer = model.replay_buffer
    pool = _pool(obs_dim, act_dim, POOL_ROWS, seed)
    buffer.observations[:, 0] = pool["obs"]
    buffer.next_observations[:, 0] = pool["next_obs"]
    buffer.actions[:, 0] = pool["action"]
    buffer.rewards[:, 0] = pool["reward"]
    buffer.dones[:, 0] = pool["terminated"]
    buffer.timeouts[:, 0] = pool["truncated"]
    buffer.full = True

    def run(n: int) -> None:
        model.train(gradient_steps=n, batch_size=BATCH)

    return run


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Rates:
    """One implementation at one size: updates per second in every round."""

    implementation: str
    """``ours``, ``sb3``, or ``matmuls``: the matmul calls of one of our updates alone (:func:`matmuls_alone`)."""
    variant: str
    """One of :data:`VARIANTS` (SB3: ``twin``)."""
    obs_dim: int
    act_dim: int
    wall: list[float] = field(default_factory=list)
    """Updates per wall-clock second, per round."""
    cpu: list[float] = field(default_factory=list)
    """Updates per CPU second of this process, per round."""
    flops: int | None = None
    """Matmul FLOPs of one update (ours and its matmuls alone)."""

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def gflops_cpu(self) -> float:
        """Matmul GFLOP per CPU second at the median rate (``flops`` must be set)."""
        return self.flops * self.median_cpu / 1e9


@dataclass
class Report:
    """Everything one ``dynaray bench sac`` run measured."""

    settings: dict
    machine: dict
    peak: dict = field(default_factory=dict)
    rates: list[Rates] = field(default_factory=list)
    sb3_error: str | None = None

    def find(self, implementation: str, variant: str, obs_dim: int, act_dim: int) -> Rates | None:
        for r in self.rates:
            if (r.implementation, r.variant, r.obs_dim, r.act_dim) == (implementation, variant, obs_dim, act_dim):
                return r
        return None

    def rows(self) -> list[dict]:
        """Per size and variant of ours: medians, ratios to SB3 (median of per-round ratios) and GFLOP/s."""
        out = []
        for r in self.rates:
            if r.implementation != "ours":
                continue
            theirs = self.find("sb3", "twin", r.obs_dim, r.act_dim)
            alone = self.find("matmuls", r.variant, r.obs_dim, r.act_dim)
            row = {
                "obs_dim": r.obs_dim, "act_dim": r.act_dim, "variant": r.variant,
                "updates_s": r.median_wall, "updates_cpu_s": r.median_cpu,
                "sb3_updates_s": None, "sb3_updates_cpu_s": None, "ratio": None, "ratio_cpu": None,
                "gflops_cpu": r.gflops_cpu,
                "peak_fraction": r.gflops_cpu / self.peak["gflops_cpu"] if self.peak else None,
                "matmuls_peak_fraction": (alone.gflops_cpu / self.peak["gflops_cpu"]
                                          if self.peak and alone is not None else None),
            }
            if theirs is not None:
                row.update(
                    sb3_updates_s=theirs.median_wall,
                    sb3_updates_cpu_s=theirs.median_cpu,
                    ratio=statistics.median(a / b for a, b in zip(r.wall, theirs.wall)),
                    ratio_cpu=statistics.median(a / b for a, b in zip(r.cpu, theirs.cpu)),
                )
            out.append(row)
        return out

    def targets(self) -> list[dict]:
        """The issues' targets, per size: twin critics against SB3 (wall-clock ratio); twin critics, fp32 and bf16,
        against the fp32 matmul peak."""
        rows = self.rows()
        return [
            {"target": f"updates/s x SB3 SAC (twin critics, obs {row['obs_dim']}, action {row['act_dim']})",
             "measured": row["ratio"], "goal": TARGET_SB3_RATIO, "met": bool(row["ratio"] >= TARGET_SB3_RATIO)}
            for row in rows
            if row["variant"] == "twin" and row["ratio"] is not None
        ] + [
            {"target": f"GFLOP/s of the fp32 matmul peak ({row['variant']}, obs {row['obs_dim']}, action "
                       f"{row['act_dim']})",
             "measured": row["peak_fraction"], "goal": TARGET_PEAK_FRACTION,
             "met": bool(row["peak_fraction"] >= TARGET_PEAK_FRACTION)}
            for row in rows
            if row["variant"] in ("twin", "twin_bf16") and row["peak_fraction"] is not None
        ]

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "peak": self.peak,
            "sb3_error": self.sb3_error,
            "rates": [{**asdict(r), "median_wall": r.median_wall, "median_cpu": r.median_cpu} for r in self.rates],
            "rows": self.rows(),
            "targets": self.targets(),
        }

    def markdown(self) -> str:
        def num(value: float | None, spec: str = ",.1f") -> str:
            return "-" if value is None else format(value, spec)

        lines = [
            "| obs x action | variant | updates/s | updates/CPU-s | SB3 updates/s | SB3 updates/CPU-s | x SB3 "
            "| x SB3 (CPU) | GFLOP/s (CPU) | of matmul peak | its matmuls alone, of peak |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in self.rows():
            lines.append(
                f"| {row['obs_dim']} x {row['act_dim']} | {row['variant']} | {num(row['updates_s'])} | "
                f"{num(row['updates_cpu_s'])} | {num(row['sb3_updates_s'])} | {num(row['sb3_updates_cpu_s'])} | "
                f"{num(row['ratio'], '.2f')} | {num(row['ratio_cpu'], '.2f')} | {num(row['gflops_cpu'])} | "
                f"{num(row['peak_fraction'], '.0%')} | {num(row['matmuls_peak_fraction'], '.0%')} |"
            )
        lines += [
            "",
            f"matmul peak ({self.peak['size']}x{self.peak['size']} fp32 torch.mm, one thread, best of "
            f"{self.settings['peak_repeats']}): {self.peak['gflops_cpu']:.1f} GFLOP/CPU-s, "
            f"{self.peak['gflops_wall']:.1f} GFLOP/s wall",
        ]
        lines += targets_table(self.targets(), lambda c: f"{c['measured']:.2f}", lambda c: f"{c['goal']:g}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ run


def _timed(run: Callable[[int], None], n: int) -> tuple[float, float]:
    """Updates per wall-clock second and per CPU second of ``run(n)``."""
    span = Span()
    run(n)
    wall, cpu = span.end()
    return n / wall, n / max(cpu, 1e-9)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench sac``: interleaved rounds of ours and SB3, Markdown tables, optionally JSON."""
    import torch

    torch.set_num_threads(1)

    sb3_error = None if args.no_sb3 else sb3_import_error()
    if sb3_error is not None:
        progress(f"Stable-Baselines3 does not import here ({sb3_error}); reporting ours only. To compare: "
                 f"{SB3_INSTALL}")
    with_sb3 = not args.no_sb3 and sb3_error is None
    settings = {
        "dims": [list(d) for d in args.dims], "variants": args.variants, "updates": args.updates,
        "rounds": args.rounds, "batch": BATCH, "hidden": list(HIDDEN), "sb3": with_sb3,
        "peak_repeats": args.peak_repeats,
    }
    modules = ("torch", "stable_baselines3") if with_sb3 else ("torch",)
    report = Report(settings, machine(*modules, torch_threads=torch.get_num_threads()), sb3_error=sb3_error)

    progress("matmul peak")
    report.peak = matmul_peak(repeats=args.peak_repeats)
    for obs_dim, act_dim in args.dims:
        progress(f"obs {obs_dim}, action {act_dim}: building and warming up")
        contenders: list[tuple[Rates, Callable[[int], None]]] = []
        for variant in args.variants:
            flops = update_flops(obs_dim, act_dim, HIDDEN, VARIANTS[variant]["num_critics"],
                                 VARIANTS[variant]["critic_subset"])
            update = ours(obs_dim, act_dim, variant)
            contenders.append((Rates("ours", variant, obs_dim, act_dim, flops=flops), update))
            update(args.warmup)  # the recorded update is a warm one
            contenders.append((Rates("matmuls", variant, obs_dim, act_dim, flops=flops),
                               matmuls_alone(matmul_calls(update))))
        if with_sb3:
            contenders.append((Rates("sb3", "twin", obs_dim, act_dim), sb3(obs_dim, act_dim)))
        for _, run in contenders:
            run(args.warmup)
        for round_index in range(args.rounds):
            progress(f"obs {obs_dim}, action {act_dim}: round {round_index + 1} of {args.rounds}")
            for rates, run in contenders:
                wall, cpu = _timed(run, args.updates)
                rates.wall.append(wall)
                rates.cpu.append(cpu)
        report.rates.extend(rates for rates, _ in contenders)
    finish(report.machine)
    return write_report(report, (
        f"{report.machine['cpus']} CPUs, one torch thread; {load_averages(report.machine)}; medians over "
        f"{args.rounds} interleaved rounds of {args.updates} updates"
    ), args.json)


# ------------------------------------------------------------------------------------------------------ CLI


def _dims(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected comma-separated OBSxACTION sizes such as 17x6,11x3, got {text!r}")
    return list(dict.fromkeys(pairs))  # type: ignore[arg-type]


def _variants(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in VARIANTS for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {list(VARIANTS)}, got {text!r}")
    return list(dict.fromkeys(values))


HELP = "policy-learner updates/s (batch 256, 256x256) against Stable-Baselines3 SAC, and GFLOP/s"
DESCRIPTION = (
    "Updates/s of dynaray's SACLearner (twin critics, REDQ 10/2, LayerNorm critics) and of Stable-Baselines3's "
    "SAC.train in interleaved rounds in one process on one torch thread, batch 256, 256x256 networks; our matmul "
    "GFLOP/s against a measured fp32 matmul peak. See system/bench/sac.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dims", type=_dims, default=list(DEFAULT_DIMS),
                   help="OBSxACTION sizes (default 17x6,11x3: HalfCheetah, Hopper)")
    p.add_argument("--variants", type=_variants, default=list(VARIANTS),
                   help=f"our configurations (default {','.join(VARIANTS)})")
    p.add_argument("--updates", type=positive_int, default=40, help="updates per implementation per round (default 40)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--warmup", type=positive_int, default=5,
                   help="untimed updates of each before the rounds (default 5)")
    p.add_argument("--peak-repeats", type=positive_int, default=5,
                   help="2048x2048 matmuls for the peak, best taken (default 5)")
    p.add_argument("--no-sb3", action="store_true", help="measure ours only")
    add_json_option(p)
