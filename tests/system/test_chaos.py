"""Chaos: during one `debug` run on an embedded Ray, SIGKILL in turn a rollout worker, a replay shard, an imagination
worker, the policy learner, the world-model learner, the weights store and the evaluator. Ray restarts each; the
driver sends each its lost work again once it is back and counts every role's restart; the run goes on (an
evaluation after the policy learner's restart) until the test stops it with SIGTERM, and then holds every
acknowledged row of `real` once.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import os
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.system.runs import TrainRun, assert_well_formed, stored_rows

pytestmark = pytest.mark.ray

NO_END = 10**7
"""The run's env-step budget: more than it reaches, so that it goes on through the kills however fast the machine,
until the test stops it with SIGTERM."""
VICTIMS = (("ray::RolloutWorker", "rollout"), ("ray::ReplayShard", "replay"), ("ray::ImaginationWorker", "imagination"),
           ("ray::PolicyLoop", "policy"), ("ray::WorldModelLoop", "world_model"), ("ray::WeightsStore", "store"),
           ("ray::Evaluator", "evaluator"))
"""(process title of the role's actors, the role's name in the metrics table)."""
RANDOM_POLICY_RETURN = 5.5
"""Mean return of the uniform random policy on InvertedPendulum-v5 (tests/system/test_train_e2e.py)."""


def kill_one_and_wait_for_its_restart(run: TrainRun, title: str, timeout: float = 300) -> None:
    """SIGKILL one process of the run titled ``title...``, then wait until the role has as many processes as before
    again (Ray made a new one)."""
    before = run.wait_until(lambda: run.processes(title), timeout, f"a {title} process of the run to kill")
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    run.wait_until(lambda: len([p for p in run.processes(title) if p != victim]) >= len(before), timeout,
                   f"{title}'s restart")


def env_steps_so_far(run_dir) -> int:
    """The newest env-step count in the run's metrics table (written every 10 reports), 0 before it is."""
    try:
        return pq.read_table(run_dir / "metrics.parquet", columns=["env_steps"]).column(0).to_pylist()[-1]
    except (OSError, IndexError):
        return 0


def evals_after_a_learner_restart(run_dir, killed_at: int, every_steps: int) -> list[dict]:
    """Evaluations of policies taken after a learner killed at ``killed_at`` env steps (or later) had restarted
    (none before the run's first evaluation is written)."""
    try:
        evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    except OSError:
        return []
    return [e for e in evals if e["env_steps"] >= killed_at + every_steps]


def test_every_role_killed_in_turn_restarts_and_the_run_goes_on(tmp_path):
    run_dir = tmp_path / "chaos"
    with TrainRun(tmp_path, "debug", "name=chaos", f"run.runs_dir={tmp_path}", "run.progress=false",
                  f"run.total_env_steps={NO_END}", "ray.num_cpus=8",
                  "run.checkpoint_every_s=5",  # a checkpoint for the restarted learners to restore from
                  "placement.timeout_s=600", "run.startup_timeout_s=600") as run:  # a loaded machine starts slowly
        run.wait_until(lambda: run.processes("ray::PolicyLoop.run"), 300, "learners sampling")
        # Rows of the first rollout worker acknowledged before its kill (counted steps minus at most 4 chunks of 25
        # in flight): on a loaded machine its first call can still be running when the learners start.
        run.wait_until(lambda: env_steps_so_far(run_dir) >= 200, 300, "200 env steps counted")
        for title, role in VICTIMS:
            if role == "policy":  # what a restarted learner can restore: a checkpoint written before the kill
                restorable = (run_dir / "checkpoint" / "meta.json").is_file()
                killed_at = env_steps_so_far(run_dir)
            kill_one_and_wait_for_its_restart(run, title)
            time.sleep(1)  # the driver's next probe sees the new process
        from system.run_dir import RunDir

        every_steps = RunDir(run_dir).load_config().eval.every_steps
        run.wait_until(lambda: any(e["return_mean"] is not None
                                   for e in evals_after_a_learner_restart(run_dir, killed_at, every_steps)), 600,
                       "an evaluation of a policy from after the policy learner's restart")
        # Done: SIGTERM; the restarted workers flush, the learners end their calls, a checkpoint.
        run.proc.send_signal(signal.SIGTERM)
        run.wait(timeout=600)
    assert run.returncode == 143 and "Traceback" not in run.log(), run.tail()

    env_steps = json.loads((run_dir / "checkpoint" / "meta.json").read_text())["env_steps"]
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()[-1]
    assert metrics["env_steps"] == env_steps
    restarts = {role: metrics.get(f"{role}_restarts") for _, role in VICTIMS}
    assert all(n is not None and n >= 1 for n in restarts.values()), restarts
    evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    # A policy learner restarted from a checkpoint written before its kill does not fall back to the random policy's
    # level once it had left it (with no checkpoint yet it restarts afresh, and its evaluations may)
    # (an eval before the first policy, version -1, has no return: NaN, stored as null)
    learned = any(e["return_mean"] is not None and e["return_mean"] > 2 * RANDOM_POLICY_RETURN
                  for e in evals if e["env_steps"] <= killed_at)
    if restorable and learned:
        after = evals_after_a_learner_restart(run_dir, killed_at, every_steps)
        assert after and all(e["return_mean"] is not None and e["return_mean"] > 2 * RANDOM_POLICY_RETURN
                             for e in after), evals

    # The exported real table: every acknowledged row once. Lost with the killed rollout worker: its unfinished
    # chunk and its inserts not yet acknowledged (at most replay.max_inflight_inserts = 4 chunks of 25 rows); chunks
    # it finished in the call that died are stored although the driver never counted that call (at most 50 steps).
    rows = stored_rows(run_dir)
    assert_well_formed(rows, holes=True)  # no (writer_id, seq) twice
    assert env_steps - 4 * 25 <= len(rows["seq"]) <= env_steps + 50, (len(rows["seq"]), env_steps)
    assert len(np.unique(rows["writer_id"])) >= 2  # the rollout worker before and after its restart
