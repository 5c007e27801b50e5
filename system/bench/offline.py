"""``dynaray bench offline``: on the same datasets and the same policy-update budget, dynaray's offline mode
(imagination only, 0 training env steps) next to the data policy, behaviour cloning and d3rlpy's IQL and TD3+BC.

    dynaray bench offline --datasets DIR [DIR ...] --preset pendulum --updates 5000 --seeds 0 1 2
                          [--d3rlpy-python PATH] [--algos iql td3bc] [--eval-episodes 10] [--jobs 1]
                          [--runs-dir runs/bench-offline] [--set key=value ...] [--json OUT]

Per dataset (anything ``dynaray train offline`` reads, e.g. a ``dynaray collect`` directory):

- **data**: the mean return of the dataset's finished episodes (the behaviour policy's);
- **dynaray** and **BC**, per seed: one ``dynaray train offline DATASET PRESET`` run in its own process with
  ``offline.total_updates=--updates`` (behaviour cloning included), ``eval.episodes=--eval-episodes`` and the
  ``--set`` overrides; BC is its eval after the cloning phase (``offline.json`` phase ``bc``), dynaray its final
  eval;
- **d3rlpy**, per algorithm and seed: ``system/bench/d3rlpy_worker.py`` run by ``--d3rlpy-python`` (default
  ``$DYNARAY_D3RLPY_PYTHON``: the Python of a venv with d3rlpy, which pins its own gymnasium) trains for
  ``--updates`` gradient steps on the same rows and exports its greedy policy as TorchScript; this bench evaluates
  it here, in dynaray's env (``actors.envs.make_env``, the gymnasium dynaray pins), for ``--eval-episodes``
  episodes. Without that Python, or when it cannot import d3rlpy, the d3rlpy columns are skipped with the reason
  printed.

Every policy is evaluated deterministically. The report: per dataset and method the mean over seeds of the eval
return (and its spread over seeds), and dynaray's margins over BC, the data policy and the best d3rlpy algorithm as
differences of returns (Pendulum's returns are negative, so ratios of returns mislead; higher is better), then
every run with the command line that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from system.bench.harness import add_json_option, child_process, fail, finish, load_averages, machine, \
    positive_int, progress, run_all, train_process, write_partial, write_report, write_stopped

EXIT_FAILED = 1
"""Exit code when a run failed (the report of the others is still written)."""
D3RLPY_ENV = "DYNARAY_D3RLPY_PYTHON"
"""Environment variable naming the Python of d3rlpy's venv (``--d3rlpy-python`` overrides it)."""
ALGOS = ("iql", "td3bc", "cql")
WORKER = Path(__file__).with_name("d3rlpy_worker.py")

__all__ = ["Result", "Report", "add_arguments", "d3rlpy_problem", "dataset_return", "run", "train_command"]


@dataclass
class Result:
    """One method on one dataset and seed."""

    dataset: str
    method: str
    """``dynaray``, ``bc`` or a d3rlpy algorithm (``iql``, ``td3bc``, ``cql``)."""
    seed: int
    eval_return: float
    eval_std: float
    updates: int
    """Policy gradient steps (dynaray: cloning included)."""
    process_s: float
    command: str
    """The command line that reproduces it."""
    extra: dict = field(default_factory=dict)


