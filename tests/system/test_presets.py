"""Per-task presets: each overlays the defaults, names its env, and its known termination function fits it."""

import gymnasium as gym
import numpy as np
import pytest

from learners.termination import load_termination_fn, resolve_termination_fn
from system.config import available_presets, load_config

TASKS = {
    "inverted_pendulum": "InvertedPendulum-v5",
    "pendulum": "Pendulum-v1",
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
}


def test_every_task_has_a_preset():
    assert set(TASKS) <= set(available_presets())


@pytest.mark.parametrize("preset, env_id", sorted(TASKS.items()))
def test_task_preset_names_its_env_and_a_matching_termination_function(preset, env_id):
    config = load_config([preset])
    assert config.env.id == env_id
    assert config.world_model.enabled and config.imagination.num_workers >= 1
    terminated = load_termination_fn(config.world_model.termination_fn)

    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        action = env.action_space.sample()
        next_obs, _, term, trunc, _ = env.step(action)
        predicted = terminated(obs[None].astype(np.float32), action[None].astype(np.float32),
                               next_obs[None].astype(np.float32))
        assert predicted.shape == (1,) and bool(predicted[0]) == term, (preset, obs, next_obs)
        if term or trunc:
            obs, _ = env.reset()
        else:
            obs = next_obs
    env.close()


@pytest.mark.parametrize("preset", sorted(TASKS))
def test_task_presets_compose_with_debug(preset):
    config = load_config([preset, "debug"])
    assert config.run.total_env_steps == 2000 and config.env.id == TASKS[preset]


@pytest.mark.parametrize("preset, env_id", sorted(TASKS.items()))
def test_auto_termination_picks_each_task_presets_function(preset, env_id):
    assert resolve_termination_fn("auto", env_id) == load_config([preset]).world_model.termination_fn
    assert load_config([], [f"env.id={env_id}"]).world_model.termination_fn == "auto"
