from system.placement import describe, diagnose

NODES = [
    {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 4.0, "rollout_node": 4.0}},
    {"Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 8.0, "GPU": 1.0, "learner_gpu": 1.0}},
    {"Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 64.0, "learner_gpu": 8.0}},
]


def test_diagnose_names_roles_no_node_can_host_and_those_still_starting():
    message = diagnose({"policy-learner": {"CPU": 1, "learner_gpu": 2}, "rollout-0": {"CPU": 1, "rollout_node": 1}},
                       NODES, 30)
    assert message.startswith("2 role(s) not running after 30 s: policy-learner asks {CPU: 1, learner_gpu: 2}, "
                              "which no node offers; rollout-0 still starting")
    assert "10.0.0.2 {CPU: 8, GPU: 1, learner_gpu: 1}" in message and "10.0.0.3" not in message
    assert message.endswith("To fix: change the role's resources in config, or add a node that offers them.")


def test_diagnose_when_every_role_could_run():
    message = diagnose({"rollout-0": {"CPU": 1}}, NODES, 5)
    assert "rollout-0 still starting" in message and message.endswith("raise placement.timeout_s, or free resources.")


def test_describe_groups_roles_by_node():
    text = describe({"a": {"ip": "10.0.0.1", "node_id": "abcdef0123"}, "b": {"ip": "10.0.0.2", "node_id": "ffff0000aa"},
                     "c": {"ip": "10.0.0.1", "node_id": "abcdef0123"}})
    assert text.splitlines() == ["  node 10.0.0.1 (abcdef01): a, c", "  node 10.0.0.2 (ffff0000): b"]


def test_placement_config_errors_name_the_key():
    import pytest

    from system.config import ConfigError, load_config

    config = load_config(["debug"], ["placement.policy.num_gpus=1", "placement.world_model.resources={learner_gpu: 1}"])
    assert config.placement.policy.ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {},
                                                     "max_restarts": 10}
    assert config.placement.world_model.ray_options()["resources"] == {"learner_gpu": 1}
    with pytest.raises(ConfigError, match=r"placement.replay_strategy='PACK': expected 'SPREAD' or 'DEFAULT'"):
        load_config([], ["placement.replay_strategy=PACK"])
    with pytest.raises(ConfigError, match=r"placement.policy.num_gpus=-1.0: expected a finite number >= 0"):
        load_config([], ["placement.policy.num_gpus=-1"])


def test_unreachable_address_fails_fast_with_a_clear_error(tmp_path, capsys):
    import time

    from system.cli import main

    start = time.monotonic()
    code = main(["train", "debug", f"run.runs_dir={tmp_path}", "--address", "127.0.0.1:1"])
    assert code == 1 and time.monotonic() - start < 60
    assert "nothing answers at 127.0.0.1:1 within 10 s" in capsys.readouterr().err


class _FakeActorClass:
    """Stands in for a Ray actor class of role ``cls``: makes a handle that is never called, and records the
    arguments each actor of ``cls`` was made with in ``made``."""

    def __init__(self, cls: type, made: list):
        self.cls, self.made = cls, made

    def options(self, **options):
        return self

    def remote(self, *args, **kwargs):
        self.made.append((self.cls, args))
        return object()


def test_planned_demands_are_what_the_wiring_asks_ray_for(monkeypatch):
    from actors.envs import probe_env
    from system import wiring
    from system.config import load_config
    from system.placement import planned_demands

    made = []
    monkeypatch.setattr(wiring, "_remote_class", lambda cls, threads, heap: _FakeActorClass(cls, made))
    config = load_config(["debug"], ["imagination.device=auto",
        "rollout.num_workers=3", "rollout.resources={rollout_node: 1}", "rollout.num_cpus=0.25",
        "placement.policy.num_gpus=0.5", "placement.world_model.num_gpus=0.5", "placement.world_model.memory_mb=64",
        "placement.replay_resources={replay_node: 1}", "replay.num_shards=2", "imagination.num_gpus=0.25",
        "imagination.resources={learner_gpu: 0.25}", "gateway.enabled=true", "eval.num_workers=2"])
    system = wiring.build_system(config, probe_env(config.env))
    assert system.demands == planned_demands(config)
    assert system.demands["imagination-0"] == {"CPU": 0.5, "GPU": 0.25, "learner_gpu": 0.25}
    assert system.demands["world-model-learner"] == {"CPU": 1.0, "GPU": 0.5, "memory": 64 * 1024 * 1024}
    assert {"rollout-2", "replay-shard-1", "evaluator-1", "gateway", "control", "weights-store"} <= set(system.demands)

    # The imagination worker's policy and model get the device name: each resolves it in the worker's process,
    # where the worker's GPUs are visible.
    args = next(args for cls, args in made if cls.__name__ == "ImaginationWorker")
    assert args[4].keywords["device"] == "auto" and args[5].keywords["device"] == "auto"


def test_imagination_device_and_resources_are_checked():
    import pytest

    from system.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"imagination.device='gpu0': expected 'auto', 'cpu', 'cuda' or"):
        load_config([], ["imagination.device=gpu0"])
    with pytest.raises(ConfigError, match=r"imagination.num_gpus=-0.5: expected a finite number >= 0"):
        load_config([], ["imagination.num_gpus=-0.5"])
    with pytest.raises(ConfigError, match=r"imagination.resources=\{'learner_gpu': -1.0\}: expected a mapping"):
        load_config([], ["imagination.resources={learner_gpu: -1}"])


def test_a_cluster_head_with_another_ray_is_named_in_one_line():
    import platform

    import pytest
    import ray
    from ray._private.utils import check_version_info

    from system.runtime import version_mismatch_line

    with pytest.raises(RuntimeError) as raised:  # what ray.init(address) raises when the head's Ray differs
        check_version_info({"ray_version": "2.59.0", "python_version": platform.python_version()}, "node 10.0.0.1")
    line = version_mismatch_line(raised.value, "10.0.0.9:6379")
    assert line == (f"the cluster at 10.0.0.9:6379 runs Ray 2.59.0 on Python {platform.python_version()}, this "
                    f"process Ray {ray.__version__} on Python {platform.python_version()}: install the cluster's "
                    f"versions here (constraints.txt pins the tested ones)")
    assert version_mismatch_line(RuntimeError("Failed to connect to GCS"), "10.0.0.9:6379") is None


def test_nodes_with_another_ray_are_named_in_one_line():
    from system.runtime import differing_versions

    assert differing_versions("2.60.0", {"10.0.0.1 (aaaa0000)": "2.60.0", "10.0.0.2 (bbbb0000)": "2.60.0"}) is None
    line = differing_versions("2.60.0", {"10.0.0.1 (aaaa0000)": "2.60.0", "10.0.0.3 (cccc0000)": "2.59.0",
                                         "10.0.0.2 (bbbb0000)": "2.61.0"})
    assert line == ("Ray versions differ: this process Ray 2.60.0, 10.0.0.2 (bbbb0000) Ray 2.61.0, 10.0.0.3 "
                    "(cccc0000) Ray 2.59.0: install the same versions on every node (pip install -c "
                    "constraints.txt; deploy/README.md)")
    assert "\n" not in line
