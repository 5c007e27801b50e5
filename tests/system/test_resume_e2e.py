"""End to end on an embedded local Ray: a SIGKILLed driver leaves no process of its run behind, and `dynaray train
--resume` continues the run from its last checkpoint to the run's own stop rule.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.system.runs import alive, stored_rows

pytestmark = pytest.mark.ray

NO_END = 10**7
"""The first run's env-step budget: more than it reaches before the test kills it, however fast the machine."""
RESUMED_STEPS = 600
"""Env steps the resumed run collects past the killed run's checkpoint before its budget."""
WARMUP = 300  # debug preset: rollout.warmup_steps
START_TIMEOUT_S = 900.0
GONE_WITHIN_S = 60.0
"""Bound on how long the processes of a run may outlive its SIGKILLed driver."""


def run_process_ids(marker: str) -> list[int]:
    """Every process whose environment (or whose parent's: Ray workers may overwrite theirs with their title) holds
    ``marker``, set for one run only."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            environs = [(entry / "environ").read_bytes(), Path(f"/proc/{parent}/environ").read_bytes()]
        except (OSError, IndexError):
            continue
        if any(marker.encode() in environ.split(b"\0") for environ in environs):
            found.append(int(entry.name))
    return found


def start(runs: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DYNARAY_TEST_RUN": str(runs)}
    return subprocess.Popen([sys.executable, "-m", "system.cli", "train", *args, "run.progress=false",
                             "placement.timeout_s=600", "run.startup_timeout_s=600"],  # a loaded machine
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


RAY_START_TIMED_OUT = "The current node timed out during startup"
"""Ray's own error when its raylet does not register within its fixed 30 s (a heavily loaded machine): the test
starts the command again, as tests/system/test_autoscaling.py does for its head."""


def start_run(runs: Path, name: str, env_steps: int) -> tuple[subprocess.Popen, dict]:
    """``dynaray train debug`` with a checkpoint every 3 s and no end of its own, and the meta of its first
    checkpoint with at least ``env_steps``."""
    run_dir = runs / name
    args = ("debug", f"name={name}", f"run.runs_dir={runs}", f"run.total_env_steps={NO_END}",
            "run.checkpoint_every_s=3")
    for _ in range(3):
        proc = start(runs, *args)
        deadline = time.monotonic() + START_TIMEOUT_S
        meta = run_dir / "checkpoint" / "meta.json"
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"no checkpoint at {env_steps} env steps within {START_TIMEOUT_S} s"
            try:
                found = json.loads(meta.read_text())
                if found["env_steps"] >= env_steps:
                    return proc, found
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        out = proc.communicate()[0]
        assert RAY_START_TIMED_OUT in out, out[-3000:]
        shutil.rmtree(run_dir)
    raise AssertionError("Ray did not start in 3 tries")


def resume(run_dir: Path, runs: Path, budget: int) -> subprocess.CompletedProcess:
    for _ in range(3):
        proc = start(runs, "--resume", str(run_dir), f"run.total_env_steps={budget}")
        out, _ = proc.communicate(timeout=900)
        if RAY_START_TIMED_OUT not in out:
            break
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def check_whole_run(run_dir: Path, checkpoint: dict, writers_before: list[int], budget: int) -> None:
    """Metrics and evals cover the run once, the policy versions go on, there was no second warm-up."""
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    steps, walls = [r["env_steps"] for r in metrics], [r["wall_time_s"] for r in metrics]
    assert steps == sorted(steps) and walls == sorted(walls), "metrics rows overlap"
    assert steps[0] < checkpoint["env_steps"] and steps[-1] == budget
    evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    marks = [e["env_steps"] for e in evals]
    assert marks == [*range(500, budget, 500), budget], marks  # debug preset: eval.every_steps=500, one at the end
    versions = [e["policy_version"] for e in evals]
    assert versions == sorted(versions)
    # the evals of marks past the checkpoint came after the resume: never with an older policy than the checkpoint's
    # (one asked before the resumed learner's first publication acts with the checkpoint's own); a mark at or below
    # the checkpoint's env steps was evaluated before it (the workers flush at a stop, so a checkpoint can pass 1,000)
    after = [e for e in evals if e["env_steps"] > checkpoint["env_steps"]]
    assert after and all(e["policy_version"] >= checkpoint["policy_version"] for e in after), (after, checkpoint)
    assert (run_dir / "learning_curve.png").is_file()
    # the rate limiters went on from the checkpoint: 3 policy updates per stored row after 300 (debug preset). The
    # rows count, not the env steps: after a SIGKILL the replay keeps rows written after the last checkpoint, whose
    # env steps the resumed run collects again
    rows = stored_rows(run_dir)
    expected = 3 * (len(rows["writer_id"]) - WARMUP)
    assert abs(metrics[-1]["policy_total_updates"] - expected) <= 3 * 150, (expected, metrics[-1])
    assert set(writers_before) < set(rows["writer_id"].tolist())
    resumed = ~np.isin(rows["writer_id"], writers_before)
    # no second warm-up (WARMUP random rows): a resumed worker waits for its first policy (rollout.first_policy_wait_s,
    # 30 s) instead of acting at random until its first poll is answered (100 env steps at a load of 40-50)
    assert (rows["policy_version"][resumed] == -1).sum() < WARMUP // 4, rows["policy_version"][resumed][:50]
    acted = rows["policy_version"][resumed]
    acted = acted[acted != -1]  # the random rows before the first poll answers are counted above
    assert (acted >= checkpoint["policy_version"]).mean() > 0.95, acted[:50]
    assert len(np.unique(np.stack([rows["writer_id"], rows["seq"]]), axis=1)[0]) == len(rows["seq"])


def test_a_killed_driver_leaves_nothing_running_and_resume_finishes_the_run(tmp_path):
    """A run whose driver is SIGKILLed once it has checkpointed past 400 env steps: no process of the run left; then
    `dynaray train --resume` goes on from that checkpoint to the run's budget, as if it had not stopped. (SIGTERM's
    checkpoint with every row, exit 143, is the scale test's end: tests/system/test_scale.py.)"""
    run_dir, marker = tmp_path / "t", f"DYNARAY_TEST_RUN={tmp_path}"

    # SIGKILLed: found while the raylet lives (an orphaned worker whose title overwrote its environment is found by
    # its pid), every process of the run gone within GONE_WITHIN_S
    proc, _ = start_run(tmp_path, "t", 400)
    try:
        before = run_process_ids(marker)
        assert before, "the run's Ray processes were not found"
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + GONE_WITHIN_S
    while left := run_process_ids(marker) + [pid for pid in before if alive(pid)]:
        assert time.monotonic() < deadline, f"processes of the killed run still running: {left}"
        time.sleep(0.5)
    checkpoint = json.loads((run_dir / "checkpoint" / "meta.json").read_text())
    assert checkpoint["env_steps"] >= 400, checkpoint
    writers_before = np.unique(stored_rows(run_dir)["writer_id"]).tolist()

    # resumed with a budget (a key --resume may change): on to it from the killed run's last checkpoint
    budget = checkpoint["env_steps"] + RESUMED_STEPS
    resumed = resume(run_dir, tmp_path, budget)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resuming from {run_dir / 'checkpoint'} ({checkpoint['env_steps']} env steps" in resumed.stdout, \
        resumed.stdout[-3000:]
    line = next(x for x in resumed.stdout.splitlines() if "first new env steps" in x)
    assert int(line.split("resumed at ")[1].split()[0]) >= checkpoint["env_steps"]
    check_whole_run(run_dir, checkpoint, writers_before, budget)
