"""Whole-system checkpoints of a run, ``runs/<name>/checkpoint/``, and the lock of a run's live driver.

One checkpoint is one consistent cut of a run::

    checkpoint/
      meta.json          written last; names every other file with its size (a checkpoint without it, or whose
                         files do not match it, is incomplete): format, dynaray version, env id, obs/action shapes,
                         network sizes, env steps and policy version at the cut
      policy.pt          the policy learner: {"learner": SACLearner.state_dict(), "version": v, "weights": ...}
      world_model.pt     the world-model learner, the same keys (with world_model.enabled)
      actor.pt           the newest published policy weights (what `dynaray eval RUN_DIR` loads)
      driver.json        the driver's counters: env steps, episodes, evals so far, next eval mark, restarts, ...
      replay.json        per shard and table: the insert counter (its logs were synced up to it) and each
                         consumer's rate-limiter accounting

Atomic: a new checkpoint is written into ``checkpoint.tmp/`` (each file fsynced), then ``checkpoint/`` becomes
``checkpoint.prev/`` and ``checkpoint.tmp/`` becomes ``checkpoint/``. A crash at any moment leaves a complete
checkpoint in ``checkpoint/`` or ``checkpoint.prev/``; :func:`find_checkpoint` takes the newest complete one.

Kept checkpoints (``run.keep_checkpoints`` = N > 0): at every checkpoint the policy of that moment is also kept
in ``checkpoints/<key>/`` (``actor.pt`` and ``meta.json``, the same format; ``key``: the env steps, or the policy
updates of an offline run, 10 digits), written atomically the same way (``<key>.tmp/``, fsync, rename); the
oldest beyond N are deleted. :func:`kept_checkpoints` lists the complete ones, oldest first; each is a checkpoint
directory that :func:`find_checkpoint` (and :func:`open_checkpoint`) accepts as it is.

Usage::

    write_checkpoint(run_path, {"policy.pt": state, ...}, {"driver.json": counters}, meta)
    found = find_checkpoint(run_path)            # CheckpointError if none is complete
    state = found.load("policy.pt")
    keep_checkpoint(run_path, 12000, actor_state, meta, keep=5)
    for path in kept_checkpoints(run_path):      # checkpoints/0000004000, checkpoints/0000008000, ...
        actor = find_checkpoint(path).load("actor.pt")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping


from replay.files import fsync_path
from system.run_dir import CheckpointError

FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another format is refused."""
CHECKPOINT, PREVIOUS, TEMPORARY = "checkpoint", "checkpoint.prev", "checkpoint.tmp"
META = "meta.json"
KEPT = "checkpoints"
"""The directory of a run's kept checkpoints (``run.keep_checkpoints``)."""
KEY_DIGITS = 10
"""A kept checkpoint's directory name: its key (env steps, or policy updates offline), zero-padded to this width."""
LOCK_FILE = "driver.lock"
"""In a run directory while its driver lives: pid, hostname; the driver holds an exclusive ``flock`` on it."""
HEARTBEAT_S = 10.0
"""How often a live driver touches its lock file (a driver on another host is judged alive by it)."""
STALE_AFTER_S = 60.0
"""A lock file of a driver on another host that was not touched for this long names a dead driver."""


def dynaray_version() -> str:
    try:
        return metadata.version("dynaray")
    except metadata.PackageNotFoundError:
        return "unknown"


def network_sizes(config: Any) -> dict[str, Any]:
    """What the saved learner states' shapes depend on besides the env (checked when a run is resumed)."""
    policy, model = config.policy, config.world_model
    return {
        "policy_hidden_sizes": list(policy.hidden_sizes),
        "num_critics": policy.num_critics,
        "critic_layer_norm": policy.critic_layer_norm,
        "world_model_enabled": model.enabled,
        "world_model_hidden_sizes": list(model.hidden_sizes) if model.enabled else None,
        "ensemble_size": model.ensemble_size if model.enabled else None,
        "replay_shards": config.replay.num_shards,
    }


def describe_meta(config: Any, spec: Any) -> dict[str, Any]:
    """The identity of a run's checkpoints: format, dynaray version, env, shapes, network sizes."""
    return {
        "format": FORMAT,
        "dynaray_version": dynaray_version(),
        "env_id": config.env.id,
        "obs_shape": list(spec.obs_shape),
        "action_shape": list(spec.action_shape),
        "networks": network_sizes(config),
    }


# ---------------------------------------------------------------------------------------------------------------
# writing


