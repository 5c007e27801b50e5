import dataclasses
import typing

import pytest
import yaml

from system.config import (
    ConfigError,
    SystemConfig,
    all_keys,
    available_presets,
    config_from_dict,
    load_config,
    parse_override,
    read_preset,
    to_dict,
)


def leaf_types(cls: type = SystemConfig, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> the type its field declares."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(leaf_types(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every key of a ``to_dict`` tree (mapping-valued keys are leaves)."""
    items = []
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in all_keys():
            items.extend(flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def test_default_preset_is_inverted_pendulum():
    config = load_config()
    assert config.env.id == "InvertedPendulum-v5"
    assert config.imagination_enabled
    assert {"default", "debug", "model_free"} <= set(available_presets())


def test_the_dataclasses_hold_every_default():
    """No second source: loading nothing, or the name `default`, gives exactly the dataclass defaults."""
    assert load_config([]) == SystemConfig() == load_config(["default"]) == load_config(["default", "default"])
    assert read_preset("default") == {}


def test_one_value_per_key():
    keys = [key for key, _ in flatten(to_dict(load_config([])))]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(all_keys())


@pytest.mark.parametrize("preset", sorted(set(available_presets()) - {"default"}))
def test_every_preset_is_an_overlay_of_known_keys(preset):
    known = set(all_keys())
    assert {key for key, _ in flatten(read_preset(preset))} <= known
    load_config([preset])


def test_the_default_run_is_the_tuned_inverted_pendulum_run():
    """`dynaray train` runs the settings measured best (the inverted_pendulum preset) with a 10,000-step budget and
    the env's termination function picked by `auto`."""
    default, tuned = dict(flatten(to_dict(load_config([])))), dict(flatten(to_dict(load_config(["inverted_pendulum"]))))
    differing = {key for key in default if default[key] != tuned[key]}
    assert differing == {"run.total_env_steps", "world_model.termination_fn"}
    assert default["run.total_env_steps"] == 10_000 and default["run.target_return"] == 950
    assert default["world_model.termination_fn"] == "auto"


FLOAT_KEYS = sorted(key for key, tp in leaf_types().items() if tp in (float, float | None))


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_nan_is_refused_for_every_float_key(key):
    with pytest.raises(ConfigError, match=rf"^{key}=nan: expected "):
        load_config([], [f"{key}=nan"])


@pytest.mark.parametrize("override, message", [
    ("policy.actor_lr=nan", "policy.actor_lr=nan: expected a finite number > 0"),
    ("run.target_return=nan", "run.target_return=nan: expected null or a finite number"),
    ("policy.updates_per_step=.inf", "policy.updates_per_step=inf: expected a finite number > 0"),
    ("ray.num_cpus=-2", "ray.num_cpus=-2: expected null or an integer >= 1"),
    ("ray.object_store_memory_mb=-100", "ray.object_store_memory_mb=-100: expected null or an integer >= 1"),
    ("rollout.resources={node: -1}", "rollout.resources={'node': -1.0}: expected a mapping of names to finite "
                                     "numbers >= 0"),
    ("rollout.max_restarts=-2", "rollout.max_restarts=-2: expected an integer >= -1 (-1: no limit)"),
    ("env.max_episode_steps=0", "env.max_episode_steps=0: expected null or an integer >= 1"),
    ("eval.num_cpus=-1", "eval.num_cpus=-1.0: expected a finite number >= 0"),
])
def test_field_constraints_name_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert str(info.value) == message


def test_inserts_that_no_shard_could_admit_are_refused():
    """A shard's rate limiter admits at most 2 * error_buffer_steps / num_shards rows per insert (100 / 5 = 40 with
    5 shards and the default error buffer): the gateway's 50-row inserts would all fail."""
    assert load_config([], ["replay.num_shards=5"]).gateway.insert_chunk_rows == 50  # gateway off: not checked
    with pytest.raises(ConfigError) as info:
        load_config([], ["replay.num_shards=5", "gateway.enabled=true"])
    assert str(info.value).startswith("gateway.insert_chunk_rows=50: expected <= 2 * replay.error_buffer_steps / "
                                      "replay.num_shards = 2 * 100 / 5 = 40 rows per insert")
    assert load_config([], ["replay.num_shards=5", "gateway.enabled=true", "gateway.insert_chunk_rows=40"])
    with pytest.raises(ConfigError, match=r"^rollout.chunk_length=25: expected chunk_length \* "
                                          r"rollout.envs_per_worker \(125 rows per chunk\) <= 2 \* "):
        load_config([], ["rollout.envs_per_worker=5"])


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
