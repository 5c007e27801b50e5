import gymnasium as gym
import numpy as np
import pytest

from actors.envs import EnvConfig, EnvError, env_spec, make_env, probe_env


class DiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Discrete(2)


class UnboundedEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,))


def test_registered_env_spec():
    spec = probe_env(EnvConfig("InvertedPendulum-v5"))
    assert spec.obs_shape == (4,) and spec.action_shape == (1,)
    np.testing.assert_allclose(spec.action_high, [3.0])


def test_unknown_env_suggests_close_match():
    with pytest.raises(EnvError, match=r"InvertedPendulm-v5.*did you mean 'InvertedPendulum-v5'"):
        make_env(EnvConfig("InvertedPendulm-v5"))


def test_module_class_env_and_time_limit():
    env = make_env(EnvConfig("gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=3))
    env.reset(seed=0)
    truncated = [env.step(env.action_space.sample())[3] for _ in range(3)]
    assert truncated == [False, False, True]


def test_bad_module_path():
    with pytest.raises(EnvError, match="cannot import module 'no_such_module'"):
        make_env(EnvConfig("no_such_module:Env"))


@pytest.mark.parametrize("cls, message", [(DiscreteEnv, "bounded continuous Box"), (UnboundedEnv, "unbounded")])
def test_action_space_sac_cannot_handle(cls, message):
    with pytest.raises(EnvError, match=message):
        env_spec(cls())


def test_kwargs_the_env_does_not_take():
    with pytest.raises(EnvError, match=r"env.kwargs=\{'foo': 1\} do not fit 'InvertedPendulum-v5'"):
        make_env(EnvConfig("InvertedPendulum-v5", kwargs={"foo": 1}))
