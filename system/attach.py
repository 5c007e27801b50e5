"""Finding a running system from another terminal: the run's ``ray.json``, or a cluster address.

A training driver writes ``runs/<name>/ray.json`` (cluster address, namespace, its pid) while it runs and removes
it when it ends. ``dynaray scale`` and ``dynaray status`` find the run there (same machine or shared run
directory), or, with ``--address`` / ``RAY_ADDRESS``, look up the control actors on that cluster.

Usage::

    run, address = locate(runs_dir="runs", run=None, address=None)   # AttachError if nothing or several
    control = attach(address, run)                                   # the run's control actor handle
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from system.control import CONTROL_ACTOR, namespace

__all__ = ["AttachError", "RAY_FILE", "attach", "locate", "remove_ray_file", "write_ray_file"]

RAY_FILE = "ray.json"
"""File in a run directory that says where the running system is."""
NAMESPACE_PREFIX = namespace("")


class AttachError(RuntimeError):
    """No running system where one was looked for, or several where one was expected."""


def write_ray_file(run_dir: Path, run_name: str) -> None:
    """Record where run ``run_name`` lives (call after Ray is up)."""
    import ray

    info = {"run": run_name, "address": ray.get_runtime_context().gcs_address, "namespace": namespace(run_name),
            "pid": os.getpid()}
    (run_dir / RAY_FILE).write_text(json.dumps(info) + "\n")


def remove_ray_file(run_dir: Path) -> None:
    (run_dir / RAY_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_runs(runs_dir: Path) -> dict[str, str]:
    """Run name -> cluster address of every run under ``runs_dir`` whose driver is alive."""
    live = {}
    for path in sorted(runs_dir.glob(f"*/{RAY_FILE}")):
        try:
            info = json.loads(path.read_text())
            if _alive(int(info["pid"])):
                live[info["run"]] = info["address"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return live


def _enable_token_auth() -> None:
    """Clusters started by Ray 2.5x+ ask for a token: use the local one (~/.ray/auth_token) unless told otherwise.
    Must run before Ray is imported."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _connect(address: str, run: str | None) -> None:
    _enable_token_auth()
    import ray

    from system.runtime import check_reachable

    try:
        check_reachable(address)
        ray.init(address=address, namespace=namespace(run) if run else None, logging_level="ERROR",
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as exc:
        raise AttachError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def locate(runs_dir: str | Path, run: str | None, address: str | None) -> tuple[str, str]:
    """``(run name, cluster address)`` of the one running system that ``run`` / ``address`` point at.

    Raises:
        AttachError: no running system found, or several and no ``run`` to choose one.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    live = _live_runs(Path(runs_dir))
    if run is not None and run in live:
        return run, address or live[run]
    if address is None:
        if run is not None:
            raise AttachError(f"no running system named {run!r} under {str(runs_dir)!r} (no live {RAY_FILE}); "
                              f"pass --address of its Ray cluster")
        if not live:
            raise AttachError(f"no running system found under {str(runs_dir)!r} (no run directory with a live "
                              f"{RAY_FILE}); pass --run NAME and --address ADDR for a run elsewhere")
        if len(live) > 1:
            raise AttachError(f"several running systems under {str(runs_dir)!r}: {sorted(live)}; choose with --run")
        return next(iter(live.items()))
    if run is not None:
        return run, address
    _connect(address, None)
    import ray

    runs = sorted(a["namespace"][len(NAMESPACE_PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"] == CONTROL_ACTOR and a["namespace"].startswith(NAMESPACE_PREFIX))
    ray.shutdown()
    if not runs:
        raise AttachError(f"no running dynaray system on the Ray cluster at {address}")
    if len(runs) > 1:
        raise AttachError(f"several running systems on the Ray cluster at {address}: {runs}; choose with --run")
    return runs[0], address


def attach(address: str, run: str):
    """Connect to the cluster at ``address`` and return run ``run``'s control actor handle.

    Raises:
        AttachError: the cluster cannot be reached, or it runs no system named ``run``.
    """
    _connect(address, run)
    import ray

    try:
        return ray.get_actor(CONTROL_ACTOR, namespace=namespace(run))
    except ValueError:
        ray.shutdown()
        raise AttachError(f"no running system named {run!r} on the Ray cluster at {address}") from None