def write_checkpoint(run_path: str | Path, tensors: Mapping[str, Any], documents: Mapping[str, Any],
                     meta: Mapping[str, Any]) -> Path:
    """Write one checkpoint atomically and return its directory.

    ``tensors``: file name -> object for ``torch.save`` (loadable with ``weights_only=True``); ``documents``: file
    name -> JSON-able value; ``meta``: the checkpoint's description (:func:`describe_meta` plus counters), to which
    the list of files and their sizes is added. The previous checkpoint stays (``checkpoint.prev/``) until the new
    one is complete.
    """
    run_path = Path(run_path)
    tmp, current, previous = run_path / TEMPORARY, run_path / CHECKPOINT, run_path / PREVIOUS
    _write_files(tmp, tensors, documents, meta)
    # swap: the complete current one becomes the previous one, then the new one becomes current
    if current.exists():
        if _complete(current) is not None:
            shutil.rmtree(current)  # an incomplete one (e.g. written before this format) is not kept
        else:
            if previous.exists():
                shutil.rmtree(previous)
            current.rename(previous)
    tmp.rename(current)
    fsync_path(run_path)
    return current


def _write_files(tmp: Path, tensors: Mapping[str, Any], documents: Mapping[str, Any],
                 meta: Mapping[str, Any]) -> None:
    """Write a checkpoint's files into the new directory ``tmp`` (replacing one left by a crash), each fsynced,
    ``meta.json`` last, then the directory itself."""
    import torch  # here, not at the top: the driver finds and checks checkpoints before it has loaded torch

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, value in tensors.items():
        torch.save(value, tmp / name)
    for name, value in documents.items():
        (tmp / name).write_text(json.dumps(value, indent=1, sort_keys=True, allow_nan=True) + "\n")
    files = {entry.name: entry.stat().st_size for entry in sorted(tmp.iterdir())}
    for name in files:
        fsync_path(tmp / name)
    full = {**meta, "files": files, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / META).write_text(json.dumps(full, indent=1, sort_keys=True) + "\n")
    fsync_path(tmp / META)
    fsync_path(tmp)


def keep_checkpoint(run_path: str | Path, key: int, actor: Any, meta: Mapping[str, Any], keep: int) -> Path:
    """Keep the policy ``actor`` (the acting weights, as ``actor.pt``) with ``meta`` in
    ``run_path/checkpoints/<key>/``, atomically (``<key>.tmp/`` written and fsynced, then renamed; one of that key
    already there is replaced), then delete the oldest complete kept checkpoints beyond ``keep``. Return its
    directory."""
    kept = Path(run_path) / KEPT
    name = f"{int(key):0{KEY_DIGITS}d}"
    target, tmp, old = kept / name, kept / f"{name}.tmp", kept / f"{name}.old"
    for stale in kept.glob("*.tmp") if kept.is_dir() else ():  # left by a crash (one writer at a time)
        shutil.rmtree(stale, ignore_errors=True)
    _write_files(tmp, {"actor.pt": actor}, {}, meta)
    if target.exists():  # the same key again (the final checkpoint at the last periodic one's env steps)
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    tmp.rename(target)
    fsync_path(kept)
    shutil.rmtree(old, ignore_errors=True)
    for path in kept_checkpoints(run_path)[:-keep] if keep > 0 else ():
        shutil.rmtree(path, ignore_errors=True)
    fsync_path(kept)
    return target


def kept_checkpoints(run_path: str | Path) -> list[Path]:
    """The complete kept checkpoints of a run (``checkpoints/<key>/``), oldest (smallest key) first; incomplete or
    foreign entries are skipped. Empty when the run kept none."""
    kept = Path(run_path) / KEPT
    if not kept.is_dir():
        return []
    found = [path for path in kept.iterdir()
             if path.is_dir() and len(path.name) == KEY_DIGITS and path.name.isdigit() and _complete(path) is None]
    return sorted(found, key=lambda path: int(path.name))


# ---------------------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class FoundCheckpoint:
    """A complete checkpoint: its directory and its meta.json."""

    path: Path
    meta: dict[str, Any]

    def load(self, name: str, device: str = "cpu") -> Any:
        """A tensor file of the checkpoint (``policy.pt``, ...); None when the checkpoint has no such file."""
        path = self.path / name
        if name not in self.meta["files"]:
            return None
        import torch

        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file
            raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt ({type(exc).__name__})") from None

    def document(self, name: str) -> Any:
        """A JSON file of the checkpoint (``driver.json``, ``replay.json``); None when it has no such file."""
        if name not in self.meta["files"]:
            return None
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint file {str(self.path / name)!r} is corrupt ({exc})") from None


