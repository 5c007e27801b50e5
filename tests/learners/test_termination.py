"""Known termination functions agree with the gymnasium MuJoCo envs on random-action transitions."""

import gymnasium as gym
import numpy as np
import pytest

from learners import termination


def random_transitions(env_id: str, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """(obs, action, next_obs, terminated) of ``steps`` random-action steps, resetting after each episode."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"obs": [], "action": [], "next_obs": [], "terminated": []}
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        next_obs, _, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, next_obs, terminated)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return {key: np.array(value) for key, value in rows.items()}


@pytest.mark.parametrize("env_id, function", [
    ("InvertedPendulum-v5", termination.inverted_pendulum),
    ("Hopper-v5", termination.hopper),
    ("Walker2d-v5", termination.walker2d),
])
def test_termination_function_matches_the_env(env_id, function):
    rows = random_transitions(env_id, 600)
    predicted = function(rows["obs"], rows["action"], rows["next_obs"])
    assert predicted.shape == (600,) and predicted.dtype == bool
    assert rows["terminated"].sum() >= 5  # random actions end episodes often on these tasks
    np.testing.assert_array_equal(predicted, rows["terminated"])


@pytest.mark.parametrize("env_id", sorted(termination.KNOWN))
def test_every_known_function_matches_its_env(env_id):
    rows = random_transitions(env_id, 600)
    function = termination.load_termination_fn(termination.KNOWN[env_id])
    np.testing.assert_array_equal(function(rows["obs"], rows["action"], rows["next_obs"]), rows["terminated"])


def test_auto_resolves_by_env_id_and_only_for_default_env_arguments():
    resolve = termination.resolve_termination_fn
    assert resolve("auto", "Hopper-v5") == "learners.termination:hopper"
    assert resolve("auto", "Hopper-v5", {"terminate_when_unhealthy": False}) is None  # learned head
    assert resolve("auto", "Ant-v5") is None and resolve("auto", "tests.actors.flaky_env:FlakyEnv") is None
    assert resolve(None, "Hopper-v5") is None
    assert resolve("learners.termination:never", "Hopper-v5") == "learners.termination:never"


def test_never_and_non_finite_observations():
    obs = np.zeros((3, 4), dtype=np.float32)
    assert not termination.never(obs, obs[:, :1], obs).any()
    bad = obs.copy()
    bad[1, 3] = np.nan
    assert termination.inverted_pendulum(obs, obs[:, :1], bad).tolist() == [False, True, False]


def test_load_termination_fn_names_the_key():
    assert termination.load_termination_fn("learners.termination:hopper") is termination.hopper
    with pytest.raises(ValueError, match=r"my.key='hopper': expected 'module:function'"):
        termination.load_termination_fn("hopper", "my.key")
