"""``dynaray bench locomotion``: eval return against env steps and wall time on MuJoCo locomotion, for dynaray's
model-based preset, the same system model-free, and Stable-Baselines3's SAC, at equal env steps, in one run.

    dynaray bench locomotion --envs Hopper-v5,HalfCheetah-v5 --seeds 0 1 2 --env-steps 15000 --eval-every 1000 \
        [--systems dynaray model_free sb3] [--from-steps 10000] [--episodes 5] [--jobs 2] \
        [--set key=value ...] [--runs-dir runs/bench/locomotion] [--json OUT]
    dynaray bench locomotion --merge A.json B.json [--runs-dir DIR] [--json OUT]   # one report of earlier runs

Each (env, system, seed) is one run in its own process, ``--jobs`` at a time, in ``--systems``' order (every seed
of the first system, then the next's: list the costly one first and Stable-Baselines3's cheap runs go last):

- ``dynaray``: ``dynaray train ENV_PRESET seed=S`` (the env's preset, :data:`PRESETS`: MBPO's settings) with
  ``run.total_env_steps=--env-steps``, ``eval.every_steps=--eval-every``, ``eval.episodes=--episodes``, no early
  stop, then the ``--set`` overrides: where the preset's update-to-data ratio does not fit the machine (MBPO's 20-40
  policy updates per env step, on 2 cores), ``--set policy.updates_per_step=5`` says which one the results are for;
- ``model_free``: the same with the ``model_free`` preset merged after the env's (no world model, no imagination,
  every batch real);
- ``sb3``: Stable-Baselines3's SAC with its defaults, evaluated the same way (``system/bench/sb3_sac_worker.py``),
  skipped with the reason printed where it does not import.

Every run is a directory under ``--runs-dir`` that ``dynaray plot`` reads (``config.yaml``, ``evals.parquet``);
the bench writes one plot per env with every run of it (return against env steps and against wall time). At each
budget point (every ``--eval-every`` env steps from ``--from-steps`` on) a run's return is that of its newest
evaluation at or before that many env steps (a failed run's only up to its last evaluation); the report gives, per
env and point, every system's median over seeds, and dynaray's median over SB3's: the target is 2 at every point
(issue 16; MBPO's published gap at these budgets is larger). Returns of these envs are positive once a policy moves
forward, so the ratio means "twice as far"; a point where SB3's median is not positive shows no ratio. Beside it,
"over random" counts both medians from a uniform random policy's mean return (:func:`random_return`), which is
defined wherever SB3 beats random (HalfCheetah-v5's returns are negative for SB3 in its first 10,000 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from system.bench.harness import (
    add_json_option, check, env_ids, fail, finish, load_averages, machine, positive_int, progress, targets_table,
    run_all, sb3_import_error, train_process, write_partial, write_report, write_stopped,
)

__all__ = ["PRESETS", "Report", "Run", "add_arguments", "command", "return_at", "run"]

SYSTEMS = ("dynaray", "model_free", "sb3")
PRESETS = {"Hopper-v5": "hopper", "HalfCheetah-v5": "halfcheetah", "Walker2d-v5": "walker2d",
           "InvertedPendulum-v5": "inverted_pendulum", "Pendulum-v1": "pendulum"}
"""The preset of each env dynaray has one for."""
TARGET_RATIO = 2.0
"""dynaray's median eval return over SB3's SAC's at every budget point (issue 16)."""
EXIT_FAILED = 1
"""Exit code when a run failed (the report of the others is still written)."""
RANDOM_EPISODES = 10
"""Episodes of the uniform random policy whose mean return is each env's floor (:func:`random_return`)."""


@dataclass
class Run:
    """One (env, system, seed) run and its evaluations."""

    env: str
    system: str
    seed: int
    run_dir: str
    command: list[str]
    process_s: float = 0.0
    evals: list[dict] = field(default_factory=list)
    """``{"env_steps", "wall_time_s", "return_mean"}`` of every evaluation, by env steps."""
    error: str | None = None

    @property
    def stopped(self) -> bool:
        """Whether the run ended on a SIGINT or SIGTERM (exit 130 or 143: ``dynaray train`` checkpointed and wrote
        its evaluations), not by a failure; a report still counts it only up to its last evaluation."""
        return self.error is not None and self.error.startswith(("exit code 130:", "exit code 143:"))

    def reached(self, env_steps: int) -> bool:
        """Whether the run speaks for a budget of ``env_steps``: it finished, or it failed after evaluating there
        or later (a run stopped at 4,000 env steps has no return at 10,000)."""
        return self.error is None or bool(self.evals and self.evals[-1]["env_steps"] >= env_steps)


