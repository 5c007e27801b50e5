"""``dynaray bench imagination``: synthetic transitions/s per worker core, and the world model's forward against the
core's measured fp32 matmul peak, all in one run.

    dynaray bench imagination [--envs InvertedPendulum-v5,HalfCheetah-v5,Hopper-v5] [--batch-sizes 256,1024,4096]
                              [--seconds S] [--rounds R] [--ensemble 7] [--elites 5] [--hidden 200,200,200,200]
                              [--policy-hidden 256,256] [--json OUT]

One process, one torch thread (``torch.set_num_threads(1)``, as an imagination worker with one CPU), float32, CPU.
Models have their initial weights (speed does not depend on the values) and the learned termination head (the
default). Per env, the obs and action sizes are those of the env (made once to read its spaces). Three things are
measured, in ``--rounds`` turns that go through all of them in order, so that each sees the same load on a shared
machine:

- peak: ``torch.mm`` of two square fp32 matrices of 1024 and of 2048 (the better of the two): what one core reaches
  on a large matrix product, 2 n^3 FLOPs a call.
- forward: :meth:`learners.world_model.WorldModel.forward` of all E members on B rows (obs and action in env units:
  input normalisation, the ensemble MLP, the log-variance bounds). FLOPs: 2 * in * out per row, member and linear
  layer, summed over the E members (elementwise work not counted). GFLOP/s and the fraction of the peak.
- step: one imagination step on B rows, as the worker runs it: :func:`actors.imagination.rollout` with horizon 1
  (the policy's ``act_tensor``, ``WorldModel.step``: a random elite per row, the Gaussian sample, termination,
  the elites' disagreement; the rollout's checks for non-finite and uncertain rows, the reward penalty
  (``penalty_scale`` 1) and the written rows), under ``torch.inference_mode()``. Transitions/s, and the GFLOP/s of
  the work a step needs: the K elites' forward and the policy's linear layers.

Every number is given per second of wall time and per CPU second of this thread (``time.thread_time``: what the
worker would do on a core of its own, which other processes taking turns on the CPUs do not lower). Each round runs
each operation for ``seconds / rounds`` (at least once, after one untimed call); the reported rate is that of the
best round, for the peak as for the rest, so every fraction compares like with like. The target (issue 5): the
forward reaches at least :data:`TARGET_PEAK_FRACTION` of the peak, per CPU second.

Dimensions: E ensemble members, K elites, B rows (``--batch-sizes``).

torch and gymnasium are imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from system.bench.harness import (
    Span, add_json_option, env_ids, fail, finish, load_averages, machine, positive_float, positive_int, positive_ints,
    progress, targets_table, widths, write_report,
)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_ENVS",
    "PEAK_SIZES",
    "TARGET_PEAK_FRACTION",
    "Rate",
    "Report",
    "add_arguments",
    "linear_flops",
    "run",
]

DEFAULT_ENVS = ("InvertedPendulum-v5", "HalfCheetah-v5", "Hopper-v5")
DEFAULT_BATCH_SIZES = (256, 1024, 4096)
PEAK_SIZES = (1024, 2048)
"""Sides of the square matrices of the peak measurement."""
TARGET_PEAK_FRACTION = 0.5
"""The world-model forward's GFLOP/s over the matmul peak's, both per CPU second."""


def linear_flops(sizes: Sequence[int]) -> int:
    """FLOPs per row of a stack of linear layers with widths ``sizes`` (in, hidden..., out): 2 * in * out each."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


# ---------------------------------------------------------------------------------------------- measurement


@dataclass
class Rate:
    """Work (FLOPs or rows) per second of the best round, over wall and over CPU seconds."""

    rounds: list[dict] = field(default_factory=list)
    """Every round's calls, work, wall and CPU seconds."""

    @property
    def per_s(self) -> float:
        """Work per wall second, best round."""
        return max(r["work"] / r["wall_s"] for r in self.rounds)

    @property
    def per_cpu_s(self) -> float:
        """Work per CPU second of this thread, best round."""
        return max(r["work"] / max(r["cpu_s"], 1e-9) for r in self.rounds)

    def to_json(self) -> dict:
        return {"per_s": self.per_s, "per_cpu_s": self.per_cpu_s, "rounds": self.rounds}


def _time_round(call: Callable[[], float], seconds: float, rate: Rate) -> None:
    """One untimed call, then calls for ``seconds`` of wall time (at least one); adds the round, with the work the
    calls return, to ``rate``."""
    call()
    calls, work, span = 0, 0.0, Span(cpu=time.thread_time)
    while calls == 0 or time.perf_counter() - span.wall < seconds:
        work += call()
        calls += 1
    wall, cpu = span.end()
    rate.rounds.append({"calls": calls, "work": work, "wall_s": wall, "cpu_s": cpu})


