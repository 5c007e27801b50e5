"""Optimistic planning: scoring fixed action sequences on a toy model (the better one wins, the bonus flips the
choice toward the uncertain one, termination and non-finite predictions), shape errors, config validation, and a
rollout worker acting through the planner on a real env."""

import math

import numpy as np
import pytest
import torch

from actors.config import PlannerConfig, RolloutConfig
from actors.envs import EnvConfig
from actors.planner import Planner, best_first_actions, score_sequences
from actors.rollout import RANDOM_POLICY_VERSION, RolloutWorker
from learners import WorldModel, WorldModelConfig
from learners.sac import Policy
from system.config import ConfigError, load_config
from tests.conftest import StaticWeights


class ToyModel:
    """Deterministic 1-D world: next_obs = obs + action, reward = action; the model has only seen positive actions,
    so its disagreement is ``spread`` for a negative action and 0 otherwise.

    Terminates a row whose next observation reaches ``threshold``; predicts NaN for actions above ``nan_above``.
    """

    obs_dim, act_dim = 1, 1

    def __init__(self, spread=0.0, threshold=math.inf, nan_above=math.inf):
        self.spread, self.threshold, self.nan_above = spread, threshold, nan_above
        self.calls = 0

    def step(self, obs, action):
        self.calls += 1
        next_obs = obs + action
        reward = action[:, 0].clone()
        next_obs[action[:, 0] > self.nan_above] = float("nan")
        return next_obs, reward, next_obs[:, 0] >= self.threshold, self.spread * (action[:, 0] < 0).float()


def sequences(*per_candidate):
    """(1, K, H, 1) actions from one list of H actions per candidate."""
    return torch.tensor(per_candidate, dtype=torch.float32).reshape(1, len(per_candidate), -1, 1)


def test_the_better_of_two_sequences_is_chosen():
    actions = sequences([0.1, 0.1, 0.1], [0.5, 0.5, 0.5])
    scores = score_sequences(ToyModel(), torch.zeros(1, 1), actions, gamma=1.0)
    torch.testing.assert_close(scores, torch.tensor([[0.3, 1.5]]))
    torch.testing.assert_close(best_first_actions(scores, actions[:, :, 0]), torch.tensor([[0.5]]))


def test_scores_are_discounted_per_step():
    scores = score_sequences(ToyModel(), torch.zeros(1, 1), sequences([1.0, 1.0, 1.0]), gamma=0.5)
    torch.testing.assert_close(scores, torch.tensor([[1.0 + 0.5 + 0.25]]))


def test_the_uncertainty_bonus_flips_the_choice_to_the_uncertain_sequence():
    # negative actions pay less reward but the model disagrees about them: -0.2 + 2 * 0.2 per step vs 0.1
    actions = sequences([0.1, 0.1], [-0.2, -0.2])
    model = ToyModel(spread=0.2)
    plain = score_sequences(model, torch.zeros(1, 1), actions, gamma=1.0, bonus_scale=0.0)
    optimistic = score_sequences(model, torch.zeros(1, 1), actions, gamma=1.0, bonus_scale=2.0)
    assert best_first_actions(plain, actions[:, :, 0]).item() == pytest.approx(0.1)
    assert best_first_actions(optimistic, actions[:, :, 0]).item() == pytest.approx(-0.2)
    torch.testing.assert_close(plain, torch.tensor([[0.2, -0.4]]))
    torch.testing.assert_close(optimistic, torch.tensor([[0.2, 0.4]]))


def test_nothing_counts_after_predicted_termination():
    # candidate 1 earns 1.0 a step but terminates at its first step (obs 0 + 1 >= 1): only that step counts
    actions = sequences([0.4, 0.4, 0.4], [1.0, 1.0, 1.0])
    scores = score_sequences(ToyModel(threshold=1.0), torch.zeros(1, 1), actions, gamma=1.0)
    torch.testing.assert_close(scores, torch.tensor([[1.2, 1.0]]))


