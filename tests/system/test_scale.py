"""`dynaray scale` against a running `dynaray train`: rollout workers 1 -> 3 -> 1 while the learners run.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.system.runs import assert_well_formed, run_processes, stored_rows

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(os.environ.get("DYNARAY_NETNS") != "1", reason="starts Ray: run inside tests/run.sh"),
]

BUDGET = 3000


def dynaray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=120)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_scale_rollout_up_and_down_while_learners_run(tmp_path):
    marker = f"DYNARAY_TEST_RUN={tmp_path}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "system.cli", "train", "debug", "name=scaled", f"run.runs_dir={tmp_path}",
         "run.progress=false", f"run.total_env_steps={BUDGET}", "ray.num_cpus=8", "rollout.steps_per_call=25"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DYNARAY_TEST_RUN": str(tmp_path)},
    )
    runs = ["--runs-dir", str(tmp_path)]
    try:
        wait_until(lambda: run_processes(marker, "ray::PolicyLoop.run") or proc.poll() is not None, 180,
                   "the policy learner to run")
        up = dynaray("scale", "rollout=3", *runs)
        assert up.returncode == 0, up.stderr
        assert "run scaled: rollout 1 -> 3" in up.stdout
        wait_until(lambda: len(run_processes(marker, "ray::RolloutWorker")) == 3, 120, "3 rollout workers")
        time.sleep(3)  # the new workers collect for a while
        down = dynaray("scale", "rollout=1", "--run", "scaled", *runs)
        assert down.returncode == 0, down.stderr
        assert "run scaled: rollout 3 -> 1" in down.stdout
        wait_until(lambda: len(run_processes(marker, "ray::RolloutWorker")) == 1, 120, "1 rollout worker")

        bad = dynaray("scale", "rollout=0", *runs)
        assert bad.returncode == 2 and "rollout=0: expected 1 <= rollout <= 4096" in bad.stderr, bad.stderr
        unknown = dynaray("scale", "learner=2", *runs)
        assert unknown.returncode == 2 and "unknown pool 'learner'" in unknown.stderr, unknown.stderr
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]

    metrics = pq.read_table(tmp_path / "scaled" / "metrics.parquet").to_pylist()
    workers = [row["rollout_workers"] for row in metrics]
    assert max(workers) == 3 and workers[-1] == 1, workers
    # The learners kept their ratio through the changes: 3 policy updates per env step after 300 learning starts.
    assert abs(metrics[-1]["policy_total_updates"] - 3 * (BUDGET - 300)) <= 3 * 100, metrics[-1]
    rows = stored_rows(tmp_path / "scaled")
    assert len(rows["seq"]) == BUDGET  # retired workers flushed everything they collected
    assert_well_formed(rows)
    gone = dynaray("scale", "rollout=2", *runs)
    assert gone.returncode == 1 and "no running system found" in gone.stderr
