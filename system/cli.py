"""``dynaray``: train and evaluate.

    dynaray train [PRESET ...] [key=value ...] [--address ADDR]
    dynaray eval RUN_DIR [--episodes N]
    dynaray bench replay [--shards 1,2,4] [--samplers uniform,prioritized] [--seconds S] [--ray] [--rllib]
    dynaray replay export RUN_DIR --to DIR | import DATASET --to REPLAY_DIR | inspect RUN_DIR   (docs/replay.md)

Bad input (config, env id, checkpoint) ends in one line on stderr and a non-zero exit code, with no Ray
processes left behind.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from system.replay_cli import register as register_replay_verbs

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _fail(message: str, code: int) -> int:
    print(f"dynaray: error: {message}", file=sys.stderr)
    return code


def _run_name(config) -> str:
    if config.name:
        return config.name
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.env.id)
    return f"{env}-{time.strftime('%Y%m%d-%H%M%S')}"


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def train(args: argparse.Namespace) -> int:
    from actors.envs import EnvError, probe_env
    from system.config import ConfigError, load_config

    presets = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    try:
        config = load_config(presets, overrides)
        if args.address:
            config = replace(config, ray=replace(config.ray, address=args.address))
        spec = probe_env(config.env)
    except (ConfigError, EnvError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)

    import torch

    from system.driver import Driver, RoleError, progress_printer
    from system.run_dir import RunDir
    from system.runtime import start_ray, stop_ray
    from system.wiring import build_system, kill_system

    torch.set_num_threads(config.run.torch_threads)
    run_dir = RunDir(_unique(Path(config.run.runs_dir) / _run_name(config)))
    config = replace(config, name=run_dir.path.name)
    run_dir.create(config)
    show = progress_printer(config.run.total_env_steps) if config.run.progress else None
    system = None
    try:
        where = start_ray(config, namespace=f"dynaray-{config.name}")
        print(f"dynaray: run {config.name} on {where}; run directory {run_dir.path}", file=sys.stderr)
        system = build_system(config, spec, replay_dir=str(run_dir.replay_directory(config)))
        summary = Driver(config, spec, system, run_dir, on_report=show).run()
    except RoleError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        print("\ndynaray: interrupted; stopping every role", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConnectionError as exc:
        return _fail(f"cannot reach Ray: {exc}", EXIT_FAILED)
    finally:
        if system is not None:
            kill_system(system)
        stop_ray()
    if show:
        print(file=sys.stderr)
    best = "-" if summary.best_eval_return is None else f"{summary.best_eval_return:.1f}"
    print(
        f"dynaray: done ({summary.stopped_because}): {summary.env_steps} env steps in {summary.wall_time_s:.0f} s, "
        f"best eval return {best}, policy version {summary.policy_version}\n"
        f"dynaray: results in {summary.run_dir}"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from actors.envs import EnvError, probe_env
    from system.config import ConfigError
    from system.run_dir import CheckpointError, RunDir

    run_dir = RunDir(args.run_dir)
    try:
        config = run_dir.load_config()
        spec = probe_env(config.env)
        state = run_dir.load_state("actor")
    except (ConfigError, EnvError, CheckpointError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)

    from actors.evaluator import Evaluator
    from learners.sac import Policy

    def make_policy():
        return Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy.hidden_sizes,
                      seed=args.seed)

    evaluator = Evaluator(config.env, make_policy, seed=args.seed)
    try:
        result = evaluator.evaluate(state, args.episodes)
    except (RuntimeError, ValueError) as exc:
        return _fail(f"checkpoint in {str(run_dir.path)!r} does not fit the policy network: {exc}".splitlines()[0],
                     EXIT_BAD_INPUT)
    finally:
        evaluator.close()
    print(
        f"{config.env.id}: mean return {result['return_mean']:.1f} +- {result['return_std']:.1f} over "
        f"{args.episodes} episodes (mean length {sum(result['lengths']) / len(result['lengths']):.0f})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynaray", description="Distributed model-based RL on Ray.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="train on an embedded local Ray or an existing cluster")
    p.add_argument("items", nargs="*", metavar="PRESET|key=value",
                   help="presets merged in order after 'default', then key=value overrides (e.g. seed=3)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    p.set_defaults(func=train)

    p = verbs.add_parser("eval", help="reload a run's checkpoint and report its mean return")
    p.add_argument("run_dir", help="a run directory, e.g. runs/InvertedPendulum-v5-20261125-101500")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=12345, help="seed for the eval env resets")
    p.set_defaults(func=evaluate)

    from system import bench

    bench.register(verbs)  # dynaray bench replay
    register_replay_verbs(verbs)  # dynaray replay export|import|inspect
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