def test_a_nonfinite_prediction_rules_a_candidate_out_and_all_failed_fall_back_to_candidate_0():
    actions = sequences([0.1, 0.1], [0.5, 5.0])
    scores = score_sequences(ToyModel(nan_above=1.0), torch.zeros(1, 1), actions, gamma=1.0)
    assert scores[0, 0].item() == pytest.approx(0.2) and scores[0, 1].item() == -math.inf
    assert best_first_actions(scores, actions[:, :, 0]).item() == pytest.approx(0.1)
    failed = torch.full((2, 3), -math.inf)
    first = torch.arange(6, dtype=torch.float32).reshape(2, 3, 1)
    assert best_first_actions(failed, first)[:, 0].tolist() == [0.0, 3.0]


def test_each_observation_gets_its_own_best_candidate():
    # obs 0's candidates are (1, 1) and (0.3, 0.3); obs 1's (0.3, 0.3) and (0.7, 0.7): best are candidates 0 and 1
    actions = torch.tensor([[[1.0, 1.0], [0.3, 0.3]], [[0.3, 0.3], [0.7, 0.7]]]).unsqueeze(-1)  # (2, 2, 2, 1)
    scores = score_sequences(ToyModel(), torch.tensor([[0.0], [5.0]]), actions, gamma=1.0)
    torch.testing.assert_close(scores, torch.tensor([[2.0, 0.6], [0.6, 1.4]]))
    torch.testing.assert_close(best_first_actions(scores, actions[:, :, 0]), torch.tensor([[1.0], [0.7]]))


