import pytest
import yaml

from system.config import (
    ConfigError,
    SystemConfig,
    available_presets,
    config_from_dict,
    load_config,
    parse_override,
    to_dict,
)


def test_default_preset_is_inverted_pendulum():
    config = load_config()
    assert config.env.id == "InvertedPendulum-v5"
    assert config.imagination_enabled
    assert {"default", "debug", "model_free"} <= set(available_presets())


def test_presets_merge_in_order_then_overrides():
    config = load_config(["debug", "model_free"], ["policy.batch_size=32", "seed=7", "policy.hidden_sizes=[8, 8]"])
    assert config.run.total_env_steps == 2000  # from debug
    assert not config.imagination_enabled  # from model_free
    assert config.policy.batch_size == 32 and config.seed == 7
    assert config.policy.hidden_sizes == (8, 8)
    assert config.world_model.hidden_sizes == (64, 64)  # debug's, untouched by later layers


def test_round_trip_through_yaml():
    config = load_config(["debug"], ["run.target_return=null"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(config))))
    assert again == config


def test_numbers_written_loosely_are_coerced():
    config = load_config([], ["replay.real_capacity=1e6", "policy.actor_lr=1e-3", "run.total_env_steps=2000.0"])
    assert config.replay.real_capacity == 1_000_000 and isinstance(config.replay.real_capacity, int)
    assert config.policy.actor_lr == 1e-3
    assert config.run.total_env_steps == 2000


@pytest.mark.parametrize(
    "override, message",
    [
        ("polcy.batch_size=3", "unknown config key 'polcy'; did you mean 'policy'?"),
        ("policy.batch_sise=3", "unknown config key 'policy.batch_sise'; did you mean 'policy.batch_size'?"),
        ("policy.batch_size=abc", "policy.batch_size='abc': expected int"),
        ("policy.batch_size=0", "policy.batch_size"),
        ("world_model.enabled=maybe", "world_model.enabled='maybe': expected bool"),
        ("policy.gamma=1.5", "policy.gamma=1.5"),
        ("rollout.vector_mode=threads", "expected 'sync' or 'async'"),
        ("policy.hidden_sizes=64", "expected a list of int"),
        ("batch_size", "expected key=value"),
    ],
)
def test_bad_overrides_name_key_and_expectation(override, message):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert message in str(info.value)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'debgu': did you mean 'debug'\?.*default"):
        load_config(["debgu"])


def test_preset_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("policy:\n  batch_size: 17\n")
    assert load_config([str(path)]).policy.batch_size == 17
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config([str(path)])


def test_parse_override_builds_nested_tree():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override("name=my run") == {"name": "my run"}


def test_sections_are_frozen():
    config = SystemConfig()
    with pytest.raises(Exception):
        config.policy.batch_size = 3  # type: ignore[misc]
