"""Dynamics ensemble: fits known dynamics, ranks members, splits holdout rows by hash, imagines from elites."""

import dataclasses

import numpy as np
import pytest
import torch

from learners import WorldModel, WorldModelConfig, WorldModelLearner
from learners.world_model import EnsembleDynamics, RunningNorm, holdout_mask

O, A, E = 4, 2, 4
CONFIG = WorldModelConfig(
    ensemble_size=E, num_elites=3, hidden_sizes=(64, 64), lr=3e-3, validate_every=100, device="cpu"
)
_RNG = np.random.default_rng(0)
DRIFT = _RNG.normal(size=(O, O)).astype(np.float32) * 0.1
CONTROL = _RNG.normal(size=(A, O)).astype(np.float32)


class LinearTask:
    """next_obs = obs + obs @ DRIFT + action @ CONTROL, reward = sum(obs), terminated = obs[0] > 0.5."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.next_episode = 0

    def batch(self, rows=256):
        obs = self.rng.normal(size=(rows, O)).astype(np.float32)
        action = self.rng.uniform(-1, 1, size=(rows, A)).astype(np.float32)
        episode = np.arange(self.next_episode, self.next_episode + rows, dtype=np.int64)
        self.next_episode += rows
        return {
            "obs": obs,
            "action": action,
            "reward": obs.sum(1),
            "next_obs": obs + obs @ DRIFT + action @ CONTROL,
            "terminated": obs[:, 0] > 0.5,
            "truncated": np.zeros(rows, dtype=bool),
            "episode_id": episode,
            "step": np.zeros(rows, dtype=np.int64),
        }


@pytest.fixture(scope="module")
def trained():
    """A learner trained for 300 updates, with its validation MSE after the first update."""
    learner = WorldModelLearner(O, A, CONFIG, seed=0)
    task = LinearTask()
    learner.update(task.batch())
    initial = learner.validate()
    history = [learner.update(task.batch()) for _ in range(299)]
    return learner, task, initial, history


def test_update_metrics_and_validation_schedule(trained):
    learner, _, _, history = trained
    assert set(history[0]) == {"loss", "nll", "termination_loss", "grad_norm"}
    validated = [i + 2 for i, m in enumerate(history) if "val_mse" in m]
    assert validated == [100, 200, 300]
    assert set(history[98]) == {"loss", "nll", "termination_loss", "grad_norm", "val_mse", "val_nll",
                                "val_termination_acc"}
    assert learner.num_updates == 300 and learner.member_val_mse.shape == (E,)


def test_training_reduces_validation_mse(trained):
    learner, _, initial, history = trained
    assert history[-1]["val_mse"] < 0.02 * initial["val_mse"]
    assert history[-1]["val_nll"] < initial["val_nll"] - 1.0


def test_termination_head_learns_threshold_rule(trained):
    learner, task, _, history = trained
    assert history[-1]["val_termination_acc"] > 0.95
    model = WorldModel(O, A, CONFIG)
    model.load_state(learner.model_state())
    batch = task.batch(2000)
    _, _, terminated = model.step(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"]))
    assert terminated.dtype == torch.bool
    assert (terminated.numpy() == batch["terminated"]).mean() > 0.95


def test_world_model_matches_true_dynamics(trained):
    learner, task, _, _ = trained
    model = WorldModel(O, A, CONFIG)
    model.load_state(learner.model_state())
    batch = task.batch(500)
    next_obs, reward, _ = model.step(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"]))
    assert next_obs.shape == (500, O) and reward.shape == (500,)
    assert np.abs(next_obs.numpy() - batch["next_obs"]).mean() < 0.1
    assert np.abs(reward.numpy() - batch["reward"]).mean() < 0.2


def test_corrupted_member_is_dropped_from_elites(trained):
    learner, _, _, _ = trained
    snapshot = learner.state_dict()
    learner.validate()
    best = int(np.argmin(learner.member_val_mse))
    assert best in learner.elites
    with torch.no_grad():
        for weight in learner.dynamics.net.linear_weights():
            weight[best] += 3.0 * torch.randn_like(weight[best])
    learner.validate()
    assert best not in learner.elites and len(learner.elites) == CONFIG.num_elites
    assert learner.member_val_mse[best] > 10 * np.median(learner.member_val_mse)
    learner.load_state_dict(snapshot)
    learner.validate()


def test_holdout_split_is_deterministic_and_near_ratio():
    episode, step = np.meshgrid(np.arange(1000), np.arange(100), indexing="ij")
    episode, step = episode.ravel(), step.ravel()
    mask = holdout_mask(episode, step, 0.1)
    assert abs(mask.mean() - 0.1) < 0.005
    subset = np.random.default_rng(0).permutation(mask.size)[:5000]
    np.testing.assert_array_equal(holdout_mask(episode[subset], step[subset], 0.1), mask[subset])
    assert not holdout_mask(episode, step, 0.0).any()


def test_holdout_rows_go_to_validation_only():
    learner = WorldModelLearner(O, A, dataclasses.replace(CONFIG, validation_size=40))
    task = LinearTask()
    batch = task.batch(256)
    held = holdout_mask(batch["episode_id"], batch["step"], CONFIG.holdout_ratio)
    learner.update(batch)
    assert learner.validation.size == held.sum()
    assert learner.dynamics.input_norm.count == (~held).sum()
    for _ in range(3):
        learner.update(task.batch(256))
    assert learner.validation.size == 40


def test_step_samples_only_from_elites():
    learner = WorldModelLearner(O, A, CONFIG, seed=3)
    learner.update(LinearTask().batch())
    state = learner.model_state()
    state["max_logvar"] = torch.full_like(state["max_logvar"], -30.0)
    state["min_logvar"] = torch.full_like(state["min_logvar"], -40.0)
    state["elites"] = torch.tensor([0, 2])
    model = WorldModel(O, A, CONFIG, seed=1)
    model.load_state(state)
    assert model.elites == [0, 2]
    batch = LinearTask(seed=1).batch(400)
    obs, action = torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"])
    prediction = model.predict(obs, action)
    assert prediction["mean"].shape == (E, 400, O + 1) and prediction["var"].shape == (E, 400, O + 1)
    assert prediction["termination_prob"].shape == (E, 400)
    next_obs, reward, _ = model.step(obs, action)
    sample = torch.cat([next_obs, reward[:, None]], dim=1)
    distance = (prediction["mean"] - sample).abs().amax(dim=2)
    closest = distance.argmin(dim=0)
    assert distance.min(dim=0).values.max() < 1e-3
    assert set(closest.tolist()) == {0, 2}
    assert 0.35 < (closest == 0).float().mean() < 0.65


def test_wrong_shapes_are_reported():
    model = WorldModel(O, A, CONFIG)
    with pytest.raises(ValueError, match=r"obs has shape \(32, 5\), expected \(N, 4\)"):
        model.step(torch.zeros(32, 5), torch.zeros(32, A))
    with pytest.raises(ValueError, match=r"action has shape \(31, 2\), expected \(32, 2\)"):
        model.predict(torch.zeros(32, O), torch.zeros(31, A))
    learner = WorldModelLearner(O, A, CONFIG)
    batch = LinearTask().batch(8)
    batch["next_obs"] = batch["next_obs"][:, :3]
    with pytest.raises(ValueError, match=r"batch\['next_obs'\] has shape \(8, 3\), expected \(N, 4\)"):
        learner.update(batch)
    with pytest.raises(RuntimeError, match="validation buffer is empty"):
        learner.validate()


def test_nonfinite_batch_is_skipped_without_touching_normalisers():
    learner = WorldModelLearner(O, A, CONFIG)
    batch = LinearTask().batch(64)
    batch["obs"][3, 1] = np.nan
    for streak in (1, 2):
        assert learner.update(batch) == {"skipped": 1.0}
        assert learner.nonfinite_streak == streak
    assert learner.dynamics.input_norm.count == 0 and learner.num_updates == 0


def test_state_round_trip_with_weights_only(trained, tmp_path):
    learner, task, _, _ = trained
    torch.save(learner.state_dict(), tmp_path / "learner.pt")
    torch.save(learner.model_state(), tmp_path / "model.pt")
    restored = WorldModelLearner(O, A, CONFIG, seed=9)
    restored.load_state_dict(torch.load(tmp_path / "learner.pt", weights_only=True))
    assert restored.elites == learner.elites and restored.num_updates == learner.num_updates
    np.testing.assert_array_equal(restored.member_val_mse, learner.member_val_mse)
    for key, value in learner.model_state().items():
        torch.testing.assert_close(restored.model_state()[key], value)
    batch = task.batch()
    assert restored.update(batch) == learner.update(batch)
    model = WorldModel(O, A, CONFIG, seed=4)
    model.load_state(torch.load(tmp_path / "model.pt", weights_only=True))
    assert model.elites == learner.elites


def test_dynamics_forward_shapes_and_logvar_bounds():
    dynamics = EnsembleDynamics(O, A, E, (16,))
    mean, logvar, logit = dynamics(torch.randn(10, O), torch.randn(10, A))
    assert mean.shape == logvar.shape == (E, 10, O + 1) and logit.shape == (E, 10)
    assert (logvar <= dynamics.max_logvar).all() and (logvar >= dynamics.min_logvar).all()
    per_member = dynamics(torch.randn(E, 10, O), torch.randn(E, 10, A))
    assert per_member[0].shape == (E, 10, O + 1)


def test_running_norm_matches_full_data_statistics():
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.0]) + 2.0
    norm = RunningNorm(3)
    for chunk in data.split(137):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0))
    expected_std = data.std(0, unbiased=False)
    torch.testing.assert_close(norm.std[:2], expected_std[:2])
    assert norm.std[2] == 1.0
    torch.testing.assert_close(norm.denormalize(norm.normalize(data)), data)


@pytest.mark.parametrize("field, value, message", [
    ("num_elites", 8, r"world_model.num_elites=8: expected 1 <= num_elites <= ensemble_size=7"),
    ("holdout_ratio", 1.0, r"world_model.holdout_ratio=1.0: expected 0 <= holdout_ratio < 1"),
    ("lr", -1.0, r"world_model.lr=-1.0"),
    ("validate_every", 0, r"world_model.validate_every=0"),
])
def test_world_model_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        WorldModelConfig(**{field: value})
