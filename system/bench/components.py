"""``dynaray bench components``: per-component costs in one process, one torch thread (what each actor does per call).

    dynaray bench components [--seconds S] [--json OUT]

HalfCheetah-sized rows (obs 17, action 6). Each component is called once untimed, then for ``--seconds`` of wall time
(at least once); the table gives the mean wall and CPU time (of this process) per call and rows per wall second:
``SACLearner.update`` (hidden (64, 64) at batch 128 and (256, 256) at batch 256), ``WorldModelLearner.update``
(7 members x (200,)*4, batch 256), an imagination step (``Policy.act_tensor`` and ``WorldModel.step`` on 1024 rows),
``ReplayShard.insert`` of 64-row chunks and ``ReplayShard.sample`` of 256 rows.

torch is imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from system.bench.harness import (
    Span, add_json_option, finish, load_averages, machine, positive_float, progress, random_transitions, timed_loop,
    write_report,
)

__all__ = ["OBS", "ACT", "Cost", "Report", "add_arguments", "run"]

OBS, ACT = 17, 6
"""HalfCheetah's observation and action sizes."""


def _rows(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` random transitions with every column of a replay row."""
    return {
        **random_transitions(n, OBS, ACT, rng, terminated_rate=0.01),
        "episode_id": rng.integers(0, 1000, n),
        "step": np.arange(n, dtype=np.int64),
        "policy_version": np.zeros(n, np.int64),
        "writer_id": np.zeros(n, np.int64),
        "seq": np.arange(n, dtype=np.int64),
    }


@dataclass
class Cost:
    """One component: calls timed, their wall and CPU seconds, rows per call."""

    component: str
    rows: int
    calls: int
    wall_s: float
    cpu_s: float

    @property
    def per_call_ms(self) -> float:
        return self.wall_s / self.calls * 1e3

    @property
    def per_call_cpu_ms(self) -> float:
        return self.cpu_s / self.calls * 1e3

    @property
    def rows_per_s(self) -> float:
        return self.rows * self.calls / self.wall_s


@dataclass
class Report:
    """Everything one ``dynaray bench components`` run measured."""

    settings: dict
    machine: dict
    costs: list[Cost] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "costs": [{**vars(c), "per_call_ms": c.per_call_ms, "per_call_cpu_ms": c.per_call_cpu_ms,
                       "rows_per_s": c.rows_per_s} for c in self.costs],
        }

    def markdown(self) -> str:
        lines = ["| component | time per call | CPU time per call | rows/s |", "| --- | --- | --- | --- |"]
        for c in self.costs:
            lines.append(f"| {c.component} | {c.per_call_ms:.2f} ms | {c.per_call_cpu_ms:.2f} ms | "
                         f"{c.rows_per_s:,.0f} |")
        return "\n".join(lines)


def _measure(report: Report, component: str, rows: int, call: Callable[[], object], seconds: float) -> None:
    progress(component)

    def step() -> tuple[float, float]:
        span = Span()
        call()
        return span.end()

    calls, wall, cpu = timed_loop(seconds, step)
    report.costs.append(Cost(component, rows, calls, wall, cpu))


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "per-component costs in one process, one torch thread: SAC and world-model updates, imagination, replay"
DESCRIPTION = (
    "Time per call of SACLearner.update, WorldModelLearner.update, one imagination step and a replay shard's insert "
    "and sample, HalfCheetah-sized rows, one process, one torch thread. See system/bench/components.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=positive_float, default=2.0,
                   help="timed seconds per component (default 2)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench components``: time every component, print the table, optionally write JSON."""
    import torch

    from learners.config import PolicyConfig, WorldModelConfig
    from learners.sac import Policy, SACLearner
    from learners.world_model import WorldModel, WorldModelLearner
    from replay.schema import transition_columns
    from replay.shard import ReplayShard
    from replay.table import TableConfig

    torch.set_num_threads(1)
    report = Report({"seconds": args.seconds, "obs_dim": OBS, "act_dim": ACT},
                    machine("torch", torch_threads=torch.get_num_threads()))
    rng = np.random.default_rng(0)
    low, high = -np.ones(ACT, np.float32), np.ones(ACT, np.float32)
    for hidden, size in (((64, 64), 128), ((256, 256), 256)):
        sac = SACLearner(OBS, ACT, low, high, PolicyConfig(hidden_sizes=hidden, batch_size=size, device="cpu"))
        batch = _rows(size, rng)
        _measure(report, f"SACLearner.update, hidden {hidden}, batch {size}", size, lambda: sac.update(batch),
                 args.seconds)
    wm_config = WorldModelConfig(device="cpu")
    wm = WorldModelLearner(OBS, ACT, wm_config)
    batch = _rows(256, rng)
    _measure(report, "WorldModelLearner.update, 7 x (200,)*4, batch 256", 256, lambda: wm.update(batch),
             args.seconds)
    model, policy = WorldModel(OBS, ACT, wm_config), Policy(OBS, ACT, low, high, (256, 256))
    model.load_state(wm.model_state())
    obs = torch.randn(1024, OBS)
    _measure(report, "imagination step (policy + WorldModel.step), 1024 rows", 1024,
             lambda: model.step(obs, policy.act_tensor(obs)), args.seconds)
    shard = ReplayShard([TableConfig("real", 500_000, transition_columns((OBS,), (ACT,)))])
    chunks = [_rows(64, rng) for _ in range(200)]
    written = 0

    def insert() -> None:
        nonlocal written
        chunk = dict(chunks[written % len(chunks)])
        chunk["seq"] = np.arange(64 * written, 64 * (written + 1), dtype=np.int64)  # new dedup key each call
        shard.insert("real", chunk, 0)
        written += 1

    _measure(report, "ReplayShard.insert, 64-row chunks", 64, insert, args.seconds)
    _measure(report, "ReplayShard.sample, 256 rows", 256, lambda: shard.sample("real", 256), args.seconds)
    shard.close()
    finish(report.machine)
    return write_report(report, f"{report.machine['cpus']} CPUs, one torch thread; {load_averages(report.machine)}",
                        args.json)
