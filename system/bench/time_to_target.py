"""``dynaray bench time-to-target``: env steps and wall time until a run's deterministic eval return first reaches a
target.

    dynaray bench time-to-target --seeds 0 1 2 3 4 --presets inverted_pendulum inverted_pendulum+model_free \
        --jobs 2 [--target 950] [--runs-dir runs/bench] [--set key=value ...] [--json OUT]

Each (preset, seed) is one ``dynaray train`` run in its own process (embedded local Ray), the system a user runs: a
preset given as ``a+b`` merges presets ``a`` then ``b``, and ``--set`` adds ``key=value`` overrides to every run
(after ``seed``, ``name``, ``run.runs_dir``, ``run.target_return`` and ``run.progress=false``, which the bench
sets). ``--jobs`` runs that many at once (env-step counts do not depend on it: the replay rate limiter fixes updates
per env step; wall times do). Results are read from each run directory's ``evals.parquet``: the first eval at or
above ``--target`` (env steps, wall seconds of the run), the best eval, and the process's wall seconds; medians of
env steps per preset, a run that did not reach the target counting as infinity.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from system.bench.harness import (
    add_json_option, finish, load_averages, machine, positive_int, progress, run_all, train_process, write_partial,
    write_report, write_stopped,
)

EXIT_FAILED = 1
"""Exit code when a run failed (the report of the others is still written)."""

__all__ = ["Result", "Report", "add_arguments", "first_reach", "run", "train_command"]


@dataclass
class Result:
    """One (preset, seed) run."""

    preset: str
    seed: int
    steps: int | None
    """Env steps at the first eval at or above the target; None: not reached."""
    seconds: float | None
    """Wall seconds of the run at that eval."""
    best: float
    """Best eval return of the run."""
    process_s: float
    """Wall seconds of the whole ``dynaray train`` process."""
    run_dir: str


def first_reach(run_dir: Path, target: float) -> tuple[int | None, float | None, float]:
    """(env steps, wall seconds) at the first eval of ``run_dir`` whose mean return is at least ``target`` (None,
    None if none is), and the best eval return (NaN without evals)."""
    import pyarrow.parquet as pq

    evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    best = max((e["return_mean"] for e in evals if e["return_mean"] is not None), default=float("nan"))
    for e in sorted(evals, key=lambda e: e["env_steps"]):
        if e["return_mean"] is not None and e["return_mean"] >= target:
            return e["env_steps"], e["wall_time_s"], best
    return None, None, best


def train_command(preset: str, seed: int, name: str, args: argparse.Namespace) -> list[str]:
    """The ``dynaray train`` command line of one (preset, seed) run."""
    return [sys.executable, "-m", "system.cli", "train", *preset.split("+"), f"seed={seed}", f"name={name}",
            f"run.runs_dir={args.runs_dir}", f"run.target_return={args.target}", "run.progress=false", *args.set]


def train_run(preset: str, seed: int, args: argparse.Namespace, stamp: str) -> Result | None:
    """One ``dynaray train`` run to its end; its result, or None (with its stderr's tail) when it failed."""
    proc, name, process_s = train_process(lambda name: train_command(preset, seed, name, args),
                                          f"{preset.replace('+', '-')}-s{seed}-{stamp}", f"{preset} seed {seed}")
    if proc.returncode != 0:
        progress(f"{preset} seed {seed}: failed (exit code {proc.returncode})\n{proc.stderr[-2000:]}")
        return None
    run_dir = Path(args.runs_dir) / name
    steps, seconds, best = first_reach(run_dir, args.target)
    wall = "-" if seconds is None else f"{seconds:.0f}s"
    progress(f"{preset} seed {seed}: steps={steps} wall={wall} best={best:.1f} process={process_s:.0f}s")
    return Result(preset, seed, steps, seconds, best, process_s, str(run_dir))


@dataclass
class Report:
    """Everything one ``dynaray bench time-to-target`` run measured."""

    settings: dict
    machine: dict
    results: list[Result] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    """(preset, seed) runs that exited with an error."""

    def medians(self) -> dict[str, dict]:
        """Per preset: median env steps to the target (inf: not reached at the median) and seeds that reached it."""
        out = {}
        for preset in self.settings["presets"]:
            steps = [r.steps if r.steps is not None else math.inf for r in self.results if r.preset == preset]
            if steps:
                out[preset] = {"median_steps": statistics.median(steps), "reached": sum(map(math.isfinite, steps)),
                               "runs": len(steps)}
        return out

    def to_json(self) -> dict:
        medians = {p: {**m, "median_steps": m["median_steps"] if math.isfinite(m["median_steps"]) else None}
                   for p, m in self.medians().items()}
        return {"settings": self.settings, "machine": self.machine, "results": [asdict(r) for r in self.results],
                "failed": self.failed, "medians": medians}

    def markdown(self) -> str:
        target = self.settings["target"]
        lines = [f"| preset | seed | env steps to >= {target:g} | wall s to target | best eval | process s |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.preset} | {r.seed} | {r.steps if r.steps is not None else 'not reached'} | "
                         f"{f'{r.seconds:.0f}' if r.seconds is not None else '-'} | {r.best:.1f} | {r.process_s:.0f} |")
        for preset, m in self.medians().items():
            shown = f"{m['median_steps']:g}" if math.isfinite(m["median_steps"]) else "not reached (above the budget)"
            lines.append(f"\n{preset}: median env steps to target: {shown} ({m['reached']}/{m['runs']} seeds reached "
                         f"it)")
        for f in self.failed:
            lines.append(f"\n{f['preset']} seed {f['seed']}: the run failed (its stderr is in the progress lines)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "env steps and wall time until 'dynaray train' runs reach an eval return, per preset and seed"
DESCRIPTION = (
    "One 'dynaray train' run per (preset, seed), --jobs at a time; the env steps and wall seconds at the first eval "
    "at or above --target, and the median per preset. See system/bench/time_to_target.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", nargs="+", default=["default", "model_free"],
                   help="presets to compare; a+b merges a then b (default: default model_free)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per preset (default 0 1 2)")
    p.add_argument("--target", type=float, default=950.0, help="eval return to reach (default 950)")
    p.add_argument("--runs-dir", default="runs/bench", help="where the run directories go (default runs/bench)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at once (default 1)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra key=value overrides for every run")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench time-to-target``: every (preset, seed) run, a table and the medians per preset."""
    settings = {"presets": args.presets, "seeds": args.seeds, "target": args.target, "runs_dir": args.runs_dir,
                "jobs": args.jobs, "set": args.set}
    report = Report(settings, machine())
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    runs = [(preset, seed) for preset in args.presets for seed in args.seeds]
    ended: dict[int, Result | None] = {}

    def done(index: int, result: Result | None) -> None:
        ended[index] = result
        report.results = [ended[i] for i in sorted(ended) if ended[i] is not None]  # in the planned order
        report.failed = [{"preset": runs[i][0], "seed": runs[i][1]} for i in sorted(ended) if ended[i] is None]
        write_partial(report, args.json, len(ended), len(runs))

    stopped = run_all([lambda run=run: train_run(*run, args, stamp) for run in runs], args.jobs, done)
    finish(report.machine)
    summary = f"{report.machine['cpus']} CPUs, {args.jobs} run(s) at a time; {load_averages(report.machine)}"
    if stopped:
        return write_stopped(report, stopped, len(ended), len(runs), summary, args.json)
    code = write_report(report, summary, args.json)
    return EXIT_FAILED if report.failed else code
