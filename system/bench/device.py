"""``dynaray bench device``: what this machine's learner device (CUDA when torch sees one, else the CPU) does at the
``hopper`` preset's sizes, and what a ``hopper`` run reaches in a wall-clock budget.

    dynaray bench device [--small] [--seconds S] [--run-seconds R] [--runs-dir DIR] [--json OUT]

tests/benchmarks/device_check.sh runs it: the prepared check for a GPU machine (under 8 minutes), and with
``--small`` the CPU fallback that ``make test`` runs (tests/system/bench/test_device.py). What it measures, in one
process on one torch thread (as the actors run with ``run.torch_threads=1``), on the device ``auto`` resolves to:

- ``sac``: ``SACLearner.update`` per second, the hopper preset's policy (obs 11, action 3, 256x256, batch 256, twin
  critics) at ``policy.precision=auto``; each batch drawn from a pool of random transitions (numpy fancy indexing,
  timed with the update) and moved to the device by the update, as in a run. On CUDA the update replays CUDA
  graphs (``policy.cuda_graphs``), and three more rates compare: ``sac_eager`` without them, ``sac_bf16`` with
  ``policy.precision=bf16``, ``sac_compiled`` with ``policy.compile`` (each after 5 untimed updates).
- ``world_model``: ``WorldModelLearner.update`` per second, the preset's model (7 members x 200x4, batch 256) at
  ``world_model.precision=auto`` (holdout routing and the periodic validation included).
- ``imagination``: imagined transitions per second of one horizon-1 :func:`actors.imagination.rollout` of 4,096
  start states (the preset's ``imagination.batch_size``) with the preset's policy and model on the device, at
  ``imagination.precision=auto``.
- ``run``: a ``dynaray train hopper`` run (its own process, embedded local Ray) with ``run.max_wall_s`` =
  ``--run-seconds`` (default 300): env steps, env steps per second of the run's wall time, and the eval return at
  the end. With a GPU the learners and the imagination worker share it (``placement.policy.num_gpus=0.5``,
  ``placement.world_model.num_gpus=0.25``, ``imagination.num_gpus=0.25``, ``imagination.device=auto``).
  ``--run-seconds 0`` skips it.

``--small`` (the CPU fallback's sizes): policy 64x64 at batch 64, model 3 members x 32x32 at batch 64, 256 start
states, and the run at debug sizes on Hopper-v5 (small networks, 300 warm-up steps, an eval every 200 env steps).
Rates are per wall-clock second (the device works asynchronously from the CPU thread; every measured call ends by
reading its result back) and, on the CPU, also per CPU second of this process.

torch is imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from system.bench.harness import (
    Span, add_json_option, finish, load_averages, machine, positive_float, progress, random_transitions, timed_loop,
    write_report,
)

__all__ = ["FULL", "SMALL", "Rate", "Report", "RunResult", "add_arguments", "run", "run_overrides"]

OBS, ACT = 11, 3
"""Hopper-v5's observation and action sizes."""
POOL_ROWS = 10_000
"""Random transitions the learners' batches are drawn from."""
FULL: dict[str, Any] = {
    "policy_hidden": (256, 256), "policy_batch": 256,
    "model_members": 7, "model_elites": 5, "model_hidden": (200, 200, 200, 200), "model_batch": 256,
    "starts": 4096,
}
"""The ``hopper`` preset's sizes (system/presets/hopper.yaml and the defaults it keeps)."""
SMALL: dict[str, Any] = {
    "policy_hidden": (64, 64), "policy_batch": 64,
    "model_members": 3, "model_elites": 2, "model_hidden": (32, 32), "model_batch": 64,
    "starts": 256,
}
"""``--small``: the CPU fallback's sizes."""
SMALL_RUN = (
    "policy.hidden_sizes=[64,64]", "policy.batch_size=64", "policy.updates_per_step=1", "policy.learning_starts=300",
    "world_model.ensemble_size=3", "world_model.num_elites=2", "world_model.hidden_sizes=[32,32]",
    "world_model.batch_size=64", "world_model.learning_starts=300", "world_model.publish_every=50",
    "world_model.validate_every=50", "rollout.warmup_steps=300", "imagination.batch_size=64",
    "imagination.starts_per_step=4", "imagination.horizon_ramp_start=300", "imagination.horizon_ramp_end=600",
    "replay.imagined_capacity=20000", "eval.every_steps=200", "eval.episodes=2", "run.report_interval_s=1",
)
"""Overrides of the ``--small`` run on top of the ``hopper`` preset."""
GPU_RUN = (
    "placement.policy.num_gpus=0.5", "placement.world_model.num_gpus=0.25", "imagination.num_gpus=0.25",
    "imagination.device=auto",
)
"""Overrides of the run when torch sees a GPU: the learners and the imagination worker share it."""


