"""Benchmark: env steps and wall time until the deterministic eval return first reaches a target.

    python -m tests.benchmarks.time_to_target --seeds 0 1 2 --presets default model_free \
        --set eval.every_steps=250 eval.episodes=5 run.target_return=950

Each (preset, seed) is one `dynaray train` run in its own process (embedded local Ray); results are read from the
run directory's evals.parquet and printed as a Markdown table, with medians per preset.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
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
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every run")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for preset in args.presets:
        for seed in args.seeds:
            name = f"{preset}-s{seed}-{stamp}"
            cmd = [sys.executable, "-m", "system.cli", "train", preset, f"seed={seed}", f"name={name}",
                   f"run.runs_dir={args.runs_dir}", f"run.target_return={args.target}", "run.progress=false", *args.set]
            start = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.monotonic() - start
            if proc.returncode != 0:
                print(f"{preset} seed {seed}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            steps, seconds, best = first_reach(Path(args.runs_dir) / name, args.target)
            results.append((preset, seed, steps, seconds, best, wall))
            print(f"{preset} seed {seed}: steps={steps} wall={seconds} best={best:.1f} process={wall:.0f}s", flush=True)

    print(f"\n| preset | seed | env steps to >= {args.target:g} | wall s to target | best eval | process s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for preset, seed, steps, seconds, best, wall in results:
        print(f"| {preset} | {seed} | {steps if steps is not None else 'not reached'} | "
              f"{f'{seconds:.0f}' if seconds is not None else '-'} | {best:.1f} | {wall:.0f} |")
    for preset in args.presets:
        reached = [r[2] for r in results if r[0] == preset and r[2] is not None]
        runs = [r for r in results if r[0] == preset]
        if runs:
            median = statistics.median(reached) if len(reached) == len(runs) else "n/a (not all seeds reached it)"
            print(f"\n{preset}: median env steps to target: {median} ({len(reached)}/{len(runs)} seeds reached it)")


if __name__ == "__main__":
    main()