def _complete(path: Path) -> str | None:
    """None when ``path`` holds a complete checkpoint of this format, else what is wrong with it."""
    meta_path = path / META
    if not meta_path.is_file():
        return f"{META} is missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return f"{META} is corrupt"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return f"{META} lists no files (written by an older dynaray?)"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')!r}, expected {FORMAT}"
    for name, size in meta["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {META} says {size}"
    return None


def open_checkpoint(path: str | Path) -> FoundCheckpoint:
    """The checkpoint in directory ``path`` itself (a run's ``checkpoint/``, or a kept ``checkpoints/<key>/``).

    Raises:
        CheckpointError: it is not complete (the message says what is wrong).
    """
    path = Path(path)
    problem = _complete(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete: {problem}")
    return FoundCheckpoint(path, json.loads((path / META).read_text()))


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint directory itself (it holds ``meta.json``), not a run directory."""
    return (Path(path) / META).is_file() and not (Path(path) / "config.yaml").is_file()


def checkpoint_run_path(path: str | Path) -> Path:
    """The run directory of checkpoint directory ``path`` (``RUN/checkpoint/`` or ``RUN/checkpoints/<key>/``); a
    run directory is its own."""
    path = Path(path)
    if not is_checkpoint_dir(path):
        return path
    return path.parent.parent if path.parent.name == KEPT else path.parent


def find_checkpoint(run_path: str | Path) -> FoundCheckpoint:
    """The newest complete checkpoint of a run: ``checkpoint/``, else ``checkpoint.prev/``; or, given a checkpoint
    directory itself (a kept one, ``checkpoints/<key>/``), that one (:func:`open_checkpoint`).

    Raises:
        CheckpointError: neither is complete (the message says what is wrong with the newest one).
    """
    run_path = Path(run_path)
    if is_checkpoint_dir(run_path):
        return open_checkpoint(run_path)
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_path / name
        if not path.is_dir():
            continue
        problem = _complete(path)
        if problem is None:
            return FoundCheckpoint(path, json.loads((path / META).read_text()))
        problems.append(f"{name}/: {problem}")
    if not problems:
        raise CheckpointError(f"{str(run_path)!r} has no checkpoint (expected {CHECKPOINT}/ with {META})")
    raise CheckpointError(f"checkpoint of {str(run_path)!r} is incomplete: {'; '.join(problems)}")


def newest_checkpoint(run_path: str | Path | None) -> FoundCheckpoint | None:
    """:func:`find_checkpoint`, or None when the run has no complete checkpoint (or no run path is given)."""
    if run_path is None:
        return None
    try:
        return find_checkpoint(run_path)
    except CheckpointError:
        return None


def check_compatible(found: FoundCheckpoint, expected: Mapping[str, Any]) -> None:
    """Refuse a checkpoint made by another dynaray version, for another env or other network sizes.

    Raises:
        CheckpointError: one line naming the first difference, expected vs found.
    """
    for key, label in (("format", "format"), ("dynaray_version", "dynaray version"), ("env_id", "env"),
                       ("obs_shape", "observation shape"), ("action_shape", "action shape")):
        if found.meta.get(key) != expected[key]:
            raise CheckpointError(f"checkpoint in {str(found.path)!r} is from {label} {found.meta.get(key)!r}, "
                                  f"expected {expected[key]!r}")
    saved = found.meta.get("networks") or {}
    for key, value in expected["networks"].items():
        if saved.get(key) != value:
            raise CheckpointError(f"checkpoint in {str(found.path)!r} has {key}={saved.get(key)!r}, "
                                  f"expected {value!r} (the run's config.yaml)")


# ---------------------------------------------------------------------------------------------------------------
# the live driver's lock


class RunLockedError(RuntimeError):
    """The run's driver is alive (the message names its pid and host)."""


class DriverLock:
    """``driver.lock`` in a run directory: pid and hostname of the live driver, held with an exclusive ``flock``
    (released by the kernel when the process dies, SIGKILL included) and touched every :data:`HEARTBEAT_S`.

    Usage::

        lock = DriverLock(run_path).acquire()    # RunLockedError while another driver of the run lives
        ...; lock.heartbeat()                      # now and then
        lock.release()
    """

    def __init__(self, run_path: str | Path):
        self.path = Path(run_path) / LOCK_FILE
        self._fd: int | None = None
        self._touched = 0.0

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "DriverLock":
        """Take the lock, or raise RunLockedError naming the live driver that holds it."""
        holder = self._holder()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(self._refusal(holder)) from None
        # a driver on another host (whose flock this filesystem may not share) is alive while it touches the file
        other_host = holder.get("hostname") not in (None, socket.gethostname())
        if other_host and time.time() - self.path.stat().st_mtime < STALE_AFTER_S:
            os.close(fd)
            raise RunLockedError(self._refusal(holder))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}) + "\n").encode())
        self._fd, self._touched = fd, time.monotonic()
        return self

    def _refusal(self, holder: Mapping[str, Any]) -> str:
        return (f"run {str(self.path.parent)!r} is still running (driver pid {holder.get('pid', '?')} on host "
                f"{holder.get('hostname', '?')}): stop it first, or wait until it ends")

    def heartbeat(self) -> None:
        """Touch the lock file (at most once per :data:`HEARTBEAT_S`)."""
        if self._fd is not None and time.monotonic() - self._touched >= HEARTBEAT_S:
            self._touched = time.monotonic()
            os.utime(self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
