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
    assert config.placement.policy.ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {}}
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
