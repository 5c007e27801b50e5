"""``dynaray bench checkpoint``: what a whole-system checkpoint costs, and how long a resumed run takes to step.

    dynaray bench checkpoint [--presets debug,hopper] [--rounds N] [--resume] [--json OUT]

Per preset (its network sizes and env): a policy and a world-model learner loop (``system/loops.py``) after a few
updates on random batches, then ``--rounds`` times: the learner pause (``LearnerLoop.checkpoint_state``, the state
copied to CPU tensors and its newest weights published, plus pickling it as Ray returns it from the learner's
process), writing the checkpoint (``system/checkpoint.py``: every file fsynced, the atomic swap), its size, and
loading it back into new learners (what a resumed or restarted learner does when it is made). The median round is
reported. ``--resume`` also runs ``dynaray train debug`` on an embedded Ray, stops it with SIGTERM after its first
checkpoint, and times ``dynaray train --resume`` from its start to its first new env step (the driver's line).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from system.bench.harness import (
    add_json_option, finish, load_averages, machine, positive_int, progress, random_transitions, write_report,
)

__all__ = ["Report", "add_arguments", "run"]


@dataclass
class Result:
    """One preset's median round."""

    preset: str
    env_id: str
    bytes: int
    pause_ms: dict
    write_ms: float
    load_ms: float


@dataclass
class Report:
    settings: dict
    machine: dict
    results: list[Result] = field(default_factory=list)
    resume: dict | None = None

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "results": [vars(r) for r in self.results],
                "resume": self.resume}

    def markdown(self) -> str:
        lines = ["| preset (env) | checkpoint size | learner pause: policy | learner pause: world model | write "
                 "(fsync, swap) | load into new learners |", "| --- | --- | --- | --- | --- | --- |"]
        for r in self.results:
            lines.append(f"| {r.preset} ({r.env_id}) | {r.bytes / 1e6:.2f} MB | {r.pause_ms['policy']:.1f} ms | "
                         f"{r.pause_ms.get('world_model', float('nan')):.1f} ms | {r.write_ms:.0f} ms | "
                         f"{r.load_ms:.0f} ms |")
        if self.resume:
            lines.append("")
            lines.append(f"`dynaray train --resume` ({self.resume['preset']}): first new env step "
                         f"{self.resume['first_step_s']:.1f} s after the command started "
                         f"({self.resume['driver_s']:.1f} s after its driver started; the rest is starting Ray and "
                         f"making every actor)")
        return "\n".join(lines)


