"""``dynaray collect``: write an offline dataset from a behaviour policy, as Parquet and as a Minari dataset.

    dynaray collect --env ID --steps N --to DIR [--policy RUN_DIR] [--noise S] [--stochastic] [--seed N]
                    [--format parquet,minari] [--dataset-id ID] [--max-episode-steps N]

Writes into DIR (new or empty):

    transitions.parquet      the transition rows of docs/architecture.md (``dynaray replay import DIR`` reads them)
    minari/<dataset id>/     a Minari dataset, Arrow backend (``dynaray replay import DIR/minari/<dataset id>``)
    collect.json             what was collected: env, behaviour policy, noise, steps, episodes, returns

Behaviour policy: uniform random actions, or ``--policy RUN_DIR``'s checkpointed actor (deterministic, plus
``--noise`` times the action half-range of Gaussian noise; ``--stochastic`` samples from the policy instead). The
env defaults to the policy run's env. docs/offline.md shows the standard kinds (random, medium, medium-replay,
expert). Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 2
FORMATS = ("parquet", "minari")


def _fail(message: str) -> int:
    print(f"dynaray: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def write_parquet(path: str, transitions: dict[str, np.ndarray], obs_shape: tuple, action_shape: tuple,
                  policy_version: int) -> None:
    """The collected transitions as one Parquet file of the replay's transition schema (``collect`` writer id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from replay.schema import chunk_to_record_batch, transition_columns
    from replay.writers import RowStamper

    stamper = RowStamper("collect", 0)
    rows = len(transitions["step"])
    ids = stamper.start_episodes(int(transitions["episode"][-1]) + 1)
    chunk = stamper.stamp({
        "obs": transitions["obs"].reshape(rows, *obs_shape),
        "action": transitions["action"].reshape(rows, *action_shape),
        "reward": transitions["reward"],
        "next_obs": transitions["next_obs"].reshape(rows, *obs_shape),
        "terminated": transitions["terminated"],
        "truncated": transitions["truncated"],
        "episode_id": ids[transitions["episode"]],
        "step": transitions["step"],
    }, policy_version=policy_version)
    batch = chunk_to_record_batch(chunk, transition_columns(obs_shape, action_shape))
    pq.write_table(pa.Table.from_batches([batch]), path)


def _default_dataset_id(env_id: str, kind: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "", env_id.split("-v")[0].split(":")[-1].lower()) or "env"
    return f"dynaray/{name}/{kind}-v0"


