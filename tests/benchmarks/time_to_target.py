"""Benchmark: env steps and wall time until the deterministic eval return first reaches a target.

    python -m tests.benchmarks.time_to_target --seeds 0 1 2 3 4 --presets inverted_pendulum \
        inverted_pendulum+model_free --jobs 2

Each (preset, seed) is one `dynaray train` run in its own process (embedded local Ray); a preset given as
``a+b`` merges presets ``a`` then ``b``. ``--jobs`` runs that many at once (env-step counts do not depend on it: the
replay rate limiter fixes updates per env step; wall times do). Results are read from each run directory's
evals.parquet and printed as a Markdown table, with medians per preset.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq


def first_reach(run_dir: Path, target: float) -> tuple[int | None, float | None, float]:
    evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    best = max((e["return_mean"] for e in evals if e["return_mean"] is not None), default=float("nan"))
    for e in sorted(evals, key=lambda e: e["env_steps"]):
        if e["return_mean"] is not None and e["return_mean"] >= target:
            return e["env_steps"], e["wall_time_s"], best
    return None, None, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["default", "model_free"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=950.0)
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    args = parser.parse_args()

    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    def run(preset: str, seed: int) -> tuple | None:
        name = f"{preset.replace('+', '-')}-s{seed}-{stamp}"
        cmd = [sys.executable, "-m", "system.cli", "train", *preset.split("+"), f"seed={seed}", f"name={name}",
               f"run.runs_dir={args.runs_dir}", f"run.target_return={args.target}", "run.progress=false", *args.set]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(f"{preset} seed {seed}: failed\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
            return None
        steps, seconds, best = first_reach(Path(args.runs_dir) / name, args.target)
        print(f"{preset} seed {seed}: steps={steps} wall={seconds} best={best:.1f} process={wall:.0f}s", flush=True)
        return preset, seed, steps, seconds, best, wall

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run, preset, seed) for preset in args.presets for seed in args.seeds]
        results = [r for r in (f.result() for f in futures) if r is not None]

    print(f"\n| preset | seed | env steps to >= {args.target:g} | wall s to target | best eval | process s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for preset, seed, steps, seconds, best, wall in results:
        print(f"| {preset} | {seed} | {steps if steps is not None else 'not reached'} | "
              f"{f'{seconds:.0f}' if seconds is not None else '-'} | {best:.1f} | {wall:.0f} |")
    for preset in args.presets:
        steps = [r[2] if r[2] is not None else math.inf for r in results if r[0] == preset]
        if steps:
            median = statistics.median(steps)
            shown = f"{median:g}" if math.isfinite(median) else "not reached (above the budget)"
            reached = sum(math.isfinite(s) for s in steps)
            print(f"\n{preset}: median env steps to target: {shown} ({reached}/{len(steps)} seeds reached it)")


if __name__ == "__main__":
    main()