@dataclass
class Measurement:
    """One env and batch size: the world model's forward (all E members) and the whole imagination step."""

    env: str
    obs_dim: int
    act_dim: int
    batch: int
    forward: Rate
    """FLOPs of the E-member forward."""
    step: Rate
    """Transitions: rows written by horizon-1 rollouts."""
    step_flops_per_transition: float
    """FLOPs a transition needs: the K elites' forward and the policy's linear layers, per row."""

    def forward_fraction(self, peak: float) -> float:
        return self.forward.per_cpu_s / peak

    def to_json(self, peak_cpu: float, peak_wall: float) -> dict:
        return {
            "env": self.env, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "batch": self.batch,
            "forward_flops": self.forward.to_json(), "step_transitions": self.step.to_json(),
            "step_flops_per_transition": self.step_flops_per_transition,
            "forward_peak_fraction_cpu": self.forward.per_cpu_s / peak_cpu,
            "forward_peak_fraction_wall": self.forward.per_s / peak_wall,
            "step_peak_fraction_cpu": self.step.per_cpu_s * self.step_flops_per_transition / peak_cpu,
        }


@dataclass
class Report:
    """Everything one ``dynaray bench imagination`` run measured."""

    settings: dict
    machine: dict
    peak: dict[int, Rate] = field(default_factory=dict)
    """Matrix side -> FLOPs rate of ``torch.mm``."""
    results: list[Measurement] = field(default_factory=list)

    @property
    def peak_cpu(self) -> float:
        return max(r.per_cpu_s for r in self.peak.values())

    @property
    def peak_wall(self) -> float:
        return max(r.per_s for r in self.peak.values())

    def targets(self) -> list[dict]:
        return [
            {"target": f"forward / peak, per CPU second ({r.env}, {r.batch} rows)",
             "measured": r.forward_fraction(self.peak_cpu), "goal": TARGET_PEAK_FRACTION,
             "met": bool(r.forward_fraction(self.peak_cpu) >= TARGET_PEAK_FRACTION)}
            for r in self.results
        ]

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "peak": {str(n): rate.to_json() for n, rate in self.peak.items()},
            "peak_flops_per_s": self.peak_wall,
            "peak_flops_per_cpu_s": self.peak_cpu,
            "results": [r.to_json(self.peak_cpu, self.peak_wall) for r in self.results],
            "targets": self.targets(),
        }

    def markdown(self) -> str:
        lines = ["| matmul peak | GFLOP/s | GFLOP/CPU-s |", "| --- | --- | --- |"]
        for n, rate in self.peak.items():
            lines.append(f"| torch.mm {n}x{n} | {rate.per_s / 1e9:.1f} | {rate.per_cpu_s / 1e9:.1f} |")
        peak_cpu, peak_wall = self.peak_cpu, self.peak_wall
        lines += [
            "",
            "| env | obs, act | rows | forward GFLOP/s | of peak | forward GFLOP/CPU-s | of peak (CPU) "
            "| step transitions/s | transitions/CPU-s | step GFLOP/CPU-s | of peak (CPU) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.results:
            step_gflops = r.step.per_cpu_s * r.step_flops_per_transition
            lines.append(
                f"| {r.env} | {r.obs_dim}, {r.act_dim} | {r.batch} | {r.forward.per_s / 1e9:.1f} | "
                f"{r.forward.per_s / peak_wall:.0%} | {r.forward.per_cpu_s / 1e9:.1f} | "
                f"{r.forward.per_cpu_s / peak_cpu:.0%} | {r.step.per_s:,.0f} | {r.step.per_cpu_s:,.0f} | "
                f"{step_gflops / 1e9:.1f} | {step_gflops / peak_cpu:.0%} |"
            )
        lines += targets_table(self.targets(), lambda c: f"{c['measured']:.0%}", lambda c: f">= {c['goal']:.0%}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ run


def _models(obs_dim: int, act_dim: int, args: argparse.Namespace) -> tuple[Any, Any, float, float]:
    """The world model and policy of one env, their forward FLOPs per row (E members) and step FLOPs per row."""
    import numpy as np

    from learners.sac import Policy
    from learners.config import WorldModelConfig
    from learners.world_model import WorldModel

    config = WorldModelConfig(ensemble_size=args.ensemble, num_elites=args.elites, hidden_sizes=tuple(args.hidden),
                              device="cpu")
    model = WorldModel(obs_dim, act_dim, config, seed=0)
    low, high = -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32)
    policy = Policy(obs_dim, act_dim, low, high, tuple(args.policy_hidden), seed=0)
    member = linear_flops([obs_dim + act_dim, *args.hidden, 2 * (obs_dim + 1) + 1])
    acting = linear_flops([obs_dim, *args.policy_hidden, 2 * act_dim])
    return model, policy, args.ensemble * member, args.elites * member + acting


def run(args: argparse.Namespace) -> int:
    """``dynaray bench imagination``: measure, print Markdown tables, optionally write JSON."""
    if args.elites > args.ensemble:
        return fail(f"--elites {args.elites}: expected at most --ensemble ({args.ensemble})")
    import torch

    from actors.envs import EnvConfig, EnvError, probe_env
    from actors.imagination import rollout

    sizes = {}
    for env_id in args.envs:
        try:
            spec = probe_env(EnvConfig(env_id))
        except EnvError as exc:
            return fail(f"--envs: {exc}")
        sizes[env_id] = (spec.obs_dim, spec.action_dim)
    torch.set_num_threads(1)
    settings = {
        "envs": args.envs, "batch_sizes": args.batch_sizes, "seconds": args.seconds, "rounds": args.rounds,
        "ensemble_size": args.ensemble, "num_elites": args.elites, "hidden_sizes": args.hidden,
        "policy_hidden_sizes": args.policy_hidden, "peak_sizes": list(args.peak_sizes), "dtype": "float32",
        "device": "cpu",
    }
    report = Report(settings, machine("torch", torch_threads=torch.get_num_threads()))

    generator = torch.Generator().manual_seed(0)
    calls: list[tuple[Rate, Callable[[], float]]] = []
    for n in args.peak_sizes:
        a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
        report.peak[n] = Rate()

        def matmul(a=a, b=b, flops=2.0 * n**3) -> float:
            torch.mm(a, b)
            return flops

        calls.append((report.peak[n], matmul))
    for env_id, (obs_dim, act_dim) in sizes.items():
        model, policy, forward_flops, step_flops = _models(obs_dim, act_dim, args)
        for batch in args.batch_sizes:
            obs = torch.randn(batch, obs_dim, generator=generator)
            action = torch.rand(batch, act_dim, generator=generator) * 2 - 1
            measurement = Measurement(env_id, obs_dim, act_dim, batch, Rate(), Rate(), step_flops)
            report.results.append(measurement)

            def forward(m=model, o=obs, a=action, flops=forward_flops * batch) -> float:
                m.forward(o, a)
                return flops

            def step(p=policy, m=model, o=obs) -> float:
                return rollout(p, m, o, 1, 1.0)["obs"].shape[0]  # the rows written

            calls += [(measurement.forward, forward), (measurement.step, step)]
    per_call = args.seconds / args.rounds
    with torch.inference_mode():
        for round_index in range(args.rounds):
            progress(f"round {round_index + 1} of {args.rounds}")
            for rate, call in calls:
                _time_round(call, per_call, rate)
    finish(report.machine)
    return write_report(report, (
        f"{report.machine['cpus']} CPUs, one torch thread, float32; {load_averages(report.machine)}; peak "
        f"{report.peak_cpu / 1e9:.1f} GFLOP/CPU-s, {report.peak_wall / 1e9:.1f} GFLOP/s"
    ), args.json)


HELP = "synthetic transitions/s per core and the world-model forward's fraction of the fp32 matmul peak"
DESCRIPTION = (
    "One process, one torch thread: the core's fp32 matmul peak (torch.mm), the world model's ensemble forward "
    "(GFLOP/s, fraction of that peak) and the whole imagination step (policy, model step, rollout bookkeeping; "
    "transitions/s) at several batch sizes, per wall and per CPU second. See system/bench/imagination.py for what "
    "each number means."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", type=env_ids, default=list(DEFAULT_ENVS),
                   help=f"env ids whose obs and action sizes are used (default {','.join(DEFAULT_ENVS)})")
    p.add_argument("--batch-sizes", type=positive_ints, default=list(DEFAULT_BATCH_SIZES),
                   help="rows per forward and per step (default 256,1024,4096)")
    p.add_argument("--seconds", type=positive_float, default=1.5,
                   help="timed seconds per operation and configuration, over all rounds (default 1.5)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="turns the seconds are split into; every rate is the best turn's (default 3)")
    p.add_argument("--ensemble", type=positive_int, default=7, help="ensemble members E (default 7)")
    p.add_argument("--elites", type=positive_int, default=5, help="elites K (default 5)")
    p.add_argument("--hidden", type=widths, default=[200, 200, 200, 200],
                   help="world-model hidden sizes (default 200,200,200,200)")
    p.add_argument("--policy-hidden", type=widths, default=[256, 256],
                   help="policy hidden sizes (default 256,256)")
    p.add_argument("--peak-sizes", type=positive_ints, default=list(PEAK_SIZES),
                   help="sides of the square matrices of the matmul peak (default 1024,2048)")
    add_json_option(p)


