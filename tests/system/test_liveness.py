"""Liveness: restarts counted per role, a role that keeps dying, stalled actors, what `dynaray scale` says the cluster
lacks (plain classes). On an embedded Ray (`dynaray status`, a scale beyond what the cluster can place, the worker
never made reported as stalled): tests/system/test_scale.py.
"""

import pytest

from system.control import Control, ScaleError
from system.liveness import RestartLedger, StallWatch, role_of
from system.cli import _say_what_cannot_be_placed
from system.placement import fitting, shortfall


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