def run_overrides(small: bool, gpu: bool, seconds: float, runs_dir: str, name: str) -> list[str]:
    """The ``dynaray train hopper`` items of the run: wall budget, no env-step or return stop, sizes, GPU shares."""
    items = [f"run.max_wall_s={seconds:g}", "run.total_env_steps=100000000", "run.target_return=null",
             "run.progress=false", f"run.runs_dir={runs_dir}", f"name={name}"]
    if small:
        items += SMALL_RUN
    if gpu:
        items += GPU_RUN
    return items


# ------------------------------------------------------------------------------------------------- measuring


@dataclass
class Rate:
    """One measured operation."""

    name: str
    """``sac``, ``world_model`` or ``imagination``."""
    unit: str
    """What is counted: ``updates`` or ``transitions``."""
    per_s: float
    """Per wall-clock second."""
    per_cpu_s: float
    """Per CPU second of this process."""
    calls: int
    """Timed calls."""
    precision: str
    """The dtype its matmuls ran in (``auto`` resolved)."""
    sizes: str
    """The sizes measured, in words."""


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(name: str, unit: str, per_call: int, seconds: float, call: Callable[[], None], device: Any,
             precision: str, sizes: str) -> Rate:
    def step() -> tuple[float, float]:
        span = Span()
        call()
        _sync(device)
        return span.end()

    calls, wall, cpu = timed_loop(seconds, step)
    return Rate(name, unit, calls * per_call / wall, calls * per_call / max(cpu, 1e-9), calls,
                str(precision).replace("torch.", ""), sizes)


def _sac(sizes: dict, seconds: float, name: str = "sac", **overrides: Any) -> Rate:
    from learners.config import PolicyConfig
    from learners.sac import SACLearner

    config = PolicyConfig(**{"hidden_sizes": sizes["policy_hidden"], "batch_size": sizes["policy_batch"],
                             "precision": "auto", **overrides})
    learner = SACLearner(OBS, ACT, -1.0, 1.0, config, seed=0)
    rng = np.random.default_rng(0)
    pool = random_transitions(POOL_ROWS, OBS, ACT, rng, terminated_rate=0.01)

    def call() -> None:
        rows = rng.integers(0, POOL_ROWS, sizes["policy_batch"])
        learner.update({name: column[rows] for name, column in pool.items()})

    for _ in range(5):  # untimed: the eager updates before the graphs' capture, the capture, any compiling
        call()
    hidden = "x".join(map(str, sizes["policy_hidden"]))
    graphs = "CUDA graphs" if learner._graphs is not None else "eager"
    if "_losses" in vars(learner):
        graphs += ", compiled"
    return _measure(name, "updates", 1, seconds, call, learner.device, learner.dtype,
                    f"obs {OBS}, action {ACT}, {hidden}, batch {sizes['policy_batch']}, twin critics, {graphs}")


def _world_model(sizes: dict, seconds: float) -> Rate:
    from learners.config import WorldModelConfig
    from learners.world_model import WorldModelLearner

    config = WorldModelConfig(ensemble_size=sizes["model_members"], num_elites=sizes["model_elites"],
                              hidden_sizes=sizes["model_hidden"], batch_size=sizes["model_batch"], precision="auto")
    learner = WorldModelLearner(OBS, ACT, config, seed=0)
    rng = np.random.default_rng(1)
    pool = {**random_transitions(POOL_ROWS, OBS, ACT, rng, terminated_rate=0.01),
            "episode_id": rng.integers(0, 1000, POOL_ROWS), "step": np.arange(POOL_ROWS, dtype=np.int64)}

    def call() -> None:
        rows = rng.integers(0, POOL_ROWS, sizes["model_batch"])
        learner.update({name: column[rows] for name, column in pool.items()})

    hidden = "x".join(map(str, sizes["model_hidden"]))
    return _measure("world_model", "updates", 1, seconds, call, learner.device, learner.dtype,
                    f"{sizes['model_members']} members x {hidden}, batch {sizes['model_batch']}")