def command(env: str, system: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    """The command line of one run."""
    if system == "sb3":
        return [sys.executable, "-m", "system.bench.sb3_sac_worker", "--env", env, "--seed", str(seed), "--steps",
                str(args.env_steps), "--eval-every", str(args.eval_every), "--episodes", str(args.episodes),
                "--out", str(run_dir)]
    presets = [PRESETS[env]] + (["model_free"] if system == "model_free" else [])
    return [sys.executable, "-m", "system.cli", "train", *presets, f"seed={seed}", f"name={run_dir.name}",
            f"run.runs_dir={run_dir.parent}", f"run.total_env_steps={args.env_steps}", "run.target_return=null",
            f"eval.every_steps={args.eval_every}", f"eval.episodes={args.episodes}", "run.progress=false",
            *args.set]


def read_evals(run_dir: Path) -> list[dict]:
    """The evaluations of a run directory, by env steps (none when it has no ``evals.parquet``)."""
    import pyarrow.parquet as pq

    path = run_dir / "evals.parquet"
    if not path.is_file():
        return []
    rows = pq.read_table(path, columns=["env_steps", "wall_time_s", "return_mean"]).to_pylist()
    return sorted((r for r in rows if r["return_mean"] is not None), key=lambda r: r["env_steps"])


def return_at(evals: list[dict], env_steps: int) -> float | None:
    """The return of the newest evaluation at or before ``env_steps`` (None before the first)."""
    before = [e["return_mean"] for e in evals if e["env_steps"] <= env_steps]
    return before[-1] if before else None


def random_return(env_id: str, episodes: int = RANDOM_EPISODES, seed: int = 0) -> float:
    """The mean return of uniformly random actions over ``episodes`` episodes of ``env_id`` (seeded, so the same
    number every time): the floor that :meth:`Report.medians`' ratio over random counts from."""
    from actors.envs import EnvConfig, make_env

    env = make_env(EnvConfig(id=env_id))
    env.action_space.seed(seed)
    total = 0.0
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
    env.close()
    return total / episodes


def one_run(env: str, system: str, seed: int, args: argparse.Namespace, stamp: str) -> Run:
    """One run to its end (a dynaray run again under a new name while Ray's node does not start: a loaded
    machine), with its evaluations."""
    runs_dir = Path(args.runs_dir).resolve()
    proc, name, seconds = train_process(lambda name: command(env, system, seed, runs_dir / name, args),
                                        f"{env}-{system}-s{seed}-{stamp}", f"{env} {system} seed {seed}")
    run_dir = runs_dir / name
    result = Run(env, system, seed, str(run_dir), proc.args, process_s=seconds, evals=read_evals(run_dir))
    if proc.returncode != 0:
        result.error = f"exit code {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    last = f"{result.evals[-1]['return_mean']:.1f} at {result.evals[-1]['env_steps']}" if result.evals else "none"
    ended = "done" if result.error is None else ("stopped" if result.stopped else "FAILED " + result.error)
    progress(f"{env} {system} seed {seed}: {ended}; last eval {last}; {result.process_s:.0f} s")
    return result


@dataclass
class Report:
    """Everything one ``dynaray bench locomotion`` run measured."""

    settings: dict
    machine: dict
    runs: list[Run] = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    """System -> why it was not run."""
    plots: dict = field(default_factory=dict)
    """Env -> the PNG of its runs."""
    random: dict = field(default_factory=dict)
    """Env -> the mean return of the uniform random policy (:func:`random_return`)."""

    def points(self) -> list[int]:
        s = self.settings
        return list(range(s["from_steps"], s["env_steps"] + 1, s["eval_every"]))

    def medians(self) -> list[dict]:
        """Per env and budget point: every system's median return over its seeds (None: no run had evaluated by
        then), dynaray's over SB3's (``ratio``: where SB3's is positive), and dynaray's gain over the random policy
        over SB3's (``over_random``: where SB3's is above random; what a ratio of returns can say when SB3's is
        negative, as on HalfCheetah in its first 10,000 steps)."""
        rows = []
        for env in self.settings["envs"]:
            for point in self.points():
                row: dict = {"env": env, "env_steps": point}
                for system in self.settings["systems"]:
                    values = [return_at(r.evals, point) for r in self.runs
                              if (r.env, r.system) == (env, system) and r.reached(point)]
                    values = [v for v in values if v is not None]
                    row[system] = statistics.median(values) if values else None
                theirs, ours = row.get("sb3"), row.get("dynaray")
                row["ratio"] = ours / theirs if ours is not None and theirs is not None and theirs > 0 else None
                floor = self.random.get(env)
                row["over_random"] = ((ours - floor) / (theirs - floor) if None not in (ours, theirs, floor)
                                      and theirs > floor else None)
                rows.append(row)
        return rows

    def targets(self) -> list[dict]:
        checks: list[dict] = []
        for row in self.medians():
            if row["ratio"] is not None:
                check(checks, f"dynaray median eval return x SB3 SAC's, {row['env']} at {row['env_steps']} env steps",
                      row["ratio"], TARGET_RATIO)
        return checks

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "runs": [asdict(r) for r in self.runs],
                "skipped": self.skipped, "plots": self.plots, "random": self.random, "medians": self.medians(),
                "targets": self.targets()}

    def markdown(self) -> str:
        systems = self.settings["systems"]
        lines = [f"| env | env steps | {' | '.join(f'{s} median' for s in systems)} | dynaray x sb3 | over random |",
                 "| --- | --- | " + "--- | " * len(systems) + "--- | --- |"]
        for row in self.medians():
            values = " | ".join("-" if row[s] is None else f"{row[s]:.1f}" for s in systems)
            ratios = " | ".join("-" if row[k] is None else f"{row[k]:.2f}" for k in ("ratio", "over_random"))
            lines.append(f"| {row['env']} | {row['env_steps']} | {values} | {ratios} |")
        floors = ", ".join(f"{env} {value:.1f}" for env, value in self.random.items())
        if floors:
            lines.append(f"\nrandom policy (mean of {RANDOM_EPISODES} episodes; \"over random\": dynaray's median "
                         f"minus it, over SB3's minus it): {floors}")
        lines += ["", "| env | system | seed | last eval (env steps: return) | wall s of the run | process s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in self.runs:
            last = f"{r.evals[-1]['env_steps']}: {r.evals[-1]['return_mean']:.1f}" if r.evals else "-"
            wall = f"{r.evals[-1]['wall_time_s']:.0f}" if r.evals else "-"
            lines.append(f"| {r.env} | {r.system} | {r.seed} | {last} | {wall} | {r.process_s:.0f} |"
                         + ("" if r.error is None else " stopped" if r.stopped else " FAILED"))
        lines += targets_table(self.targets(), lambda c: f"{c['measured']:.2f}", lambda c: f"{c['goal']:g}")
        for system, why in self.skipped.items():
            lines.append(f"\n{system}: not run ({why})")
        for env, path in self.plots.items():
            lines.append(f"\nplot of {env}: {path}")
        return "\n".join(lines)


def plot_envs(report: Report, out_dir: Path) -> None:
    """One ``dynaray plot`` PNG per env, every run of it that has an evaluation (drawn from the runs' evaluations,
    so merged reports plot runs whose directories are elsewhere)."""
    from system.plot_cli import Curve, plot_runs

    for env in report.settings["envs"]:
        curves = [Curve(f"{r.system} s{r.seed}", env, [e["env_steps"] for e in r.evals],
                        [e["wall_time_s"] for e in r.evals], [e["return_mean"] for e in r.evals], [None] * len(r.evals))
                  for r in report.runs if r.env == env and r.evals]
        if curves:
            report.plots[env] = str(plot_runs(curves, out_dir / f"locomotion-{env}.png"))


MERGED_SETTINGS = ("envs", "env_steps", "eval_every", "from_steps", "episodes")
"""What every report merged with ``--merge`` must share: the same envs, budget points and evaluations."""


def merged(paths: list[str]) -> Report:
    """One report of the runs of earlier ``--json`` outputs (:data:`MERGED_SETTINGS` equal in all): the systems and
    seeds of all, in order; the first's machine record, with every report's own (and its ``--jobs``) under
    ``merged_from``.

    Raises:
        ValueError: a file that does not read as a locomotion report, or settings that differ.
    """
    reports = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            settings = {**data["settings"], "systems": list(data["settings"]["systems"]),
                        "seeds": list(data["settings"]["seeds"])}
            reports.append((path, settings, dict(data["machine"]), [Run(**r) for r in data["runs"]]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--merge {path}: not a `dynaray bench locomotion --json` report ({e})") from None
    first_path, settings, record, _ = reports[0]
    for path, other, _, _ in reports[1:]:
        for key in MERGED_SETTINGS:
            if other.get(key) != settings.get(key):
                raise ValueError(f"--merge {path}: {key} is {other.get(key)!r}, expected {settings.get(key)!r} "
                                 f"as in {first_path}")
    settings = {**settings, "systems": list(dict.fromkeys(s for _, o, _, _ in reports for s in o["systems"])),
                "seeds": list(dict.fromkeys(s for _, o, _, _ in reports for s in o["seeds"])), "merged": paths}
    record = {**record, "merged_from": [{"json": p, "jobs": o.get("jobs"), "machine": m} for p, o, m, _ in reports]}
    return Report(settings, record, runs=[r for *_, runs in reports for r in runs],
                  random={env: random_return(env) for env in settings["envs"]})


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "eval return against env steps on MuJoCo locomotion: dynaray, dynaray model-free and SB3's SAC, equal steps"
DESCRIPTION = (
    "One run per (env, system, seed), --jobs at a time: dynaray's env preset, the same with model_free, and "
    "Stable-Baselines3's SAC; medians over seeds at every --eval-every env steps from --from-steps, dynaray x SB3, "
    "one plot per env. See system/bench/locomotion.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", type=env_ids, default=["Hopper-v5", "HalfCheetah-v5"],
                   help="envs, comma-separated; each needs a preset (default Hopper-v5,HalfCheetah-v5)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                   help="what to run (default: dynaray model_free sb3)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--env-steps", type=positive_int, default=15_000, help="env steps of every run (default 15000)")
    p.add_argument("--eval-every", type=positive_int, default=1000, help="env steps between evals (default 1000)")
    p.add_argument("--from-steps", type=positive_int, default=10_000,
                   help="the first budget point compared (default 10000)")
    p.add_argument("--episodes", type=positive_int, default=5, help="episodes per eval (default 5)")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs at once (default 2)")
    p.add_argument("--runs-dir", default="runs/bench/locomotion", help="where the runs go (default "
                   "runs/bench/locomotion)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every dynaray and model_free run, after the bench's keys")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="make no runs: report the runs of these earlier --json outputs together (the same envs and "
                        "budget points; e.g. SB3's runs made at nice 19 beside a bench of dynaray's), with plots "
                        "in --runs-dir")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench locomotion``: every run, the medians per budget point, the plots."""
    if args.merge:
        try:
            report = merged(args.merge)
        except ValueError as e:
            return fail(str(e))
        plot_envs(report, Path(args.runs_dir))
        return write_report(report, f"merged from {', '.join(args.merge)}", args.json)
    unknown = [env for env in args.envs if env not in PRESETS]
    if unknown:
        return fail(f"--envs {','.join(unknown)}: no dynaray preset for it; expected one of {', '.join(PRESETS)}")
    if args.from_steps > args.env_steps:
        return fail(f"--from-steps {args.from_steps}: expected at most --env-steps ({args.env_steps})")
    systems = list(dict.fromkeys(args.systems))
    why = sb3_import_error() if "sb3" in systems else None
    skipped = {"sb3": f"{why}; pip install -e '.[bench]'"} if why else {}
    settings = {"envs": args.envs, "systems": systems, "seeds": args.seeds, "env_steps": args.env_steps,
                "eval_every": args.eval_every, "from_steps": args.from_steps, "episodes": args.episodes,
                "jobs": args.jobs, "set": args.set, "runs_dir": args.runs_dir}
    report = Report(settings, machine("torch", "stable_baselines3"), skipped=skipped,
                    random={env: random_return(env) for env in args.envs})
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # In --systems' order, every seed of one system before the next: the costly runs start first.
    todo = [(env, system, seed) for env in args.envs for system in systems if system not in skipped
            for seed in args.seeds]
    finished: dict[int, Run] = {}

    def done(index: int, result: Run) -> None:
        finished[index] = result
        report.runs = [finished[i] for i in sorted(finished)]  # in the planned order
        write_partial(report, args.json, len(finished), len(todo))

    stopped = run_all([lambda task=task: one_run(*task, args, stamp) for task in todo], args.jobs, done)
    plot_envs(report, Path(args.runs_dir))
    finish(report.machine)
    summary = f"{report.machine['cpus']} CPUs, {args.jobs} run(s) at a time; {load_averages(report.machine)}"
    if stopped:  # what the runs evaluated before the signal (a stopped run speaks up to its last evaluation)
        return write_stopped(report, stopped, len(finished), len(todo), summary, args.json)
    code = write_report(report, summary, args.json)
    return EXIT_FAILED if any(r.error for r in report.runs) else code