@dataclass
class Report:
    """Everything one ``dynaray bench offline`` run measured."""

    settings: dict
    machine: dict
    data_returns: dict = field(default_factory=dict)
    """Dataset -> the mean return of its finished episodes."""
    results: list[Result] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Why a method was not run (d3rlpy absent)."""

    def methods(self) -> list[str]:
        order = ["dynaray", "bc", *ALGOS]
        return [m for m in order if any(r.method == m for r in self.results)]

    def summary(self) -> dict[str, dict]:
        """Per dataset: the data return and per method the mean, std over seeds and seed count of the eval return,
        and dynaray's margins over BC, the data policy and the best d3rlpy algorithm."""
        out: dict[str, dict] = {}
        for dataset, data_return in self.data_returns.items():
            row: dict = {"data": data_return, "methods": {}}
            for method in self.methods():
                returns = [r.eval_return for r in self.results if r.dataset == dataset and r.method == method]
                if returns:
                    row["methods"][method] = {"mean": statistics.fmean(returns), "seeds": len(returns),
                                              "std": statistics.pstdev(returns) if len(returns) > 1 else 0.0}
            means = {m: v["mean"] for m, v in row["methods"].items()}
            if "dynaray" in means:
                d3 = {m: v for m, v in means.items() if m in ALGOS}
                best = max(d3, key=d3.get) if d3 else None
                row["dynaray_minus_bc"] = means["dynaray"] - means["bc"] if "bc" in means else None
                row["dynaray_minus_data"] = means["dynaray"] - data_return
                row["best_d3rlpy"] = best
                row["dynaray_minus_best_d3rlpy"] = means["dynaray"] - d3[best] if best else None
            out[dataset] = row
        return out

    def to_json(self) -> dict:
        """The report as JSON (the bench also writes it, with ``"complete": false``, after every finished run)."""
        return {"settings": self.settings, "machine": self.machine, "data_returns": self.data_returns,
                "results": [asdict(r) for r in self.results], "failed": self.failed, "skipped": self.skipped,
                "summary": self.summary()}

    def markdown(self) -> str:
        methods = self.methods()
        lines = ["| dataset | data policy | " + " | ".join(methods) + " | dynaray - BC | dynaray - data | "
                 "dynaray - best d3rlpy |", "| --- " * (len(methods) + 5) + "|"]
        for dataset, row in self.summary().items():
            cells = [Path(dataset).name, f"{row['data']:.1f}"]
            for m in methods:
                v = row["methods"].get(m)
                cells.append("-" if v is None else f"{v['mean']:.1f} +- {v['std']:.1f} ({v['seeds']})")
            for key in ("dynaray_minus_bc", "dynaray_minus_data", "dynaray_minus_best_d3rlpy"):
                value = row.get(key)
                cells.append("-" if value is None else f"{value:+.1f}"
                             + (f" ({row['best_d3rlpy']})" if key.endswith("d3rlpy") else ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| dataset | method | seed | eval return | process s | command |", "| --- " * 6 + "|"]
        for r in self.results:
            lines.append(f"| {Path(r.dataset).name} | {r.method} | {r.seed} | {r.eval_return:.1f} +- "
                         f"{r.eval_std:.1f} | {r.process_s:.0f} | `{r.command}` |")
        lines += [f"\n{f['dataset']} {f['method']} seed {f['seed']}: failed ({f['reason']})" for f in self.failed]
        lines += [f"\nskipped: {s}" for s in self.skipped]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- datasets


def dataset_return(source: str) -> float:
    """The mean return of the dataset's finished episodes (the last row terminated or truncated; an episode cut by
    the collection budget counts too, as ``offline.json``'s behaviour return does, when none is finished)."""
    import numpy as np

    from replay.datasets import load_dataset

    data = load_dataset(source)
    rewards = data.data["reward"].astype(np.float64)
    returns = np.bincount(data.episode, weights=rewards)
    done = data.data["terminated"].astype(bool) | data.data["truncated"].astype(bool)
    finished = np.zeros(len(returns), bool)
    finished[data.episode[done]] = True
    return float(returns[finished].mean() if finished.any() else returns.mean())


def write_npz(source: str, path: Path) -> None:
    """The dataset as d3rlpy's ``MDPDataset`` arrays, rows in episode order, every episode's last row flagged
    (``terminals`` where the env ended it, else ``timeouts``)."""
    import numpy as np

    from replay.datasets import load_dataset

    data = load_dataset(source)
    order = np.lexsort((data.step, data.episode))
    episode = data.episode[order]
    last = np.r_[episode[1:] != episode[:-1], True]
    terminals = data.data["terminated"][order].astype(bool) & last
    rows = len(order)
    np.savez(path, observations=data.data["obs"][order].reshape(rows, -1).astype(np.float32),
             actions=data.data["action"][order].reshape(rows, -1).astype(np.float32),
             rewards=data.data["reward"][order].astype(np.float32), terminals=terminals.astype(np.float32),
             timeouts=(last & ~terminals).astype(np.float32))


# ------------------------------------------------------------------------------------------------------ runs


def d3rlpy_problem(python: str | None) -> str | None:
    """Why the d3rlpy columns cannot run with ``python`` (one line), or None."""
    if not python:
        return f"no d3rlpy Python given (--d3rlpy-python or ${D3RLPY_ENV}): IQL, TD3+BC and CQL not run"
    if not os.access(python, os.X_OK):
        return f"--d3rlpy-python {python!r} is not an executable file: IQL, TD3+BC and CQL not run"
    probe = subprocess.run([python, "-c", "import d3rlpy, torch; print(d3rlpy.__version__)"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{python} cannot import d3rlpy and torch ({last}): IQL, TD3+BC and CQL not run"
    return None


def train_command(dataset: str, seed: int, name: str, args: argparse.Namespace) -> list[str]:
    """The ``dynaray train offline`` command line of one (dataset, seed) run."""
    return [sys.executable, "-m", "system.cli", "train", "offline", dataset, *args.preset.split("+"), f"seed={seed}",
            f"name={name}", f"run.runs_dir={args.runs_dir}", "run.progress=false",
            f"offline.total_updates={args.updates}", f"eval.episodes={args.eval_episodes}", *args.set]


def dynaray_run(dataset: str, seed: int, args: argparse.Namespace, stamp: str) -> list[Result] | str:
    """One offline run to its end: its final (dynaray) and after-cloning (BC) evals, or why it failed."""
    proc, name, seconds = train_process(lambda name: train_command(dataset, seed, name, args),
                                        f"{Path(dataset).name}-s{seed}-{stamp}", f"{Path(dataset).name} seed {seed}")
    command = train_command(dataset, seed, name, args)
    if proc.returncode != 0:
        return f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    summary = json.loads((Path(args.runs_dir) / name / "offline.json").read_text())
    shown = shlex.join(["dynaray", *command[3:]])
    evals = {e["phase"]: e for e in summary["evals"]}
    extra = {"training_env_steps": summary["training_env_steps"], "eval_env_steps": summary["eval_env_steps"],
             "conservatism": summary["conservatism"], "run_dir": str(Path(args.runs_dir) / name)}
    results = [Result(dataset, "dynaray", seed, evals["final"]["return_mean"], evals["final"]["return_std"],
                      summary["policy_updates"], seconds, shown, extra)]
    if "bc" in evals:
        results.append(Result(dataset, "bc", seed, evals["bc"]["return_mean"], evals["bc"]["return_std"],
                              evals["bc"]["policy_updates"], seconds, shown, {"run_dir": extra["run_dir"]}))
    progress(f"{Path(dataset).name} seed {seed}: dynaray {results[0].eval_return:.1f}"
             + (f", bc {results[1].eval_return:.1f}" if len(results) > 1 else "") + f" ({seconds:.0f} s)")
    return results


def evaluate_torchscript(policy_path: Path, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the deterministic return of a TorchScript policy in dynaray's env ``env_id``."""
    import numpy as np
    import torch

    from actors.envs import EnvConfig, make_env

    policy = torch.jit.load(str(policy_path))
    env = make_env(EnvConfig(id=env_id))
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 * (seed + 1) + episode)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                action = policy(torch.as_tensor(np.asarray(obs, np.float32)[None])).numpy()[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def d3rlpy_run(dataset: str, npz: Path, algo: str, seed: int, env_id: str, args: argparse.Namespace,
               workdir: Path) -> Result | str:
    """One d3rlpy algorithm trained for ``--updates`` steps in d3rlpy's venv, evaluated here; or why it failed."""
    out = workdir / f"{Path(dataset).name}-{algo}-s{seed}.pt"
    command = [args.d3rlpy_python, str(WORKER), "--data", str(npz), "--algo", algo, "--steps", str(args.updates),
               "--seed", str(seed), "--out", str(out)]
    start = time.monotonic()
    proc = child_process(command)
    if proc.returncode != 0:
        return f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    mean, std = evaluate_torchscript(out, env_id, args.eval_episodes, seed)
    seconds = time.monotonic() - start
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    progress(f"{Path(dataset).name} seed {seed}: {algo} {mean:.1f} ({seconds:.0f} s)")
    return Result(dataset, algo, seed, mean, std, args.updates, seconds, shlex.join(command), info)


def dataset_env(dataset: str, args: argparse.Namespace) -> str:
    """The env id the runs evaluate in: the preset's (``env.id`` after ``--set``)."""
    from system.config import load_config

    return load_config([*args.preset.split("+"), "offline"], [f"offline.dataset={dataset}", *args.set]).env.id


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "dynaray's offline mode next to the data policy, behaviour cloning and d3rlpy's IQL / TD3+BC on datasets"
DESCRIPTION = (
    "Per dataset and seed: a 'dynaray train offline' run (its BC and final evals), and with a d3rlpy venv "
    "(--d3rlpy-python or $DYNARAY_D3RLPY_PYTHON) d3rlpy's algorithms for the same gradient steps, evaluated in "
    "dynaray's env. See system/bench/offline.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", nargs="+", default=[], help="datasets (e.g. 'dynaray collect' directories; required)")
    p.add_argument("--preset", default="pendulum", help="env preset(s) after 'offline', a+b merges (default pendulum)")
    p.add_argument("--updates", type=positive_int, default=5000,
                   help="policy gradient steps per method (dynaray: cloning included; default 5000)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--algos", nargs="+", choices=ALGOS, default=["iql", "td3bc"],
                   help="d3rlpy algorithms (default iql td3bc)")
    p.add_argument("--d3rlpy-python", default=os.environ.get(D3RLPY_ENV),
                   help=f"Python of a venv with d3rlpy (default ${D3RLPY_ENV}); none: d3rlpy is skipped")
    p.add_argument("--eval-episodes", type=positive_int, default=10, help="eval episodes per policy (default 10)")
    p.add_argument("--runs-dir", default="runs/bench-offline", help="run directories (default runs/bench-offline)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at once (default 1)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for the dynaray runs")
    p.add_argument("--no-dynaray", action="store_true", help="only the data return and d3rlpy (e.g. to add seeds)")
    add_json_option(p)


def check_arguments(args: argparse.Namespace) -> str | None:
    """The first bad argument (one line), or None."""
    if not args.datasets:
        return "--datasets: expected at least one dataset (e.g. a 'dynaray collect' directory)"
    for dataset in args.datasets:
        if not Path(dataset).exists():
            return f"--datasets: {dataset!r} does not exist; expected a dataset file or directory"
    if len(set(args.seeds)) != len(args.seeds):
        return f"--seeds {args.seeds}: expected distinct seeds"
    return None


def run(args: argparse.Namespace) -> int:
    """``dynaray bench offline``: every (dataset, method, seed), a table of means and the margins."""
    problem = check_arguments(args)
    if problem:
        return fail(problem)
    skip = d3rlpy_problem(args.d3rlpy_python)
    if skip:
        progress(f"d3rlpy skipped: {skip}")
    settings = {"datasets": args.datasets, "preset": args.preset, "updates": args.updates, "seeds": args.seeds,
                "algos": [] if skip else args.algos, "eval_episodes": args.eval_episodes, "runs_dir": args.runs_dir,
                "jobs": args.jobs, "set": args.set, "d3rlpy_python": args.d3rlpy_python,
                "command": shlex.join(["dynaray", "bench", "offline", *sys.argv[3:]])}
    report = Report(settings, machine("torch", "gymnasium"))
    if skip:
        report.skipped.append(skip)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    workdir = Path(args.runs_dir) / f"d3rlpy-{stamp}"
    tasks = []
    for dataset in args.datasets:
        report.data_returns[dataset] = dataset_return(dataset)
        env_id = dataset_env(dataset, args)
        if not skip:
            workdir.mkdir(parents=True, exist_ok=True)
            npz = workdir / f"{Path(dataset).name}.npz"
            write_npz(dataset, npz)
        for seed in args.seeds:
            if not args.no_dynaray:
                tasks.append((dataset, "dynaray", seed, lambda d=dataset, s=seed: dynaray_run(d, s, args, stamp)))
            if not skip:
                for algo in args.algos:
                    tasks.append((dataset, algo, seed, lambda d=dataset, a=algo, s=seed, n=npz, e=env_id:
                                  d3rlpy_run(d, n, a, s, e, args, workdir)))
    ended: list[int] = []

    def done(index: int, outcome: Any) -> None:
        dataset, method, seed, _ = tasks[index]
        ended.append(index)
        if isinstance(outcome, str):
            progress(f"{Path(dataset).name} {method} seed {seed}: failed, {outcome}")
            report.failed.append({"dataset": dataset, "method": method, "seed": seed, "reason": outcome})
        else:
            report.results.extend(outcome if isinstance(outcome, list) else [outcome])
        write_partial(report, args.json, len(ended), len(tasks))

    stopped = run_all([task for *_, task in tasks], args.jobs, done)
    finish(report.machine)
    summary = (f"{args.updates} policy gradient steps per method, {len(args.seeds)} seed(s), {args.eval_episodes} "
               f"eval episodes per policy, {args.jobs} job(s) at a time; {load_averages(report.machine)}")
    if stopped:
        return write_stopped(report, stopped, len(ended), len(tasks), summary, args.json)
    code = write_report(report, summary, args.json)
    return EXIT_FAILED if report.failed else code