def _imagination(sizes: dict, seconds: float) -> Rate:
    import torch

    from actors.imagination import rollout
    from learners._common import resolve_precision
    from learners.config import WorldModelConfig
    from learners.networks import resolve_device
    from learners.sac import Policy
    from learners.world_model import WorldModel

    device = resolve_device("auto")
    dtype = resolve_precision("auto", device, (*sizes["model_hidden"], *sizes["policy_hidden"]))
    config = WorldModelConfig(ensemble_size=sizes["model_members"], num_elites=sizes["model_elites"],
                              hidden_sizes=sizes["model_hidden"])
    model = WorldModel(OBS, ACT, config, seed=0, device=str(device))
    policy = Policy(OBS, ACT, -1.0, 1.0, sizes["policy_hidden"], seed=0, device=str(device))
    model.set_dtype(dtype)
    policy.set_dtype(dtype)
    starts = torch.randn(sizes["starts"], OBS, device=device)

    def call() -> None:
        with torch.inference_mode():
            out = rollout(policy, model, starts, 1)
        out["obs"].sum().item()  # read back: the device's work is done

    return _measure("imagination", "transitions", sizes["starts"], seconds, call, device, dtype,
                    f"{sizes['starts']} start states, horizon 1, model {sizes['model_members']} x "
                    f"{'x'.join(map(str, sizes['model_hidden']))}, policy {'x'.join(map(str, sizes['policy_hidden']))}")


# ------------------------------------------------------------------------------------------------------ run


@dataclass
class RunResult:
    """The ``hopper`` run within the wall-clock budget."""

    command: list[str]
    exit_code: int
    process_s: float
    """Wall seconds of the whole ``dynaray train`` process (Ray's start and stop included)."""
    env_steps: int | None = None
    """Env steps of the last eval (the steps the run reached)."""
    run_s: float | None = None
    """Wall seconds of the run at its last eval."""
    env_steps_per_s: float | None = None
    """``env_steps / run_s``."""
    eval_return: float | None = None
    """Mean return of the last eval."""
    best_return: float | None = None
    evals: list[dict] = field(default_factory=list)
    """Every eval: env_steps, return_mean, wall_time_s."""
    run_dir: str | None = None


def _hopper_run(small: bool, gpu: bool, seconds: float, runs_dir: str) -> RunResult:
    import pyarrow.parquet as pq

    name = f"device-check-{time.strftime('%Y%m%d-%H%M%S')}"
    command = [sys.executable, "-m", "system.cli", "train", "hopper",
               *run_overrides(small, gpu, seconds, runs_dir, name)]
    start = time.perf_counter()
    exit_code = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
    result = RunResult(command, exit_code, time.perf_counter() - start)
    run_dir = Path(runs_dir) / name
    if (run_dir / "evals.parquet").exists():
        rows = pq.read_table(run_dir / "evals.parquet").to_pylist()
        result.run_dir = str(run_dir)
        result.evals = [{k: r.get(k) for k in ("env_steps", "return_mean", "wall_time_s")} for r in rows]
        done = [r for r in result.evals if r["return_mean"] is not None]
        if done:
            last = max(done, key=lambda r: r["env_steps"])
            result.env_steps, result.run_s = last["env_steps"], last["wall_time_s"]
            result.eval_return = last["return_mean"]
            result.env_steps_per_s = last["env_steps"] / last["wall_time_s"] if last["wall_time_s"] else None
            result.best_return = max(r["return_mean"] for r in done)
    return result