def collect_command(args: argparse.Namespace) -> int:
    from actors.envs import EnvConfig, EnvError, make_env, probe_env
    from system.config import ConfigError
    from system.run_dir import CheckpointError, RunDir

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        return _fail(f"--format {args.format!r}: expected a comma-separated list of {', '.join(FORMATS)}")
    if args.steps < 1:
        return _fail(f"--steps {args.steps}: expected an int >= 1")
    if args.noise < 0:
        return _fail(f"--noise {args.noise}: expected a number >= 0")
    target = Path(args.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        return _fail(f"--to {args.to!r} exists and is not an empty directory; expected a new or empty directory")

    # behaviour policy and env
    policy, policy_version, run_config = None, -1, None
    if args.policy:
        run_dir = RunDir(args.policy)
        try:
            run_config = run_dir.load_config()
            state = run_dir.load_state("actor")
        except (ConfigError, CheckpointError, OSError) as exc:
            return _fail(f"--policy {args.policy!r}: {exc}")
        meta_path = run_dir.checkpoint / "meta.json"
        policy_version = int(json.loads(meta_path.read_text()).get("policy_version", 0))
    env_config = run_config.env if run_config is not None else EnvConfig()
    if args.env:
        env_config = replace(env_config, id=args.env, kwargs={} if run_config is None or args.env != run_config.env.id
                             else env_config.kwargs)
    if args.max_episode_steps is not None:
        env_config = replace(env_config, max_episode_steps=args.max_episode_steps)
    try:
        spec = probe_env(env_config)
    except EnvError as exc:
        return _fail(str(exc))
    if run_config is not None:
        from learners.sac import Policy

        policy = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high,
                        run_config.policy.hidden_sizes, seed=args.seed)
        try:
            policy.load_state(state)
        except (RuntimeError, ValueError) as exc:
            return _fail(f"--policy {args.policy!r}: its actor does not fit env {env_config.id} "
                         f"(obs {spec.obs_shape}, action {spec.action_shape}): {str(exc).splitlines()[0]}")

    # collect, then write
    from actors.collector import collect
    from replay.minari_io import write_minari
    from replay.stored import OfflineError

    kind = "random" if policy is None else ("stochastic" if args.stochastic else f"noise{args.noise:g}")
    collected = collect(env_config, args.steps, policy, noise=args.noise, stochastic=args.stochastic, seed=args.seed)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    if "parquet" in formats:
        path = str(target / "transitions.parquet")
        write_parquet(path, collected.transitions(), spec.obs_shape, spec.action_shape, policy_version)
        written.append(path)
    dataset_id = args.dataset_id or _default_dataset_id(env_config.id, kind)
    if "minari" in formats:
        env = make_env(env_config)
        try:
            written.append(write_minari(
                str(target / "minari"), dataset_id, collected.episodes, env.observation_space, env.action_space,
                env_id=None if ":" in env_config.id else env_config.id, algorithm_name=f"dynaray collect ({kind})",
                description=f"{args.steps} steps of {kind} behaviour on {env_config.id}",
            ))
        except OfflineError as exc:
            return _fail(str(exc))
        finally:
            env.close()
    summary = {
        "env_id": env_config.id, "env_kwargs": dict(env_config.kwargs),
        "max_episode_steps": env_config.max_episode_steps,
        "policy": os.path.abspath(args.policy) if args.policy else None, "policy_version": policy_version,
        "behaviour": kind, "noise": args.noise, "stochastic": args.stochastic, "seed": args.seed,
        "steps": collected.steps, "episodes": len(collected.episodes), "finished_episodes": len(collected.returns),
        "return_mean": None if not collected.returns else collected.return_mean,
        "return_std": None if not collected.returns else float(np.std(collected.returns)),
        "minari_dataset_id": dataset_id if "minari" in formats else None, "seconds": collected.seconds,
    }
    (target / "collect.json").write_text(json.dumps(summary, indent=1) + "\n")
    shown = "-" if not collected.returns else f"{collected.return_mean:.1f}"
    print(f"dynaray: collected {collected.steps:,} steps ({len(collected.returns):,} finished episodes, mean return "
          f"{shown}) of {kind} behaviour on {env_config.id} in {collected.seconds:.1f} s")
    for path in written:
        print(f"dynaray: wrote {path}")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the ``collect`` verb to the CLI's verbs."""
    p = verbs.add_parser("collect", help="write an offline dataset (Parquet and Minari) from a behaviour policy")
    p.add_argument("--env", default=None,
                   help="gymnasium id (default: the --policy run's env, else InvertedPendulum-v5)")
    p.add_argument("--steps", type=int, required=True, help="transitions to record")
    p.add_argument("--to", required=True, metavar="DIR", help="a new or empty directory for the dataset")
    p.add_argument("--policy", default=None, metavar="RUN_DIR",
                   help="behaviour: this run's checkpoint (default random)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="Gaussian action noise, times the action half-range, added to the policy's action")
    p.add_argument("--stochastic", action="store_true", help="sample from the policy instead of its mean action")
    p.add_argument("--seed", type=int, default=0, help="env, action sampling and noise seed")
    p.add_argument("--format", default="parquet,minari", help="parquet, minari or both (default both)")
    p.add_argument("--dataset-id", default=None, help="Minari dataset id (default dynaray/<env>/<behaviour>-v0)")
    p.add_argument("--max-episode-steps", type=int, default=None, help="time limit (default the env's)")
    p.set_defaults(func=collect_command)
