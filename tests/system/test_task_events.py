"""Task events: the roles' high-frequency methods record none in the GCS, their long calls keep theirs, and
``DYNARAY_TASK_EVENTS=all`` keeps every method's (system/wiring.py, ``QUIET_METHODS``).

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import sys
import time

import pytest

from system.control import Control
from system.weights import WeightsStore
from system.wiring import QUIET_METHODS, TASK_EVENTS_ENV, _remote_class, quiet_methods


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def task_events_by_method() -> dict[str, int]:
    """Method name -> task attempts the GCS holds events for."""
    from ray._private.state import state

    counts: dict[str, int] = {}
    for event in state._get_all_task_events():
        name = event.task_info.func_or_class_name.rsplit(".", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    return counts


def wait_for_events(method: str, calls: int = 1, timeout_s: float = 60.0) -> dict[str, int]:
    """Task events by method once ``calls`` of ``method``'s have reached the GCS (workers report them every
    second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = task_events_by_method()
        if counts.get(method, 0) >= calls or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def test_quiet_methods_name_methods_of_their_role(monkeypatch):
    for role, methods in QUIET_METHODS.items():
        for name in methods:
            assert callable(getattr(role, name)), f"{role.__name__}.{name}"

    class Sub(WeightsStore):
        pass

    monkeypatch.delenv(TASK_EVENTS_ENV, raising=False)
    assert quiet_methods(Sub) == QUIET_METHODS[WeightsStore]
    monkeypatch.setenv(TASK_EVENTS_ENV, "all")
    assert quiet_methods(Sub) == ()
    monkeypatch.setenv(TASK_EVENTS_ENV, "some")
    with pytest.raises(ValueError, match="expected 'all'"):
        quiet_methods(Sub)


@pytest.mark.ray
def test_high_frequency_calls_record_no_task_events(local_ray, monkeypatch):
    ray = local_ray
    monkeypatch.delenv(TASK_EVENTS_ENV, raising=False)
    store = _remote_class(WeightsStore, 1, (2, 60.0)).options(num_cpus=0).remote()
    control = _remote_class(Control, 1, (2, 60.0)).options(num_cpus=0).remote("run", {"rollout": 1},
                                                                             frozenset({"rollout"}))
    for version in range(1, 31):
        store.publish.remote("policy", version, {"w": version})
        answer = ray.get(store.latest.remote("policy", version - 1))
        assert answer[0] == version  # the quiet methods still answer as the role's own
        control.post_status.remote({"env_steps": version})
    assert ray.get(control.desired.remote(-1)) == (0, {"rollout": 1})
    assert ray.get(control.request.remote({"rollout": 2})) == {"rollout": 2}  # a long call: keeps its events

    class Role:  # a role with no high-frequency methods of its own (a learner's loop, a rollout worker)
        def run(self) -> int:
            return 1

    role = _remote_class(Role, 1, (2, 60.0)).options(num_cpus=0).remote()
    for _ in range(10):  # the driver's liveness probe, every few seconds for every actor
        ray.get(role.dynaray_incarnation.remote())
    assert ray.get(role.run.remote()) == 1

    counts = wait_for_events("request")
    counts = wait_for_events("run")
    assert counts.get("request") == 1 and counts.get("run") == 1
    assert not {"publish", "latest", "post_status", "desired", "dynaray_incarnation"} & set(counts), counts


@pytest.mark.ray
def test_task_events_all_keeps_every_method(local_ray, monkeypatch):
    ray = local_ray
    monkeypatch.setenv(TASK_EVENTS_ENV, "all")
    store = _remote_class(WeightsStore, 1, (2, 60.0)).options(num_cpus=0).remote()
    for version in range(1, 6):
        ray.get(store.publish.remote("world_model", version, {"w": version}))
    assert wait_for_events("publish", 5).get("publish", 0) == 5


@pytest.mark.ray
def test_an_actor_process_loads_neither_torch_nor_the_wiring_unless_its_role_does(local_ray):
    ray = local_ray
    control = _remote_class(Control, 2, (2, 60.0)).options(num_cpus=0).remote("run", {"rollout": 1},
                                                                             frozenset({"rollout"}))
    loaded = ray.get(control.__ray_call__.remote(
        lambda self: sorted(m for m in ("torch", "system.wiring", "learners.sac") if m in sys.modules)))
    assert loaded == []

    class TorchRole:  # loads torch in its constructor: the wrapper sets its threads after
        def __init__(self):
            import torch

            self.torch = torch

        def threads(self) -> int:
            return self.torch.get_num_threads()

    role = _remote_class(TorchRole, 2, (2, 60.0)).options(num_cpus=0).remote()
    assert ray.get(role.threads.remote()) == 2