# --------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """Everything one ``dynaray bench device`` run measured."""

    settings: dict
    machine: dict
    rates: list[Rate] = field(default_factory=list)
    run: RunResult | None = None

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "rates": [asdict(r) for r in self.rates],
                "run": None if self.run is None else asdict(self.run)}

    def markdown(self) -> str:
        lines = ["| what | sizes | precision | per second | per CPU second |", "| --- | --- | --- | --- | --- |"]
        for r in self.rates:
            lines.append(f"| {r.name} {r.unit} | {r.sizes} | {r.precision} | {r.per_s:,.1f} | {r.per_cpu_s:,.1f} |")
        if self.run is not None:
            run = self.run

            def num(value: float | None, spec: str) -> str:
                return "-" if value is None else format(value, spec)

            lines += [
                "",
                "| hopper run | exit code | env steps | run s | env steps/s | eval return (last) | best |",
                "| --- | --- | --- | --- | --- | --- | --- |",
                f"| {self.settings['run_seconds']:g} s budget | {run.exit_code} | {num(run.env_steps, ',')} | "
                f"{num(run.run_s, '.0f')} | {num(run.env_steps_per_s, '.1f')} | {num(run.eval_return, '.1f')} | "
                f"{num(run.best_return, '.1f')} |",
            ]
        return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench device``: the three rates, then the run; Markdown tables, optionally JSON."""
    import torch

    from learners.networks import resolve_device

    torch.set_num_threads(1)
    device = resolve_device("auto")
    gpu = device.type == "cuda"
    sizes = SMALL if args.small else FULL
    settings = {"small": args.small, "seconds": args.seconds, "run_seconds": args.run_seconds, "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if gpu else "cpu", "sizes": sizes}
    report = Report(settings, machine("torch", torch_threads=torch.get_num_threads()))
    measures: list[tuple[str, Callable[[dict, float], Rate]]] = [("sac", _sac)]
    if gpu:  # the same update without CUDA graphs, in bf16, and compiled: each against the default in one run
        measures += [("sac_eager", lambda s, t: _sac(s, t, "sac_eager", cuda_graphs=False)),
                     ("sac_bf16", lambda s, t: _sac(s, t, "sac_bf16", precision="bf16")),
                     ("sac_compiled", lambda s, t: _sac(s, t, "sac_compiled", compile=True))]
    measures += [("world_model", _world_model), ("imagination", _imagination)]
    for name, measure in measures:
        progress(f"{name} on {device}")
        report.rates.append(measure(sizes, args.seconds))
    if args.run_seconds > 0:
        progress(f"hopper run of {args.run_seconds:g} s (run directory under {args.runs_dir})")
        report.run = _hopper_run(args.small, gpu, args.run_seconds, args.runs_dir)
    finish(report.machine)
    code = write_report(report, (
        f"device {settings['device_name']}, one torch thread; {load_averages(report.machine)}"
    ), args.json)
    if report.run is not None and (report.run.exit_code != 0 or report.run.env_steps is None):
        progress(f"the hopper run failed (exit code {report.run.exit_code}, no eval read)")
        return 1
    return code


# ------------------------------------------------------------------------------------------------------ CLI


HELP = "learner and imagination rates on this machine's device at the hopper preset's sizes, and a timed hopper run"
DESCRIPTION = (
    "SAC and world-model updates/s and imagined transitions/s at the hopper preset's sizes on the device 'auto' "
    "resolves to (CUDA if present, else CPU; precision auto), then a `dynaray train hopper` run limited to "
    "--run-seconds of wall time: env steps/s and the eval return reached. --small: the CPU fallback's sizes. "
    "See system/bench/device.py and tests/benchmarks/device_check.sh."
)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", action="store_true", help="small sizes: the CPU fallback that make test runs")
    p.add_argument("--seconds", type=positive_float, default=10.0,
                   help="wall seconds each rate is measured for (default 10)")
    p.add_argument("--run-seconds", type=_non_negative, default=300.0,
                   help="wall-clock budget of the hopper run, run.max_wall_s (default 300; 0 skips the run)")
    p.add_argument("--runs-dir", default="runs/device-check", help="where the run directory goes")
    add_json_option(p)
