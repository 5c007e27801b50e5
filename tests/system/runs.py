"""Helpers for tests that run `dynaray train` end to end: the run's Ray worker processes, its persisted replay.

Processes: the test sets ``DYNARAY_TEST_RUN`` in the run's environment, and Ray's raylet, which forks the workers,
keeps it (a worker's own environment can be overwritten by its process title), so other runs on the machine are
left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def dynaray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=120)


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


def sigkill_when_running(marker: str, process_title: str, timeout: float = 120.0) -> int:
    """Wait until a Ray worker of the run is titled ``process_title`` (the actor is inside that method), then
    SIGKILL it."""
    deadline = time.monotonic() + timeout
    while not (pids := run_processes(marker, process_title)):
        assert time.monotonic() < deadline, f"no {process_title} process of this run within {timeout} s"
        time.sleep(0.2)
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


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