def _batch(spec, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch = random_transitions(rows, spec.obs_dim, spec.action_dim, rng, terminated_rate=0.01)
    return {**batch, "episode_id": np.zeros(rows, np.int64), "step": np.arange(rows, dtype=np.int64)}


def _loops(config, spec, updates: int):
    """A policy and a world-model learner loop of ``config``'s sizes, after ``updates`` updates each."""
    from learners.sac import SACLearner
    from learners.world_model import WorldModelLearner
    from replay.handles import LocalHandle
    from system.loops import LearnerLoop
    from system.weights import WeightsPublisher, WeightsStore

    store = LocalHandle(WeightsStore())
    rng = np.random.default_rng(0)
    policy = SACLearner(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy)
    model = WorldModelLearner(spec.obs_dim, spec.action_dim, config.world_model)
    for _ in range(updates):
        policy.update(_batch(spec, config.policy.batch_size, rng))
        model.update(_batch(spec, config.world_model.batch_size, rng))
    return {
        name: LearnerLoop(name, learner, None, WeightsPublisher(store, name), lambda: [], 10**9, state,
                          local=True)
        for name, learner, state in (("policy", policy, policy.policy_state),
                                     ("world_model", model, model.model_state))
    }


def _round(config, spec, loops, directory: Path) -> tuple[dict, float, float, int]:
    """One checkpoint: learner pauses (ms), write and load (s), size (bytes)."""
    from system.checkpoint import describe_meta, find_checkpoint, write_checkpoint

    pauses, states = {}, {}
    for name, loop in loops.items():
        start = time.perf_counter()
        state = loop.checkpoint_state()
        pickle.dumps(state, protocol=5)  # as Ray serializes the learner's answer in its process
        pauses[name] = (time.perf_counter() - start) * 1e3
        states[name] = state
    tensors = {f"{n}.pt": {k: s[k] for k in ("learner", "weights", "version")} for n, s in states.items()}
    tensors["actor.pt"] = states["policy"]["weights"]
    start = time.perf_counter()
    path = write_checkpoint(directory, tensors, {"driver.json": {}, "replay.json": {}},
                            describe_meta(config, spec))
    write_s = time.perf_counter() - start
    size = sum(entry.stat().st_size for entry in path.iterdir())
    fresh = _loops(config, spec, 0)
    start = time.perf_counter()
    found = find_checkpoint(directory)
    for name, loop in fresh.items():
        loop.learner.load_state_dict(found.load(f"{name}.pt")["learner"])
    return pauses, write_s, time.perf_counter() - start, size


def _resume_time(preset: str, runs: Path) -> dict:
    """``dynaray train PRESET`` stopped by SIGTERM after its first checkpoint, then ``--resume``: seconds from the
    resume command's start to its first new env step."""
    run_dir = runs / "bench-resume"
    command = [sys.executable, "-m", "system.cli", "train"]
    first = subprocess.Popen([*command, preset, "name=bench-resume", f"run.runs_dir={runs}", "run.progress=false",
                              "run.checkpoint_every_s=5", "run.total_env_steps=100000", "run.target_return=null"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run_dir / "checkpoint" / "meta.json").is_file():
            if first.poll() is not None:
                raise RuntimeError(f"dynaray train {preset} ended with {first.returncode} before its first checkpoint")
            time.sleep(0.5)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    start = time.perf_counter()
    resumed = subprocess.Popen([*command, "--resume", str(run_dir), "run.progress=false"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in resumed.stdout:
            if match := re.search(r"first new env steps ([\d.]+) s after the driver started", line):
                elapsed = time.perf_counter() - start
                return {"preset": preset, "first_step_s": elapsed, "driver_s": float(match[1])}
        raise RuntimeError("the resumed run ended before its first new env step")
    finally:
        if resumed.poll() is None:
            resumed.send_signal(signal.SIGINT)
            resumed.communicate(timeout=600)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "whole-system checkpoints: size, learner pause, write and load time; resume time to the first env step"
DESCRIPTION = ("Checkpoint size, learner pause per checkpoint, time to write (fsync, atomic swap) and to load into "
               "new learners, per preset; with --resume, the time a resumed run takes to its first new env step. "
               "See system/bench/checkpoint.py.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default="debug,hopper", help="presets whose sizes to measure (default debug,hopper)")
    p.add_argument("--rounds", type=positive_int, default=5, help="checkpoints per preset (default 5; median)")
    p.add_argument("--updates", type=positive_int, default=5, help="learner updates before the first (default 5)")
    p.add_argument("--resume", action="store_true",
                   help="also time `dynaray train --resume` of a debug run to its first new env step (starts Ray)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from actors.envs import probe_env
    from system.config import load_config

    torch.set_num_threads(1)
    presets = [p for p in args.presets.split(",") if p]
    report = Report({"presets": presets, "rounds": args.rounds, "updates": args.updates, "resume": args.resume},
                    machine("torch", torch_threads=1))
    for preset in presets:
        config = load_config([preset], ["policy.device=cpu", "world_model.device=cpu"])
        spec = probe_env(config.env)
        progress(f"{preset}: {config.env.id}, {args.rounds} checkpoints")
        loops = _loops(config, spec, args.updates)
        rounds = []
        with tempfile.TemporaryDirectory() as directory:
            for _ in range(args.rounds):
                rounds.append(_round(config, spec, loops, Path(directory)))
        median = lambda values: float(np.median(values))  # noqa: E731
        report.results.append(Result(
            preset, config.env.id, rounds[-1][3],
            {name: median([r[0][name] for r in rounds]) for name in loops},
            median([r[1] for r in rounds]) * 1e3, median([r[2] for r in rounds]) * 1e3))
    if args.resume:
        progress("debug: a run stopped by SIGTERM after its first checkpoint, then --resume")
        with tempfile.TemporaryDirectory() as runs:
            report.resume = _resume_time("debug", Path(runs))
    finish(report.machine)
    summary = (f"Median of {args.rounds} checkpoints per preset, one torch thread, {os.cpu_count()} CPUs; "
               f"{load_averages(report.machine)}.")
    return write_report(report, summary, args.json)
