"""Liveness: restarts counted per role, a role that keeps dying, stalled actors (plain classes), and on an embedded
Ray: `dynaray status` of the running system, `dynaray scale` beyond what the cluster can place answers at once with
what is missing, the run goes on with the workers it has and ends by its budget, and the worker that cannot be placed
is reported as stalled.

The Ray test runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json

import pyarrow.parquet as pq
import pytest

from system.control import Control, ScaleError
from system.liveness import RestartLedger, StallWatch, role_of
from system.cli import _say_what_cannot_be_placed
from system.placement import fitting, shortfall
from tests.system.runs import TrainRun, dynaray


def test_role_of_actor_names():
    assert [role_of(n) for n in ("rollout-3", "replay-shard-0", "policy-learner", "world-model-learner",
                                 "weights-store", "evaluator-1", "control", "gateway", "imagination-0")] == [
        "rollout", "replay", "policy", "world_model", "store", "evaluator", "control", "gateway", "imagination"]


def test_restarts_are_counted_per_role_by_new_incarnations():
    ledger = RestartLedger(limit=3, window_s=60, roles=("rollout", "policy"))
    assert not ledger.seen("rollout-0", "a", 0.0)  # first answer: no restart
    assert not ledger.seen("rollout-0", "a", 1.0)  # the same process again
    ledger.died("rollout-0", "ActorDiedError: killed", 2.0)
    assert ledger.lost_for("rollout-0", 5.0) == 3.0
    assert ledger.seen("rollout-0", "b", 5.0)
    assert ledger.lost_for("rollout-0", 6.0) == 0.0
    assert not ledger.seen("rollout-1", "c", 5.0)
    assert ledger.seen("rollout-1", "d", 6.0)
    assert ledger.restarts() == {"rollout": 2, "policy": 0}
    assert ledger.last_error("rollout") == "ActorDiedError: killed"
    ledger.forget("rollout-1")  # retired on purpose: a new worker with that name is no restart
    assert not ledger.seen("rollout-1", "e", 7.0)
    assert ledger.restarts()["rollout"] == 2
    ledger.died("policy-learner", "ActorDiedError: killed", 8.0)  # died before it ever answered a probe
    assert ledger.seen("policy-learner", "f", 9.0)
    assert ledger.restarts() == {"rollout": 2, "policy": 1}


def test_a_role_keeps_dying_after_limit_restarts_within_the_window():
    ledger = RestartLedger(limit=3, window_s=60)
    ledger.seen("policy-learner", "t0", 0.0)
    for i, now in enumerate((10.0, 20.0), 1):
        ledger.seen("policy-learner", f"t{i}", now)
    assert not ledger.keeps_dying("policy", 20.0)
    ledger.seen("policy-learner", "t3", 100.0)  # the restart at 10 s left the window
    assert not ledger.keeps_dying("policy", 100.0)
    ledger.seen("policy-learner", "t4", 110.0)
    assert not ledger.keeps_dying("policy", 110.0)
    ledger.seen("policy-learner", "t5", 120.0)
    assert ledger.keeps_dying("policy", 120.0)


def test_stalled_names_the_actors_with_work_and_no_progress():
    watch = StallWatch(timeout_s=10)
    watch.busy("rollout-0", 0.0)
    watch.busy("rollout-1", 0.0)
    watch.busy("evaluator-0", 0.0)
    watch.progress("rollout-0", 8.0)
    watch.busy("rollout-0", 9.0)  # still the clock of its last progress
    watch.idle("evaluator-0")  # its evaluation came back
    assert watch.stalled(11.0) == ["rollout-1"]
    assert watch.stalled(19.0) == ["rollout-0", "rollout-1"]


def test_shortfall_names_what_new_workers_lack():
    demand = {"CPU": 1.0, "GPU": 0.0, "memory": 0.0}
    assert shortfall(demand, 2, {"CPU": 0.5}) == {"CPU": 1.5}
    assert shortfall(demand, 1, {"CPU": 1.0}) == {}
    assert shortfall({"CPU": 1.0, "robot": 1.0}, 1, {"CPU": 4.0}) == {"robot": 1.0}
    assert [fitting(demand, 3, {"CPU": free}) for free in (0.5, 1.0, 2.5, 8.0)] == [0, 1, 2, 3]
    assert fitting({"CPU": 1.0, "robot": 1.0}, 3, {"CPU": 4.0, "robot": 1.0}) == 1


@pytest.mark.parametrize("free, which", [(0.5, "the 3 new"), (2.5, "1 of the 3 new"), (3.0, None)])
def test_scale_says_how_many_new_workers_cannot_be_placed(free, which, capsys):
    _say_what_cannot_be_placed("rollout", 3, {"rollout": {"CPU": 1.0, "GPU": 0.0}}, {"CPU": free})
    err = capsys.readouterr().err
    if which is None:
        assert err == ""
    else:
        assert f"cannot place {which} rollout worker(s) now: each asks CPU 1, the cluster lacks CPU {3 - free:g} " \
               f"for all 3;" in err, err


def test_control_counts_scale_requests_and_keeps_worker_demands():
    control = Control("run", {"rollout": 1, "imagination": 1}, {"rollout", "imagination"},
                      worker_demands={"rollout": {"CPU": 1.0}})
    control.request({"rollout": 2})
    with pytest.raises(ScaleError):
        control.request({"rollout": 0})
    stats = control.stats()
    assert stats["requests"] == {"accepted": 1, "refused": 1} and stats["desired"]["rollout"] == 2
    assert stats["status_age_s"] is None
    assert control.status()["worker_demands"] == {"rollout": {"CPU": 1.0}}


# ---------------------------------------------------------------------------------------------------------------
# on an embedded Ray


@pytest.mark.ray
def test_scale_beyond_the_cluster_answers_at_once_and_the_run_ends_by_its_budget(tmp_path):
    budget = 2000
    runs = ["--runs-dir", str(tmp_path)]
    # ray.num_cpus=5: the debug roles take all 5 CPUs (2 shards 0.5 each, 2 learners 1 each, rollout 1, imagination
    # 0.5, evaluator 0.5; system.placement.planned_demands); a second rollout worker (1 CPU) cannot be placed
    with TrainRun(tmp_path, "debug", "name=tight", f"run.runs_dir={tmp_path}", "run.progress=false",
                  f"run.total_env_steps={budget}", "ray.num_cpus=5", "run.stall_timeout_s=5",
                  "rollout.steps_per_call=25", "placement.timeout_s=600", "run.startup_timeout_s=600") as run:
        run.wait_until(lambda: run.saw("run directory"), 300, "the run directory")

        def reported():  # the driver's first report is posted (before: no ray.json or no control actor yet)
            shown = dynaray("status", *runs)
            assert "Traceback" not in shown.stderr, shown.stderr
            return shown if shown.returncode == 0 and "env steps" in shown.stdout else None

        # dynaray status of the running system: every role, and a run it cannot find named with where it looked
        shown = run.wait_until(reported, 300, "a status with env steps")
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("run tight on the Ray cluster at 127.0.0.1:")
        roles = {line.split()[0]: line.split() for line in lines if line and line.split()[0].islower()}
        for role in ("replay-shard", "weights-store", "policy-learner", "world-model-learner", "rollout",
                     "imagination", "evaluator", "control"):
            assert role in roles, shown.stdout
        assert roles["rollout"][1:3] == ["1", "1/1"], shown.stdout
        assert roles["policy-learner"][1:3] == ["1", "1/1"], shown.stdout
        wrong = dynaray("status", "--run", "wrong-name", *runs)
        assert wrong.returncode == 1
        assert wrong.stderr.strip().splitlines() == [
            f"dynaray: error: no running system named 'wrong-name' under {str(tmp_path)!r} (no live ray.json); "
            f"pass --address of its Ray cluster"]
        address = json.loads((tmp_path / "tight" / "ray.json").read_text())["address"]
        elsewhere = dynaray("status", "--run", "wrong-name", "--address", address, *runs)
        assert elsewhere.returncode == 1 and "Traceback" not in elsewhere.stderr
        assert f"no running system named 'wrong-name' on the Ray cluster at {address}" in elsewhere.stderr

        # beyond the cluster
        up = dynaray("scale", "rollout=2", *runs)  # answers without waiting for the worker to be made
        assert up.returncode == 0, up.stderr
        assert "run tight: rollout 1 -> 2" in up.stdout
        assert "cannot place the 1 new rollout worker(s) now" in up.stderr and "lacks CPU" in up.stderr, up.stderr

        # the worker that cannot be placed is reported by name once run.stall_timeout_s has passed
        def stalled() -> str | None:
            shown = dynaray("status", *runs).stdout
            return shown if "rollout-1 stalled" in shown else None

        status = run.wait_until(stalled, 300, "rollout-1 reported stalled")
        assert "rollout-1 not placed" in status, status
        run.wait(timeout=600)
    assert run.returncode == 0, run.tail()
    metrics = pq.read_table(tmp_path / "tight" / "metrics.parquet").to_pylist()
    assert metrics[-1]["env_steps"] == budget  # no step of the budget held by the worker that was never made
    assert metrics[-1]["rollout_workers"] == 1
    assert "rollout-1" in metrics[-1]["stalled"]
