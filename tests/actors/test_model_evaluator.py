"""ModelEvaluator: returns estimated in a model, the members' interval, truncation, the penalty, common random
numbers; with a known model (exact dynamics, so the true order of the policies is known) and with the real
WorldModel and SAC policy."""

import math

import numpy as np
import pytest
import torch

from actors.config import ModelEvalConfig
from actors.model_evaluator import ModelEvaluator
from learners.config import WorldModelConfig
from learners.sac import Policy
from learners.world_model import ModelStep, WorldModel


class LineModel:
    """x' = x + a (+ noise); reward 1 - |x'|; terminated beyond |x'| > 4; member k adds k * ``member_bias`` to
    every reward; disagreement |a| (large steps are far from the data)."""

    obs_dim = 1

    def __init__(self, members: int = 3, member_bias: float = 0.0, noise: float = 0.0):
        self.elites = list(range(members))
        self.member_bias, self.noise = member_bias, noise
        self.generator = torch.Generator()

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def step(self, obs, action, members=None):
        members = torch.zeros(obs.shape[0], dtype=torch.int64) if members is None else members
        assert members.shape == (obs.shape[0],)
        noise = self.noise * torch.randn(obs.shape, generator=self.generator)
        next_obs = obs + action + noise
        reward = 1.0 - next_obs.abs().squeeze(1) + self.member_bias * members.float()
        return ModelStep(next_obs, reward, next_obs.abs().squeeze(1) > 4, action.abs().squeeze(1))


class GainPolicy:
    """a = -gain * x + push (state {"gain": g, "push": p})."""

    def load_state(self, state):
        self.gain, self.push = state["gain"], state.get("push", 0.0)

    def act_tensor(self, obs, deterministic=False):
        assert deterministic
        return -self.gain * obs + self.push


def evaluator(model=None, config=ModelEvalConfig(horizon=10), starts=None, **kwargs):
    starts = np.linspace(-2, 2, 9, dtype=np.float32)[:, None] if starts is None else starts
    return ModelEvaluator(model or LineModel(), GainPolicy, starts, config, **kwargs)


def test_the_estimate_ranks_policies_in_their_true_order():
    evaluation = evaluator(model=LineModel(noise=0.1))
    gains = [1.0, 0.8, 0.5, 0.2, 0.0]  # 1.0 reaches x = 0 at once: the higher the gain, the higher the return
    results = [evaluation.evaluate({"gain": g}) for g in gains]
    returns = [r.return_mean for r in results]
    assert returns == sorted(returns, reverse=True), returns
    # exact dynamics without noise: gain 1 earns 1 per step from the first, for the horizon
    exact = evaluator().evaluate({"gain": 1.0})
    assert exact.return_mean == pytest.approx(10.0) and exact.length_mean == 10 and exact.transitions == 9 * 3 * 10


def test_the_interval_spans_the_members_and_the_same_noise_gives_the_same_estimate():
    result = evaluator(model=LineModel(members=3, member_bias=0.5)).evaluate({"gain": 0.5})
    assert len(result.member_returns) == 3
    assert result.return_low == min(result.member_returns) < result.return_high == max(result.member_returns)
    assert result.return_mean == pytest.approx(np.mean(result.member_returns))
    # member k earns 0.5 k more per step than member 0 over the same rollouts
    assert result.member_returns[2] - result.member_returns[0] == pytest.approx(2 * 0.5 * result.length_mean)
    noisy = evaluator(model=LineModel(members=3, noise=0.2))
    first, again = noisy.evaluate({"gain": 0.5}), noisy.evaluate({"gain": 0.5})
    assert again.member_returns == first.member_returns  # common random numbers across evaluations


def test_untrusted_transitions_stop_rollouts_and_the_penalty_lowers_the_score():
    # push 3 from x = 0: disagreement 3 at the first step, above the threshold: nothing is written
    starts = np.zeros((4, 1), np.float32)
    stopped = evaluator(config=ModelEvalConfig(horizon=5, max_disagreement=1.0), starts=starts)
    result = stopped.evaluate({"gain": 0.0, "push": 3.0})
    assert result.untrusted_fraction == 1.0 and result.return_mean == 0.0 and result.transitions == 0
    # a penalty scales the summed disagreement: score = return - penalty * sum |a|
    penalized = evaluator(config=ModelEvalConfig(horizon=3, penalty_scale=2.0), starts=starts)
    result = penalized.evaluate({"gain": 0.0, "push": 1.0})  # x = 1, 2, 3: rewards 0, -1, -2; |a| = 1 per step
    assert result.return_mean == pytest.approx(-3.0) and result.score == pytest.approx(-3.0 - 2.0 * 3)
    assert result.untrusted_fraction == 0.0 and result.terminated_fraction == 0.0


def test_termination_ends_a_rollout_and_ood_is_relative_to_the_data():
    starts = np.full((2, 1), 3.5, np.float32)
    reference = (np.zeros((10, 1), np.float32), np.full((10, 1), 0.5, np.float32))  # the data's |a| = 0.5
    evaluation = evaluator(config=ModelEvalConfig(horizon=10), starts=starts, reference=reference)
    result = evaluation.evaluate({"gain": 0.0, "push": 1.0})  # 3.5 -> 4.5: terminated at the first step
    assert result.terminated_fraction == 1.0 and result.length_mean == 1.0
    assert result.return_mean == pytest.approx(1.0 - 4.5)
    assert result.ood == pytest.approx(1.0 / 0.5)


def test_bad_start_states_are_named():
    with pytest.raises(ValueError, match=r"start_states has shape \(3, 2\), expected \(N >= 1, 1\)"):
        evaluator(starts=np.zeros((3, 2), np.float32))


def test_with_the_world_model_and_the_sac_policy():
    obs_dim, act_dim = 4, 2
    config = WorldModelConfig(ensemble_size=4, num_elites=3, hidden_sizes=(16, 16))
    model = WorldModel(obs_dim, act_dim, config, seed=0)

    def make_policy():
        return Policy(obs_dim, act_dim, -np.ones(act_dim), np.ones(act_dim), (8,), seed=1)

    states = np.random.default_rng(0).normal(size=(50, obs_dim)).astype(np.float32)
    evaluation = ModelEvaluator(model, make_policy, states, ModelEvalConfig(starts=16, horizon=6), seed=3)
    state = make_policy().actor.state_dict()
    first, second = evaluation.evaluate(state), evaluation.evaluate(state)
    assert len(first.member_returns) == 3 and first.member_returns == second.member_returns
    assert math.isfinite(first.score) and 16 * 3 <= first.transitions <= 16 * 3 * 6
    # per-row members: row n follows elite members[n]; a wrong index is named
    with pytest.raises(ValueError, match=r"members in \[0, 3\]: expected indices into the 3 elites"):
        model.step(torch.zeros(2, obs_dim), torch.zeros(2, act_dim), torch.tensor([0, 3]))