def test_shape_errors_name_expected_and_actual():
    model = ToyModel()
    with pytest.raises(ValueError, match=r"obs has shape \(2, 3\), expected \(N, 1\)"):
        score_sequences(model, torch.zeros(2, 3), torch.zeros(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"actions has shape \(3, 2, 4, 1\), expected \(2, K, H, 1\)"):
        score_sequences(model, torch.zeros(2, 1), torch.zeros(3, 2, 4, 1))
    with pytest.raises(ValueError, match=r"actions has shape \(2, 4, 1\), expected \(2, K, H, 1\)"):
        score_sequences(model, torch.zeros(2, 1), torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match=r"actions has shape \(2, 0, 4, 1\), expected .* K >= 1 and H >= 1"):
        score_sequences(model, torch.zeros(2, 1), torch.zeros(2, 0, 4, 1))
    with pytest.raises(ValueError, match=r"first_actions has shape \(2, 4, 1\), expected \(2, 3, A\)"):
        best_first_actions(torch.zeros(2, 3), torch.zeros(2, 4, 1))
    planner = Planner(PlannerConfig(enabled=True), ChoosyPolicy(), model)
    with pytest.raises(ValueError, match=r"obs has shape \(5,\), expected \(N, 1\)"):
        planner.plan(torch.zeros(5))


class ChoosyPolicy:
    """Proposes 0.1, 0.2, 0.3, ... in turn: row r of the first call gets 0.1 * (r % K + 1)."""

    obs_dim = 1

    def __init__(self, k=4):
        self.k = k

    def act_tensor(self, obs, deterministic=False):
        return (torch.arange(obs.shape[0]) % self.k + 1).float().unsqueeze(1) * 0.1


def test_planner_proposes_k_candidates_per_obs_in_one_batch_and_returns_the_best_first_action():
    model = ToyModel(threshold=10.0)
    planner = Planner(PlannerConfig(enabled=True, num_candidates=4, horizon=3, gamma=1.0), ChoosyPolicy(4), model)
    action = planner.act(np.zeros((2, 1), dtype=np.float32))
    assert action.shape == (2, 1) and action.dtype == np.float32
    np.testing.assert_allclose(action, [[0.4], [0.4]])
    assert model.calls == 3  # one model forward per horizon step for all N * K rows
    torch.testing.assert_close(planner.last_scores, torch.tensor([[0.3, 0.6, 0.9, 1.2]] * 2))


def test_planner_config_validation_names_key_value_and_expectation():
    assert PlannerConfig().enabled is False
    with pytest.raises(ConfigError, match=r"rollout.planner.num_candidates=0: expected an integer >= 1"):
        load_config([], ["rollout.planner.num_candidates=0"])
    with pytest.raises(ConfigError, match=r"rollout.planner.horizon=0: expected an integer >= 1"):
        load_config([], ["rollout.planner.horizon=0"])
    with pytest.raises(ConfigError, match=r"rollout.planner.bonus_scale=-1.0: expected a finite number >= 0"):
        load_config([], ["rollout.planner.bonus_scale=-1.0"])
    with pytest.raises(ConfigError, match=r"rollout.planner.gamma=0.0: expected a number in \(0, 1\]"):
        load_config([], ["rollout.planner.gamma=0.0"])


def test_system_config_planner_section_and_its_world_model_requirement():
    assert load_config().rollout.planner.enabled is False
    config = load_config(["debug"], ["rollout.planner.enabled=true", "rollout.planner.num_candidates=4"])
    assert config.rollout.planner == PlannerConfig(enabled=True, num_candidates=4)
    with pytest.raises(ConfigError, match=r"rollout.planner.enabled=True: expected world_model.enabled=true"):
        load_config(["debug", "model_free"], ["rollout.planner.enabled=true"])
    with pytest.raises(ConfigError, match=r"rollout.planner.horizon=0: expected an integer >= 1"):
        load_config([], ["rollout.planner.horizon=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'rollout.planner.horizn'; did you mean "
                                          r"'rollout.planner.horizon'\?"):
        load_config([], ["rollout.planner.horizn=3"])


ENV = EnvConfig("InvertedPendulum-v5", max_episode_steps=20)
WM_CONFIG = WorldModelConfig(ensemble_size=3, num_elites=2, hidden_sizes=(16, 16), device="cpu")


def planning_worker(replay, model_version=0, **planner):
    config = RolloutConfig(envs_per_worker=2, chunk_length=10, warmup_steps=10, exploration_noise=(0.1,),
                           planner=PlannerConfig(enabled=True, num_candidates=4, horizon=3, **planner))
    make_policy = lambda: Policy(4, 1, -3.0, 3.0, (16, 16), seed=1)  # noqa: E731
    make_model = lambda: WorldModel(4, 1, WM_CONFIG, seed=1)  # noqa: E731
    model_state = WorldModel(4, 1, WM_CONFIG, seed=2).dynamics.state_dict() | {"elites": torch.tensor([0, 2])}
    return RolloutWorker(ENV, config, replay, StaticWeights(make_policy().actor.state_dict(), version=5), make_policy,
                         index=0, seed=1, model_weights=StaticWeights(model_state, version=model_version),
                         make_model=make_model)


def test_rollout_worker_acts_through_the_planner_and_writes_well_formed_chunks(recording_replay):
    worker = planning_worker(recording_replay, bonus_scale=1.0)
    report = worker.run(60)
    assert report.env_steps == 60 and report.planned_steps == 50  # 10 warm-up steps, then the planner
    assert worker._model.elites == [0, 2]  # the polled world-model weights are loaded
    assert worker.planned_steps == 50 and worker._planner.last_scores.shape == (2, 4)
    worker.flush()
    rows = recording_replay.rows()
    assert len(rows["obs"]) == 60 and all(len(c["obs"]) == 20 for _, c, _ in recording_replay.chunks)
    assert rows["obs"].shape == (60, 4) and rows["action"].shape == (60, 1) and rows["action"].dtype == np.float32
    assert np.isfinite(rows["action"]).all() and (np.abs(rows["action"]) <= 3.0).all()
    assert set(rows["policy_version"].tolist()) == {RANDOM_POLICY_VERSION, 5}  # rows carry the policy's version
    assert (rows["policy_version"] == 5).sum() == 50
    assert np.all(np.diff(rows["seq"]) == 1)
    for episode in np.unique(rows["episode_id"]):
        steps = rows["step"][rows["episode_id"] == episode]
        assert steps.tolist() == list(range(len(steps)))


def test_rollout_worker_uses_the_policy_until_a_world_model_is_published(recording_replay):
    worker = planning_worker(recording_replay, model_version=-1)  # the store has no world model yet
    report = worker.run(40)
    assert report.planned_steps == 0 and worker._model_weights.version == -1
    assert (recording_replay.rows()["policy_version"] == 5).sum() == 30


def test_rollout_worker_with_the_planner_needs_a_world_model(recording_replay):
    config = RolloutConfig(planner=PlannerConfig(enabled=True))
    with pytest.raises(ValueError, match=r"rollout.planner.enabled=True: expected a RolloutWorker given "
                                         r"model_weights and make_model"):
        RolloutWorker(ENV, config, recording_replay, StaticWeights(), lambda: None)
