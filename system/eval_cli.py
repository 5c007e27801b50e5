"""``dynaray eval``: a run's policy in the real env, or many policies ranked in a learned world model.

    dynaray eval RUN_DIR [RUN_DIR ...] [--episodes N] [--seed S]
    dynaray eval POLICY ... --in-model MODEL_RUN_DIR [--dataset DATASET] [--real N] [--starts B] [--horizon H]
                 [--penalty X] [--max-disagreement D] [--json OUT] [--plot PNG]

A POLICY is a run directory (its newest checkpoint's actor), a checkpoint directory (``RUN_DIR/checkpoint/`` or a
kept ``RUN_DIR/checkpoints/<step>/``), or ``RUN_DIR/checkpoints`` for every kept one (``run.keep_checkpoints``).

In the model (:mod:`actors.model_evaluator`, docs/offline.md): MODEL_RUN_DIR's checkpointed world model rolls each
policy out from the dataset's episode start states; the table ranks the policies by score (the estimate minus the
disagreement penalty) with the estimate's interval over the ensemble, the untrusted fraction and ``ood``. The
penalty and the truncation threshold come from the model's holdout calibration, as an offline run sets them
(:func:`system.offline.conservatism_from_calibration`), unless given. The dataset: ``--dataset``, else the model
run's own (``offline.dataset``), else its persisted ``real`` table. ``--real N`` also runs N real episodes per
policy and reports how the two rankings agree: Spearman, Kendall's tau-b and regret@1.

Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

EXIT_BAD_INPUT = 2


class _BadInput(ValueError):
    """One line for stderr: what is wrong and what was expected."""


def _fail(message: str) -> int:
    print(f"dynaray: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


@dataclass(frozen=True)
class _Policy:
    """One policy to evaluate: where it came from, its acting weights, its run's config."""

    label: str
    state: Any
    config: Any
    env_steps: int | None


# ---- loading -----------------------------------------------------------------------------------------------------


def _run_config(run_path: Path) -> Any:
    from system.config import ConfigError
    from system.run_dir import CheckpointError, RunDir

    try:
        return RunDir(run_path).load_config()
    except (ConfigError, CheckpointError, ValueError) as exc:
        raise _BadInput(str(exc).splitlines()[0]) from None


def _checkpoint_policy(label: str, found: Any, config: Any) -> _Policy:
    from system.run_dir import CheckpointError

    try:
        state = found.load("actor.pt")
    except CheckpointError as exc:
        raise _BadInput(str(exc)) from None
    if state is None:
        raise _BadInput(f"{label}: its checkpoint has no actor.pt")
    steps = found.meta.get("env_steps")
    return _Policy(label, state, config, steps if isinstance(steps, int) else None)


def load_policies(paths: list[str]) -> list[_Policy]:
    """Every policy the arguments name (module docstring), in order."""
    from system.checkpoint import (checkpoint_run_path, is_checkpoint_dir, kept_checkpoints, newest_checkpoint,
                                   open_checkpoint)
    from system.run_dir import CheckpointError, RunDir

    policies = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise _BadInput(f"{given!r} is not a run directory: config.yaml is missing (it does not exist)")
        if is_checkpoint_dir(path):  # RUN_DIR/checkpoint/ or a kept RUN_DIR/checkpoints/<step>/
            try:
                found = open_checkpoint(path)
            except CheckpointError as exc:
                raise _BadInput(str(exc)) from None
            policies.append(_checkpoint_policy(given, found, _run_config(checkpoint_run_path(path))))
        elif (path / "config.yaml").is_file():  # a run: its newest checkpoint (or the actor of an older run's)
            config = _run_config(path)
            found = newest_checkpoint(path)
            if found is not None:
                policies.append(_checkpoint_policy(given, found, config))
                continue
            try:
                policies.append(_Policy(given, RunDir(path).load_state("actor"), config, None))
            except CheckpointError as exc:
                raise _BadInput(str(exc)) from None
        elif (path.parent / "config.yaml").is_file() and path.is_dir():  # RUN_DIR/checkpoints: every kept one
            config = _run_config(path.parent)
            kept = kept_checkpoints(path.parent)
            if not kept:
                raise _BadInput(f"{given!r} holds no complete kept checkpoint (run.keep_checkpoints)")
            policies += [_checkpoint_policy(str(p), open_checkpoint(p), config) for p in kept]
        else:
            raise _BadInput(f"{given!r} is neither a run directory (no config.yaml) nor a checkpoint "
                            f"(RUN_DIR/checkpoint/ or RUN_DIR/checkpoints/<step>/, with meta.json)")
    return policies


