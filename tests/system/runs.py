"""Helpers for tests that run `dynaray train` end to end: the run's Ray worker processes, its persisted replay.

Processes: the test sets ``DYNARAY_TEST_RUN`` in the run's environment, and Ray's raylet, which forks the workers,
keeps it (a worker's own environment can be overwritten by its process title), so other runs on the machine are
left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np


def dynaray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=120)


class TrainRun:
    """A ``dynaray train`` subprocess of one test, its Ray processes marked (``DYNARAY_TEST_RUN``, see
    :func:`run_processes`); a thread reads its output, so that the pipe never fills.

    Usage::

        with TrainRun(tmp_path, "debug", "name=x", f"run.runs_dir={tmp_path}") as run:
            run.wait_until(lambda: run.saw("run directory"), 300, "the run directory")
            ...                               # dynaray status / scale / kills against the running system
            run.wait(timeout=600)             # the run ends by itself
        assert run.returncode == 0, run.tail()

    Leaving the block while the run still goes on (a failed assertion) stops it as Ctrl-C does, then kills it.
    """

    def __init__(self, marker_dir: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.marker = f"DYNARAY_TEST_RUN={marker_dir}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.cli", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env={**os.environ, **(env or {}), "DYNARAY_TEST_RUN": str(marker_dir)}, cwd=cwd)
        self.out: list[str] = []
        self._reader = threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(30)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(30)
        return code

    def saw(self, needle: str) -> str | None:
        """The first output line holding ``needle`` so far, or None."""
        return next((line for line in list(self.out) if needle in line), None)

    def log(self) -> str:
        return "".join(self.out)

    def tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def processes(self, process_title: str) -> list[int]:
        return run_processes(self.marker, process_title)

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> object:
        """Poll ``condition`` until it is truthy (returns it); fails when the run ends first or at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            assert self.proc.poll() is None, f"the run ended before {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:g} s:\n{self.tail()}"
            time.sleep(0.2)
        return result


def run_processes(marker: str, process_title: str) -> list[int]:
    """Ray workers titled ``process_title...`` whose raylet's environment holds ``marker`` (set for one run, so
    that Ray processes of other runs on this machine are left alone; a worker's own environment can be
    overwritten by its process title)."""
    found = []
    for pid in subprocess.run(["pgrep", "-f", f"^{process_title}"], capture_output=True, text=True).stdout.split():
        try:
            raylet = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            environ = Path(f"/proc/{raylet}/environ").read_bytes()
        except (OSError, IndexError):
            continue
        if marker.encode() in environ.split(b"\0"):
            found.append(int(pid))
    return found


def ray_pids(marker: str) -> set[int]:
    """Raylets and GCS servers whose environment holds ``marker`` (those of the run the test started, not Ray
    processes of other runs on this machine)."""
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    found = set()
    for pid in out.split():
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(int(pid))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (its files, a shard's replay lock included, still open)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stored_rows(run_dir: Path, table: str = "real") -> dict[str, np.ndarray]:
    """Rows a run persisted in ``table``, recovered from its replay directory by in-process shards."""
    from actors.envs import probe_env
    from replay.shard import ReplayShard
    from system.run_dir import RunDir
    from system.wiring import table_configs

    config = RunDir(run_dir).load_config()
    tables = [t for t in table_configs(config, probe_env(config.env)) if t.name == table]
    parts = []
    for index in range(config.replay.num_shards):
        shard = ReplayShard(tables, index=index, directory=str(run_dir / "replay"))
        parts.append(shard._tables[table].table.export()[0])
        shard.close()
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def assert_well_formed(rows: dict[str, np.ndarray], holes: bool = False) -> None:
    """No row stored twice, and every episode is whole from step 0: consecutive steps, next_obs[t] == obs[t+1],
    only its last row may end it. ``holes``: a worker killed mid-run loses the inserts it had in flight, and another
    of its chunks may already be acknowledged, so its episodes may miss steps; then steps only need to increase,
    and the checks hold between consecutive steps."""
    keys = set(zip(rows["writer_id"].tolist(), rows["seq"].tolist()))
    assert len(keys) == len(rows["seq"]), "a row is stored twice"
    order = np.lexsort((rows["seq"], rows["episode_id"]))
    for episode in np.split(order, np.flatnonzero(np.diff(rows["episode_id"][order])) + 1):
        steps = rows["step"][episode]
        if holes:
            assert (np.diff(steps) > 0).all(), steps.tolist()
        else:
            assert steps.tolist() == list(range(len(episode))), steps.tolist()
        next_step = np.diff(steps) == 1
        np.testing.assert_array_equal(rows["next_obs"][episode][:-1][next_step], rows["obs"][episode][1:][next_step])
        ended = rows["terminated"][episode] | rows["truncated"][episode]
        assert not ended[:-1].any()
