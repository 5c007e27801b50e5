"""Dataset collection (actors/collector.py): exact step budgets, episodes as the env ended them, behaviour
policies with and without noise."""

from __future__ import annotations

import numpy as np
import pytest

from actors.collector import collect
from actors.envs import EnvConfig

PENDULUM = EnvConfig(id="Pendulum-v1", max_episode_steps=50)


class ConstantPolicy:
    def __init__(self, value):
        self.value = value
        self.calls = []

    def act(self, obs, deterministic=False):
        self.calls.append(deterministic)
        return np.full(1, self.value, dtype=np.float32)


def test_random_collection_has_the_budget_and_consistent_episodes():
    collected = collect(PENDULUM, 120, seed=3)
    rows = collected.transitions()
    assert collected.steps == 120 and len(rows["obs"]) == 120
    assert [len(e["actions"]) for e in collected.episodes] == [50, 50, 20]
    assert len(collected.returns) == 2  # the third episode was cut by the budget
    assert rows["truncated"][[49, 99, 119]].all() and rows["truncated"].sum() == 3 and not rows["terminated"].any()
    within = rows["episode"][1:] == rows["episode"][:-1]
    np.testing.assert_array_equal(rows["obs"][1:][within], rows["next_obs"][:-1][within])
    assert collected.returns[0] == pytest.approx(float(collected.episodes[0]["rewards"].sum()), rel=1e-5)
    again = collect(PENDULUM, 120, seed=3).transitions()
    np.testing.assert_array_equal(again["action"], rows["action"])


def test_policy_collection_with_and_without_noise():
    policy = ConstantPolicy(0.5)
    plain = collect(PENDULUM, 60, policy=policy).transitions()
    assert (plain["action"] == 0.5).all() and all(policy.calls)
    noisy = collect(PENDULUM, 2000, policy=ConstantPolicy(0.5), noise=0.1).transitions()["action"]
    assert np.std(noisy) == pytest.approx(0.1 * 2.0, rel=0.1)  # Pendulum's half-range is 2
    clipped = collect(PENDULUM, 200, policy=ConstantPolicy(1.9), noise=1.0).transitions()["action"]
    assert clipped.max() <= 2.0 and clipped.min() >= -2.0
    stochastic = ConstantPolicy(0.0)
    collect(PENDULUM, 10, policy=stochastic, stochastic=True)
    assert not any(stochastic.calls)
    with pytest.raises(ValueError, match="steps=0: expected >= 1"):
        collect(PENDULUM, 0)