def _make_policy_factory(config: Any, spec: Any, seed: int):
    from learners.sac import Policy

    def make_policy():
        return Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy.hidden_sizes,
                      seed=seed)

    return make_policy


@dataclass(frozen=True)
class _Model:
    """The world model of MODEL_RUN_DIR, ready for inference, and what its calibration says."""

    world_model: Any
    config: Any
    learner_state: Any


def load_model(given: str, spec: Any) -> _Model:
    """MODEL_RUN_DIR's checkpointed world model (inference weights and the learner's state for its calibration)."""
    from learners.termination import resolve_termination_fn
    from learners.world_model import WorldModel
    from system.checkpoint import find_checkpoint
    from system.run_dir import CheckpointError

    path = Path(given)
    if not (path / "config.yaml").is_file():
        raise _BadInput(f"--in-model {given!r} is not a run directory (no config.yaml)")
    config = _run_config(path)
    if not config.world_model.enabled:
        raise _BadInput(f"--in-model {given!r} has no world model (world_model.enabled=false)")
    try:
        state = find_checkpoint(path).load("world_model.pt")
    except CheckpointError as exc:
        raise _BadInput(f"--in-model: {exc}") from None
    if state is None:
        raise _BadInput(f"--in-model {given!r}: its checkpoint has no world_model.pt")
    termination = resolve_termination_fn(config.world_model.termination_fn, config.env.id, config.env.kwargs)
    model_config = replace(config.world_model, termination_fn=termination)
    model = WorldModel(spec.obs_dim, spec.action_dim, model_config, seed=config.seed)
    try:
        model.load_state(state["weights"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise _BadInput(f"--in-model {given!r}: world_model.pt does not fit the network of its config: "
                        f"{str(exc).splitlines()[0]}") from None
    return _Model(model, replace(config, world_model=model_config), state.get("learner"))


def load_dataset_rows(args: argparse.Namespace, model: _Model, spec: Any) -> dict[str, np.ndarray]:
    """The dataset's obs, action, reward and step columns (``--dataset``, the model run's dataset or its ``real``
    table), checked against the env's shapes."""
    from replay.stored import OfflineError

    source = args.dataset or (model.config.offline.dataset if model.config.offline.enabled else "")
    try:
        if source:
            from replay.datasets import load_dataset

            dataset = load_dataset(source)
            rows = {**dataset.data, "step": dataset.step}
        else:
            from replay.stored import read_table, shard_indices
            from system.run_dir import RunDir

            directory = str(RunDir(args.in_model).replay_directory(model.config))
            if not shard_indices(directory):
                raise _BadInput(f"--in-model {args.in_model!r} has no persisted replay table and no dataset of its "
                                f"own: give --dataset")
            source = f"{directory} (table real)"
            rows = read_table(directory, "real").concatenated()
    except (OfflineError, OSError, ValueError) as exc:
        if isinstance(exc, _BadInput):
            raise
        raise _BadInput(f"dataset {source!r}: {str(exc).splitlines()[0]}") from None
    if len(rows["reward"]) == 0:
        raise _BadInput(f"dataset {source!r} has no rows; expected at least one transition")
    for column, shape in (("obs", spec.obs_shape), ("action", spec.action_shape)):
        got = tuple(np.asarray(rows[column]).shape[1:])
        if int(np.prod(got)) != int(np.prod(shape)) or len(got) != len(shape):
            raise _BadInput(f"dataset {source!r}: column {column!r} has shape {got} per row, expected {tuple(shape)} "
                            f"(env {model.config.env.id})")
    if not np.isfinite(np.asarray(rows["reward"], dtype=np.float64)).all():
        raise _BadInput(f"dataset {source!r}: column 'reward' has non-finite values; expected finite rewards")
    return {"obs": np.asarray(rows["obs"], np.float32).reshape(len(rows["reward"]), -1),
            "action": np.asarray(rows["action"], np.float32).reshape(len(rows["reward"]), -1),
            "reward": np.asarray(rows["reward"], np.float64), "step": np.asarray(rows["step"])}


def conservatism(args: argparse.Namespace, model: _Model, reward_std: float) -> tuple[float, float, str]:
    """``(penalty_scale, max_disagreement, where they came from)``: the flags, else the model's holdout
    calibration (as an offline run sets them), else the model run's imagination settings."""
    from learners.world_model import WorldModelLearner
    from system.offline import conservatism_from_calibration

    penalty, threshold = model.config.imagination.penalty_scale, model.config.imagination.max_disagreement
    origin = "the model run's imagination settings"
    if model.learner_state is not None and (args.penalty is None or args.max_disagreement is None):
        learner = WorldModelLearner(model.world_model.obs_dim, model.world_model.act_dim, model.config.world_model,
                                    seed=model.config.seed)
        try:
            learner.load_state_dict(model.learner_state)
            penalty, threshold = conservatism_from_calibration(learner.validate(), reward_std,
                                                               model.config.world_model.calibration_bins)
            origin = "the model's holdout calibration"
        except (ValueError, RuntimeError, KeyError):
            pass  # not validated yet: the run's settings stand
    if args.penalty is not None:
        penalty = args.penalty
    if args.max_disagreement is not None:
        threshold = args.max_disagreement
    if args.penalty is not None and args.max_disagreement is not None:
        origin = "the flags"
    return penalty, threshold, origin


# ---- the verb ------------------------------------------------------------------------------------------------------


def evaluate_command(args: argparse.Namespace) -> int:
    try:
        if args.in_model is None:
            return _real_only(args)
        return _in_model(args)
    except _BadInput as exc:
        return _fail(str(exc))


def _spec(config: Any) -> Any:
    from actors.envs import EnvError, probe_env

    try:
        return probe_env(config.env)
    except EnvError as exc:
        raise _BadInput(str(exc)) from None


def _real_evaluator(config: Any, spec: Any, seed: int):
    from actors.evaluator import Evaluator

    return Evaluator(config.env, _make_policy_factory(config, spec, seed), seed=seed)


def _run_real(policy: _Policy, spec: Any, episodes: int, seed: int) -> Any:
    evaluator = _real_evaluator(policy.config, spec, seed)
    try:
        return evaluator.evaluate(policy.state, episodes)
    except (RuntimeError, ValueError) as exc:
        raise _BadInput(f"{policy.label}: the checkpoint does not fit the policy network: "
                        f"{str(exc).splitlines()[0]}") from None
    finally:
        evaluator.close()


def _real_only(args: argparse.Namespace) -> int:
    for policy in load_policies(args.policies):
        spec = _spec(policy.config)
        result = _run_real(policy, spec, args.episodes, args.seed)
        lengths = sum(result.lengths) / len(result.lengths)
        print(f"{policy.label}: {policy.config.env.id}: mean return {result.return_mean:.1f} +- "
              f"{result.return_std:.1f} over {args.episodes} episodes (mean length {lengths:.0f})")
    return 0


def _in_model(args: argparse.Namespace) -> int:
    from actors.config import ModelEvalConfig
    from actors.model_evaluator import ModelEvaluator

    policies = load_policies(args.policies)
    model_config = _run_config(Path(args.in_model))
    spec = _spec(model_config)
    for policy in policies:
        if policy.config.env.id != model_config.env.id:
            raise _BadInput(f"{policy.label} was trained on {policy.config.env.id}, the model on "
                            f"{model_config.env.id}; expected one env")
    model = load_model(args.in_model, spec)
    rows = load_dataset_rows(args, model, spec)
    penalty, threshold, origin = conservatism(args, model, float(rows["reward"].std()))
    starts = rows["obs"][rows["step"] == 0]
    if len(starts) == 0:
        starts = rows["obs"]  # no episode's first row: any dataset state
    horizon = args.horizon or _episode_limit(model_config)
    config = ModelEvalConfig(starts=args.starts, horizon=horizon, penalty_scale=penalty, max_disagreement=threshold)
    print(f"dynaray: in {args.in_model}'s model: {len(policies)} policies, {min(args.starts, len(starts))} start "
          f"states x {len(model.world_model.elites)} members, horizon {horizon}; penalty {penalty:.3g}, truncation "
          f"above disagreement {threshold:.3g} (from {origin})")

    results, evaluators = [], {}
    for policy in policies:
        # one evaluator per policy network shape: the start states and the dataset's disagreement are drawn once
        shape = tuple(policy.config.policy.hidden_sizes)
        if shape not in evaluators:
            evaluators[shape] = ModelEvaluator(model.world_model, _make_policy_factory(policy.config, spec, args.seed),
                                               starts, config, reference=(rows["obs"], rows["action"]),
                                               seed=args.seed)
        evaluator = evaluators[shape]
        try:
            estimate = evaluator.evaluate(policy.state)
        except (RuntimeError, ValueError) as exc:
            raise _BadInput(f"{policy.label}: the checkpoint does not fit the policy network: "
                            f"{str(exc).splitlines()[0]}") from None
        real = _run_real(policy, spec, args.real, args.seed) if args.real else None
        results.append((policy, estimate, real))
        shown = "" if real is None else f", real {real.return_mean:.1f} ({real.seconds:.1f} s)"
        print(f"dynaray: {len(results)}/{len(policies)} {policy.label}: in the model {estimate.return_mean:.1f} "
              f"({estimate.seconds:.1f} s){shown}", file=sys.stderr)

    report = ranking_report(results)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    plot = args.plot or str(Path(args.in_model) / "in_model_ranking.png")
    plot_ranking(report, plot, f"{model_config.env.id}: policies in {Path(args.in_model).name}'s model")
    print(f"dynaray: plot {plot}")
    return 0


def _episode_limit(config: Any) -> int:
    from actors.envs import make_env

    env = make_env(config.env)
    try:
        return int(env.spec.max_episode_steps) if env.spec and env.spec.max_episode_steps else 1000
    finally:
        env.close()


# ---- the report --------------------------------------------------------------------------------------------------


def ranking_report(results: list[tuple[_Policy, Any, Any]]) -> dict[str, Any]:
    """The policies ranked by score (best first), each with its estimate and real return if measured, and the
    agreement of the two rankings where there are real returns for two policies or more."""
    from system.ranking import kendall_tau, regret_at_1, spearman

    entries = []
    for policy, estimate, real in results:
        entries.append({
            "policy": policy.label, "env_steps": policy.env_steps, "score": estimate.score,
            "model_return": estimate.return_mean, "model_return_low": estimate.return_low,
            "model_return_high": estimate.return_high, "untrusted_fraction": estimate.untrusted_fraction,
            "terminated_fraction": estimate.terminated_fraction, "length_mean": estimate.length_mean,
            "ood": estimate.ood, "model_seconds": estimate.seconds,
            "real_return": None if real is None else real.return_mean,
            "real_return_std": None if real is None else real.return_std,
            "real_seconds": None if real is None else real.seconds,
        })
    entries.sort(key=lambda e: -e["score"])
    for rank, entry in enumerate(entries, 1):
        entry["rank"] = rank
    report: dict[str, Any] = {"policies": entries}
    real = [e["real_return"] for e in entries]
    if len(entries) >= 2 and all(r is not None for r in real):
        scores = [e["score"] for e in entries]
        best = max(real)
        report["agreement"] = {"spearman": spearman(scores, real), "kendall": kendall_tau(scores, real),
                               "regret_at_1": regret_at_1(scores, real), "best_real_return": best}
    report["model_seconds"] = sum(e["model_seconds"] for e in entries)
    report["real_seconds"] = sum(e["real_seconds"] for e in entries) if all(r is not None for r in real) else None
    return report


def _number(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:>{width}.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The ranking as a table and the agreement line."""
    entries = report["policies"]
    width = max(len("policy"), *(len(e["policy"]) for e in entries))
    lines = [f"{'rank':>4}  {'policy':<{width}}  {'score':>8}  {'model return [low, high]':>26}  {'untrusted':>9}  "
             f"{'ood':>5}  {'real return':>11}"]
    for e in entries:
        interval = f"{e['model_return']:.1f} [{e['model_return_low']:.1f}, {e['model_return_high']:.1f}]"
        ood = "-" if e["ood"] is None else f"{e['ood']:.2f}"
        lines.append(f"{e['rank']:>4}  {e['policy']:<{width}}  {e['score']:>8.1f}  {interval:>26}  "
                     f"{e['untrusted_fraction']:>9.0%}  {ood:>5}  {_number(e['real_return'], 11)}")
    agreement = report.get("agreement")
    if agreement is not None:
        best = agreement["best_real_return"]
        share = f" ({agreement['regret_at_1'] / abs(best):.1%} of the best real return {best:.1f})" if best else ""
        lines.append(f"agreement with the real returns: Spearman {agreement['spearman']:.2f}, Kendall "
                     f"{agreement['kendall']:.2f}, regret@1 {agreement['regret_at_1']:.1f}{share}")
    timing = f"time: in the model {report['model_seconds']:.1f} s"
    if report["real_seconds"] is not None:
        timing += f", in the real env {report['real_seconds']:.1f} s"
    lines.append(timing)
    return "\n".join(lines)


def plot_ranking(report: dict[str, Any], out: str, title: str) -> None:
    """Score and estimate interval per policy in rank order; with real returns, model estimate vs real return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = report["policies"]
    has_real = all(e["real_return"] is not None for e in entries)
    fig, axes = plt.subplots(1, 2 if has_real else 1, figsize=(11 if has_real else 6, 4), squeeze=False)
    ax = axes[0][0]
    ranks = [e["rank"] for e in entries]
    estimate = np.array([e["model_return"] for e in entries])
    low = estimate - np.array([e["model_return_low"] for e in entries])
    high = np.array([e["model_return_high"] for e in entries]) - estimate
    ax.errorbar(ranks, estimate, yerr=[low, high], fmt="o", capsize=3, label="model estimate (member range)")
    ax.plot(ranks, [e["score"] for e in entries], "s", label="score (penalised)")
    if has_real:
        ax.plot(ranks, [e["real_return"] for e in entries], "x", label="real return")
    ax.set_xlabel("rank by score")
    ax.set_ylabel("return")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_real:
        ax = axes[0][1]
        ax.errorbar([e["real_return"] for e in entries], estimate, yerr=[low, high], fmt="o", capsize=3)
        ax.set_xlabel("real return")
        ax.set_ylabel("model estimate")
        agreement = report.get("agreement") or {}
        ax.set_title(f"Spearman {agreement.get('spearman', float('nan')):.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the ``eval`` verb to the CLI's verbs."""
    p = verbs.add_parser("eval", help="a run's policy in the real env, or policies ranked in a world model")
    p.add_argument("policies", nargs="+", metavar="POLICY",
                   help="run directories, kept checkpoints RUN_DIR/checkpoints/<step>, or RUN_DIR/checkpoints")
    p.add_argument("--episodes", type=int, default=10, help="real episodes per policy without --in-model (default 10)")
    p.add_argument("--seed", type=int, default=12345, help="seed for the eval env resets and the model's noise")
    p.add_argument("--in-model", default=None, metavar="MODEL_RUN_DIR",
                   help="rank the policies by rollouts in this run's checkpointed world model (no env steps)")
    p.add_argument("--dataset", default=None,
                   help="start states and reference data (default: the model run's dataset or replay table)")
    p.add_argument("--real", type=int, default=0, metavar="N",
                   help="with --in-model: also N real episodes per policy, and the rank agreement")
    p.add_argument("--starts", type=int, default=128, help="start states per policy in the model (default 128)")
    p.add_argument("--horizon", type=int, default=0, help="model steps per rollout (default: the env's limit)")
    p.add_argument("--penalty", type=float, default=None, help="disagreement penalty (default: from calibration)")
    p.add_argument("--max-disagreement", type=float, default=None,
                   help="truncation threshold (default: from calibration)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the ranking as JSON")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="the ranking plot (default MODEL_RUN_DIR/in_model_ranking.png)")
    p.set_defaults(func=_checked_command)


def _checked_command(args: argparse.Namespace) -> int:
    for name, low in (("episodes", 1), ("starts", 1), ("real", 0), ("horizon", 0)):
        if getattr(args, name) < low:
            return _fail(f"--{name}={getattr(args, name)}: expected >= {low}")
    if args.penalty is not None and not (math.isfinite(args.penalty) and args.penalty >= 0):
        return _fail(f"--penalty={args.penalty}: expected a finite number >= 0")
    if args.max_disagreement is not None and not args.max_disagreement > 0:
        return _fail(f"--max-disagreement={args.max_disagreement}: expected a number > 0 (inf: no truncation)")
    if args.in_model is None and (args.real or args.dataset):
        return _fail("--real and --dataset rank policies in a model: expected --in-model MODEL_RUN_DIR with them")
    started = time.perf_counter()
    code = evaluate_command(args)
    if args.in_model is not None and code == 0:
        print(f"dynaray: eval took {time.perf_counter() - started:.1f} s")
    return code
