"""``dynaray``: train and evaluate.

    dynaray train [PRESET ...] [key=value ...] [--address ADDR]
    dynaray train --resume RUN_DIR [key=value ...] [--address ADDR]
    dynaray train offline DATASET [PRESET ...] [key=value ...] [--init RUN_DIR]   (docs/offline.md)
    dynaray train offline_to_online [PRESET ...] [key=value ...] --init OFFLINE_RUN_DIR   (docs/offline.md)
    dynaray eval RUN_DIR [--episodes N] | POLICY ... --in-model MODEL_RUN_DIR [--real N]   (docs/offline.md)
    dynaray scale rollout=N [imagination=M] [--run NAME] [--address ADDR]
    dynaray status [--run NAME] [--address ADDR] [--runs-dir DIR]
    dynaray plot RUN_DIR [RUN_DIR ...] [--out PNG]
    dynaray bench replay [PRESET ...] [key=value ...] [--shards 1,2,4] [--samplers uniform,prioritized] [--ray]
    dynaray bench rollout [PRESET ...] [key=value ...] [--envs ...] [--envs-per-worker 1,8,32] [--ray] [--json OUT]
    dynaray bench imagination [--envs ...] [--batch-sizes 256,1024,4096] [--seconds S] [--json OUT]
    dynaray bench sac [--dims 17x6,11x3] [--variants twin,redq,layernorm] [--updates N] [--rounds R] [--no-sb3]
    dynaray bench components | planner | cold-replay | sac-to-target | time-to-target ...   (docs/benchmarks.md)
    dynaray replay export RUN_DIR --to DIR | import DATASET --to REPLAY_DIR | inspect RUN_DIR   (docs/replay.md)
    dynaray collect --env ID --steps N --to DIR [--policy RUN_DIR] [--noise S]   (docs/offline.md)

Bad input (config, env id, checkpoint) ends in one line on stderr and a non-zero exit code, with no Ray
processes left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import stat
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from system.replay_cli import register as register_replay_verbs

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


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


class _Signals:
    """SIGINT and SIGTERM during ``dynaray train``: the first one has the driver checkpoint and stop as a finished
    run does (exit 128 + signal: 130, 143); a second one, or one before the driver runs, stops at once."""

    def __init__(self):
        self.driver = None
        self.received: int | None = None
        self._before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def install(self) -> None:
        """(Again after ``ray.init``, which sets its own SIGTERM handler.)"""
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        """The handlers from before (``dynaray train`` called in process, e.g. by a test)."""
        for signum, handler in self._before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None or self.driver is None:  # at once: as Python's own SIGINT handler does
            self.received = signum
            raise KeyboardInterrupt
        self.received = signum
        print(f"\ndynaray: {name}: interrupted; stopping every role after writing a checkpoint (another signal "
              f"stops at once)", file=sys.stderr)
        self.driver.interrupt(f"interrupted by {name}")

    def stop_with_parent(self) -> None:
        """With ``$DYNARAY_STOP_WITH_PARENT`` set to this process's parent's id (a bench sets it for each of its
        runs, system/bench/harness.py): when that parent dies, SIGKILL included, this process gets one SIGTERM,
        as from the parent, unless a signal has come already (one from the parent before it died: a second would
        stop the run without its checkpoint); its stdout and stderr, where they were pipes to the parent, go to
        /dev/null from then on. (Not a parent-death signal, ``prctl``: the kernel sends it when the thread that
        started the process exits, which can happen more than once in a threaded parent.)"""
        expected = os.environ.pop(STOP_WITH_PARENT_ENV, "")
        if not expected.isdigit() or int(expected) != os.getppid():  # inherited by a process the run started
            return

        def watch() -> None:
            while os.getppid() == int(expected):
                time.sleep(PARENT_POLL_S)
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):  # pipes the parent read: what is written to them now would fail (BrokenPipeError)
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            os.close(devnull)
            if self.received is None:
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="dynaray-parent-watch", daemon=True).start()


STOP_WITH_PARENT_ENV = "DYNARAY_STOP_WITH_PARENT"
"""Names the process whose death stops ``dynaray train`` as one SIGTERM would (:meth:`_Signals.stop_with_parent`)."""
PARENT_POLL_S = 0.5
"""How often ``dynaray train`` checks that the process named by ``$DYNARAY_STOP_WITH_PARENT`` is still its parent."""


RESUME_OVERRIDES = ("run.total_env_steps", "run.target_return", "run.report_interval_s", "run.progress",
                    "run.metrics", "run.checkpoint_every_s", "run.keep_checkpoints", "run.startup_timeout_s",
                    "run.upload_to", "run.torch_threads", "rollout.num_workers", "imagination.num_workers",
                    "eval.num_workers", "placement.timeout_s", "offline.total_updates", "offline.eval_every_updates",
                    "ray.")
"""Keys ``dynaray train --resume`` may change (``ray.``: every key of the section); the others must match the
checkpoint (network sizes, ratios, replay layout, seeds, env)."""


def _resume_config(run_path: str, items: list[str]):
    """The saved config of the run at ``run_path`` with the allowed ``key=value`` overrides.

    Raises:
        ValueError: a preset, or a key that cannot change on resume (one line naming it).
        ConfigError, CheckpointError: a bad value, or not a run directory.
    """
    from system.config import config_from_dict, merge, parse_override, to_dict
    from system.run_dir import RunDir

    config = RunDir(run_path).load_config()
    data = to_dict(config)
    for item in items:
        if "=" not in item:
            raise ValueError(f"--resume takes key=value overrides only (the run keeps its saved config), got {item!r}")
        key = item.partition("=")[0]
        if not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed))
                   for allowed in RESUME_OVERRIDES):
            raise ValueError(f"{key}: cannot be changed when resuming (it must match the checkpoint); allowed: "
                             f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUME_OVERRIDES)}")
        data = merge(data, parse_override(item))
    resumed = config_from_dict(data)
    if resumed.imagination_enabled != config.imagination_enabled:
        raise ValueError(f"imagination.num_workers={resumed.imagination.num_workers}: cannot switch imagination "
                         f"{'off' if config.imagination_enabled else 'on'} when resuming (the replay tables differ)")
    return resumed


def train(args: argparse.Namespace) -> int:
    # Ctrl-C / SIGINT and SIGTERM checkpoint and stop every role, also when the shell that started us ignores SIGINT
    # (a background job of a shell without job control inherits SIG_IGN, and Python then keeps it).
    signals = _Signals()
    signals.install()
    signals.stop_with_parent()
    try:
        return _train(args, signals)
    except KeyboardInterrupt:  # ours, or Ray's own for a signal that came while it waited
        print("\ndynaray: interrupted; stopping every role", file=sys.stderr)
        return 128 + (signals.received or signal.SIGINT)
    finally:
        signals.restore()


def _train(args: argparse.Namespace, signals: _Signals) -> int:
    from actors.envs import EnvError, probe_env
    from system.checkpoint import DriverLock, RunLockedError, check_compatible, describe_meta, find_checkpoint
    from system.config import ConfigError, load_config
    from system.run_dir import CheckpointError, RunDir

    presets = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    found = None
    try:
        if args.resume:
            config = _resume_config(args.resume, args.items)
        else:
            presets, overrides = _offline_items(presets, overrides, args.init)
            config = load_config(presets, overrides)
        if args.address:
            config = replace(config, ray=replace(config.ray, address=args.address))
        spec = probe_env(config.env)
        if args.resume:
            found = find_checkpoint(args.resume)
            check_compatible(found, describe_meta(config, spec))
        elif config.run.init_from and not config.offline.enabled:
            _init_dataset(config, spec)  # checked before the run directory is made
    except (ConfigError, EnvError, CheckpointError, ValueError) as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)

    import torch
    from ray.exceptions import RayActorError

    from replay.handles import get
    from system.attach import remove_ray_file, write_ray_file
    from system.control import namespace
    from system.liveness import RoleError, describe_error
    from system.placement import PlacementError, describe as describe_placement, wait_for_placement
    from system.driver import Driver, progress_printer, run_progress
    from system.runtime import ClusterVersionError, start_ray, stop_ray, watch_embedded_ray
    from system.wiring import build_system, kill_system

    torch.set_num_threads(config.run.torch_threads)
    if args.resume:
        run_dir = RunDir(args.resume)
    else:
        run_dir = RunDir(_unique(Path(config.run.runs_dir) / _run_name(config)))
        config = replace(config, name=run_dir.path.name)
        run_dir.path.mkdir(parents=True)
    try:
        lock = DriverLock(run_dir.path).acquire()
    except RunLockedError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    try:
        run_dir.create(config)
        gateway_tokens = _gateway_tokens(config, run_dir.path)
        offline_data = _offline_data(config, spec, run_dir, found)
    except (ValueError, CheckpointError) as exc:
        lock.release()
        return _fail(str(exc), EXIT_BAD_INPUT)
    counter, budget = run_progress(config)  # offline: policy updates toward offline.total_updates
    show = progress_printer(budget, counter=counter) if config.run.progress else None
    system = None
    try:
        if found is not None:
            done = (f"{found.document('driver.json')['offline']['policy_updates']} policy updates"
                    if offline_data is not None else f"{found.meta['env_steps']} env steps")
            print(f"dynaray: run {config.name}: resuming from {found.path} ({done}, policy version "
                  f"{found.meta['policy_version']})", file=sys.stderr)
        print(f"dynaray: run {config.name}: starting Ray", file=sys.stderr)  # our first line before Ray's own
        where = start_ray(config, namespace=namespace(config.name))
        signals.install()
        write_ray_file(run_dir.path, config.name)
        print(f"dynaray: run {config.name} on {where}; run directory {run_dir.path}", file=sys.stderr)
        system = build_system(config, spec, replay_dir=str(run_dir.replay_directory(config)),
                              gateway_tokens=gateway_tokens, run_path=str(run_dir.path.resolve()))
        placement = wait_for_placement(system, config.placement.timeout_s)
        if where.startswith("embedded"):  # what Ray leaves if this driver is killed is ended (docs/durability.md)
            watch_embedded_ray()
        run_dir.write_json("placement", placement)
        print(f"dynaray: placement:\n{describe_placement(placement)}", file=sys.stderr)
        if system.gateway is not None:
            print(f"dynaray: ingest gateway at {get(system.gateway.url.remote())} (docs/gateway.md)", file=sys.stderr)
        if offline_data is None:
            driver = Driver(config, spec, system, run_dir, on_report=show, placement=placement, resume=found,
                            lock=lock)
        else:
            from system.offline_driver import OfflineDriver

            driver = OfflineDriver(config, spec, system, run_dir, offline_data, on_report=show, placement=placement,
                                   resume=found, lock=lock)
        signals.driver = driver
        summary = driver.run()
        signals.driver = None
    except (RoleError, PlacementError, ClusterVersionError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except RayActorError as exc:
        return _fail(f"a role could not start: {describe_error(exc)}", EXIT_FAILED)
    except ConnectionError as exc:
        return _fail(f"cannot reach Ray: {exc}", EXIT_FAILED)
    finally:
        signals.driver = None
        if show is not None:
            show.close()
        if system is not None:
            kill_system(system)
        remove_ray_file(run_dir.path)
        stop_ray()
        lock.release()
    if config.run.upload_to:
        try:
            print(f"dynaray: run directory copied to {run_dir.upload(config.run.upload_to)}", file=sys.stderr)
        except (OSError, ValueError) as exc:
            return _fail(f"could not copy the run directory to {config.run.upload_to}: {exc}", EXIT_FAILED)
    best = "-" if summary.best_eval_return is None else f"{summary.best_eval_return:.1f}"
    if offline_data is not None:
        print(f"dynaray: offline: {_offline_line(run_dir.path)}")
    print(
        f"dynaray: done ({summary.stopped_because}): {summary.env_steps} env steps in {summary.wall_time_s:.0f} s, "
        f"best eval return {best}, policy version {summary.policy_version}\n"
        f"dynaray: results in {summary.run_dir}"
    )
    if signals.received is not None:
        print(f"dynaray: checkpoint in {run_dir.path / 'checkpoint'}; continue with "
              f"`dynaray train --resume {run_dir.path}`", file=sys.stderr)
        return 128 + signals.received
    return 0


def _offline_items(presets: list[str], overrides: list[str], init: str | None) -> tuple[list[str], list[str]]:
    """``dynaray train offline DATASET [PRESET ...]``: the dataset (the one item that is neither a preset nor a
    key=value) becomes ``offline.dataset``, ``--init RUN_DIR`` ``offline.init_from`` (and no cloning), and the
    ``offline`` preset overlays after the others (a mode, over an env's preset). Online, ``--init RUN_DIR`` goes
    with the ``offline_to_online`` preset (overlaid last too) and becomes ``run.init_from``."""
    from system.config import ConfigError, available_presets

    if "offline" not in presets:  # online: --init continues an offline run, the offline_to_online preset last
        if bool(init) != ("offline_to_online" in presets):
            raise ConfigError("offline_to_online: expected both the preset and --init OFFLINE_RUN_DIR, got "
                              + (f"--init {init!r} alone" if init else "the preset alone"))
        if not init:
            return presets, overrides
        return [p for p in presets if p != "offline_to_online"] + ["offline_to_online"], [f"run.init_from={init}",
                                                                                          *overrides]
    known = set(available_presets())
    datasets = [p for p in presets if p not in known and not p.endswith((".yaml", ".yml"))]
    if len(datasets) > 1:
        raise ConfigError(f"offline: one dataset expected, got {len(datasets)}: {', '.join(datasets)}")
    overlays = [p for p in presets if p not in datasets and p != "offline"] + ["offline"]
    extra = [f"offline.dataset={datasets[0]}"] if datasets else []
    if init:
        extra += [f"offline.init_from={init}", "policy.bc_init_updates=0"]
    return overlays, extra + overrides


def _offline_data(config, spec, run_dir, found=None):
    """Offline mode: the dataset checked and imported into the run's replay directory (None online); resumed
    (``found``, the run's checkpoint): its description from the checkpoint (the rows are in the replay already)."""
    if not config.offline.enabled:
        if config.run.init_from and found is None:
            _import_init_dataset(config, spec, run_dir)
        return None
    if found is not None:
        from system.offline_driver import resumed_offline_data

        return resumed_offline_data(found)
    from replay.schema import SchemaError
    from replay.stored import OfflineError
    from system.offline import OfflineDataError, prepare_dataset

    if config.offline.init_from:
        from system.run_dir import CheckpointError, RunDir

        try:
            RunDir(config.offline.init_from).load_state("actor")
        except (CheckpointError, OSError) as exc:
            raise ValueError(f"--init: {exc}") from None
    try:
        return prepare_dataset(config, spec, str(run_dir.replay_directory(config)))
    except (OfflineDataError, OfflineError, SchemaError) as exc:
        raise ValueError(str(exc)) from None


def _init_dataset(config, spec) -> str:
    """``run.init_from`` (``--init RUN_DIR`` online, offline_to_online): check that the offline run's checkpoint
    fits this run's env and networks (the learners restore themselves from it); its dataset's path.

    Raises:
        ValueError: no complete checkpoint, another env or network sizes, or not an offline run (one line).
    """
    from system.checkpoint import check_compatible, describe_meta, find_checkpoint
    from system.offline_driver import resumed_offline_data
    from system.run_dir import CheckpointError

    try:
        found = find_checkpoint(config.run.init_from)
        check_compatible(found, describe_meta(config, spec))
        return resumed_offline_data(found).source
    except CheckpointError as exc:
        raise ValueError(f"--init: {exc}") from None


def _import_init_dataset(config, spec, run_dir) -> None:
    """The dataset of the offline run this one continues (``run.init_from``) into this run's ``real``, before the
    shards start; it stays there beside the new env steps.

    Raises:
        ValueError: the dataset no longer reads or fits (one line).
    """
    from replay.schema import SchemaError
    from replay.stored import OfflineError
    from system.offline import OfflineDataError, prepare_dataset

    dataset = replace(config, offline=replace(config.offline, dataset=_init_dataset(config, spec)))
    try:
        prepare_dataset(dataset, spec, str(run_dir.replay_directory(config)))
    except (OfflineDataError, OfflineError, SchemaError) as exc:
        raise ValueError(f"--init {config.run.init_from!r}: its dataset: {exc}") from None


def _offline_line(run_path: Path) -> str:
    import json

    summary = json.loads((run_path / "offline.json").read_text())
    returns = ", ".join(f"{phase} {value:.1f}" for phase, value in summary["eval_return"].items())
    return (f"{summary['policy_updates']} policy updates, {summary['training_env_steps']} training env steps, "
            f"{summary['eval_env_steps']} eval env steps; dataset return {summary['dataset']['behaviour_return']:.1f}"
            f"; eval return {returns or '-'}")


def _gateway_tokens(config, run_path: Path) -> tuple:
    """The tokens the gateway gets besides its token file: ``$DYNARAY_GATEWAY_TOKEN``, or, with neither that nor
    ``gateway.token_file``, a new one written to ``<run dir>/gateway_token`` (mode 0600; ``run.upload_to`` leaves
    it out). Tokens travel to the gateway as arguments: config.yaml never holds one.

    Raises:
        ValueError: the variable holds an unusable token, or the token file is unusable (checked here so the run
            fails before Ray starts).
    """
    if not config.gateway.enabled:
        return ()
    from actors.gateway_tokens import DEFAULT_ID, SCOPES, Token, env_token, new_token, read_token_file
    from system.run_dir import GATEWAY_TOKEN_FILE

    token = env_token()
    if config.gateway.token_file:
        read_token_file(config.gateway.token_file)
    elif token is None and (run_path / GATEWAY_TOKEN_FILE).is_file():  # a resumed run keeps its token
        secret = (run_path / GATEWAY_TOKEN_FILE).read_text().strip()
        token = Token(DEFAULT_ID, frozenset(SCOPES), secret)
    elif token is None:
        token = new_token()
        path = run_path / GATEWAY_TOKEN_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token.secret + "\n")
        print(f"dynaray: ingest gateway token written to {path}", file=sys.stderr)
    return () if token is None else (token,)


def scale(args: argparse.Namespace) -> int:
    sizes = {}
    for item in args.items:
        pool, _, value = item.partition("=")
        try:
            sizes[pool] = int(value)
        except ValueError:
            return _fail(f"{item!r}: expected POOL=N with an integer N, e.g. rollout=3", EXIT_BAD_INPUT)
        if sizes[pool] < 0:
            return _fail(f"{item!r}: expected a count >= 0", EXIT_BAD_INPUT)
    from system.attach import AttachError, attach, locate
    from system.liveness import describe_error

    try:
        run, address = locate(args.runs_dir, args.run, args.address)
        control = attach(address, run)
    except AttachError as exc:
        return _fail(str(exc), EXIT_FAILED)
    import ray

    try:
        status = ray.get(control.status.remote(), timeout=30)
        before = status["desired"]
        after = ray.get(control.request.remote(sizes), timeout=30)
        free = ray.available_resources()
    except ray.exceptions.RayTaskError as exc:
        return _fail(describe_error(exc), EXIT_BAD_INPUT)
    finally:
        ray.shutdown()
    for pool in sizes:
        print(f"dynaray: run {run}: {pool} {before.get(pool)} -> {after[pool]}")
        _say_what_cannot_be_placed(pool, after[pool] - before.get(pool, 0), status.get("worker_demands", {}), free)
    return 0


def _say_what_cannot_be_placed(pool: str, added: int, demands: dict, free: dict) -> None:
    """One line when the cluster has not the free resources for ``added`` new workers of ``pool`` now: they wait
    for them (the run goes on with the workers it has) until resources free up or an autoscaler adds a node."""
    from system.placement import fitting, shortfall

    missing = shortfall(demands.get(pool, {}), added, free) if added > 0 else {}
    if missing:
        asks = ", ".join(f"{k} {v:g}" for k, v in sorted(demands[pool].items()) if v)
        lacks = ", ".join(f"{k} {v:g}" for k, v in sorted(missing.items()))
        fits = fitting(demands[pool], added, free)
        which = f"the {added}" if fits == 0 else f"{added - fits} of the {added}"
        for_all = f" for all {added}" if added > 1 else ""
        print(f"dynaray: the cluster cannot place {which} new {pool} worker(s) now: each asks {asks}, the cluster "
              f"lacks {lacks}{for_all}; the run goes on with the workers it has, and the new ones start once "
              f"the resources are free or an autoscaler adds a node", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynaray", description="Distributed model-based RL on Ray.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="train on an embedded local Ray or an existing cluster")
    p.add_argument("items", nargs="*", metavar="PRESET|key=value",
                   help="presets overlaid on the defaults in order, then key=value overrides (e.g. seed=3)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint, with its saved config (key=value "
                        "overrides only for run.total_env_steps, worker counts, ray.* and the like; "
                        "docs/durability.md)")
    p.add_argument("--init", default=None, metavar="RUN_DIR",
                   help="offline mode: start the policy from this run's actor instead of behaviour cloning; online "
                        "(offline_to_online): continue this offline run's learners, with its dataset in real")
    p.set_defaults(func=train)

    p = verbs.add_parser("scale", help="change the number of rollout or imagination workers of a running system")
    p.add_argument("items", nargs="+", metavar="POOL=N", help="e.g. rollout=3 imagination=2")
    p.add_argument("--run", default=None, help="the run's name (default: the one running system found)")
    p.add_argument("--address", default=None, help="its Ray cluster (default: from runs/<run>/ray.json, RAY_ADDRESS)")
    p.add_argument("--runs-dir", default="runs", help="where run directories are (default: runs)")
    p.set_defaults(func=scale)

    from system import bench, collect_cli, eval_cli, plot_cli, status_cli

    bench.register(verbs)  # dynaray bench replay | rollout | sac | imagination | ... (system/bench/__init__.py)
    register_replay_verbs(verbs)  # dynaray replay export|import|inspect
    status_cli.register(verbs)  # dynaray status
    plot_cli.register(verbs)  # dynaray plot
    collect_cli.register(verbs)  # dynaray collect
    eval_cli.register(verbs)  # dynaray eval (in the real env, or ranked in a world model)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``build_parser`` reads it, except that a verb's ``PRESET|key=value`` items may also come
    after its options (``dynaray train offline_to_online --init RUN_DIR seed=3``), where argparse alone takes none."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "items", None), list) and not any(e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from system.heap import return_arrow_pages

    return_arrow_pages()  # before anything loads pyarrow (reading a config does)
    args = parse(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
