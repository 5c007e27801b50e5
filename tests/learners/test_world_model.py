"""Dynamics ensemble: fits known dynamics, ranks members, splits holdout rows by hash, imagines from elites,
reports calibrated uncertainty, stops early on the holdout loss, and uses a known termination function."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from learners import WorldModel, WorldModelConfig, WorldModelLearner
from learners.termination import inverted_pendulum
from learners.world_model import (
    INTERVAL_LEVELS, EnsembleDynamics, RunningNorm, average_ranks, calibration_table, disagreement,
    expected_calibration_error, holdout_mask, interval_coverage, mixture_pit, spearman,
)
from system.config import ConfigError, config_from_dict

O, A, E = 4, 2, 4
CONFIG = WorldModelConfig(
    ensemble_size=E, num_elites=3, hidden_sizes=(64, 64), lr=3e-3, validate_every=100, device="cpu",
    precision="fp32",  # the maths checks: fp32 on any CPU
)
_RNG = np.random.default_rng(0)
DRIFT = _RNG.normal(size=(O, O)).astype(np.float32) * 0.1
CONTROL = _RNG.normal(size=(A, O)).astype(np.float32)


class LinearTask:
    """next_obs = obs + obs @ DRIFT + action @ CONTROL, reward = sum(obs), terminated = obs[0] > 0.5.

    Observations are standard normal times ``obs_scale`` (off-distribution for a model trained at scale 1).
    """

    def __init__(self, seed=0, obs_scale=1.0):
        self.rng = np.random.default_rng(seed)
        self.obs_scale = obs_scale
        self.next_episode = 0

    def batch(self, rows=256):
        obs = (self.obs_scale * self.rng.normal(size=(rows, O))).astype(np.float32)
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
    calibration = {f"val_calib_q{i}_{what}" for i in range(1, 6) for what in ("disagreement", "error")}
    assert set(history[98]) == {
        "loss", "nll", "termination_loss", "grad_norm", "val_mse", "val_nll", "val_nll_delta", "val_nll_reward",
        "val_termination_bce", "val_termination_acc", "val_elite_mse", "val_disagreement_mean",
        "val_disagreement_spearman", "val_since_improvement", "val_coverage_50", "val_coverage_90",
        "val_calibration_ece", *calibration,
    }
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
    terminated = model.step(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"])).terminated
    assert terminated.dtype == torch.bool
    assert (terminated.numpy() == batch["terminated"]).mean() > 0.95


def test_world_model_matches_true_dynamics(trained):
    learner, task, _, _ = trained
    model = WorldModel(O, A, CONFIG)
    model.load_state(learner.model_state())
    batch = task.batch(500)
    next_obs, reward, _, spread = model.step(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"]))
    assert next_obs.shape == (500, O) and reward.shape == (500,) and spread.shape == (500,)
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
    next_obs, reward, _, _ = model.step(obs, action)
    sample = torch.cat([next_obs, reward[:, None]], dim=1)
    distance = (prediction["mean"] - sample).abs().amax(dim=2)
    closest = distance.argmin(dim=0)
    assert distance.min(dim=0).values.max() < 1e-3
    assert set(closest.tolist()) == {0, 2}
    assert 0.35 < (closest == 0).float().mean() < 0.65


@pytest.mark.parametrize("rows", [0, 5, 1300])
def test_inference_is_the_dynamics_module_on_the_elites(trained, rows):
    """``WorldModel`` (elites only, cached normalisers, blocks of rows) computes what ``EnsembleDynamics`` does:
    the same forward, and the step the module's outputs give with the same random draws."""
    learner, _, _, _ = trained
    state = learner.model_state()
    state["elites"] = torch.tensor([1, 3])
    model = WorldModel(O, A, CONFIG, seed=5)
    model.load_state(state)
    batch = LinearTask(seed=11).batch(max(rows, 1))
    obs, action = torch.from_numpy(batch["obs"][:rows]), torch.from_numpy(batch["action"][:rows])
    with torch.no_grad():
        mean, logvar, logit = model.dynamics(obs, action)
    for got, expected in zip(model.forward(obs, action), (mean, logvar, logit)):
        torch.testing.assert_close(got, expected)

    draws = torch.Generator().manual_seed(5)
    draws.set_state(model._generator.get_state())
    step = model.step(obs, action)
    member = torch.tensor([1, 3])[torch.randint(2, (rows,), generator=draws)]
    row = torch.arange(rows)
    noise = torch.randn((rows, O + 1), generator=draws)
    norm = model.dynamics.target_norm
    sample = norm.denormalize(mean[member, row] + torch.exp(0.5 * logvar[member, row]) * noise)
    torch.testing.assert_close(step.next_obs, obs + sample[:, :O])
    torch.testing.assert_close(step.reward, sample[:, O])
    assert torch.equal(step.terminated, logit[member, row] > 0)
    if rows:
        torch.testing.assert_close(step.disagreement, disagreement(mean[[1, 3]], O))


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
    assert restored.since_improvement == learner.since_improvement and restored.paused == learner.paused
    np.testing.assert_array_equal(restored.member_val_mse, learner.member_val_mse)
    np.testing.assert_array_equal(restored.best_val_mse, learner.best_val_mse)
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
    ("holdout_ratio", 1.0, r"world_model.holdout_ratio=1.0: expected a number in \[0, 1\)"),
    ("lr", -1.0, r"world_model.lr=-1.0: expected a finite number > 0"),
    ("lr", "nan", r"world_model.lr=nan: expected a finite number > 0"),
    ("validate_every", 0, r"world_model.validate_every=0: expected an integer >= 1"),
    ("termination_fn", "learners.termination", r"world_model.termination_fn='learners.termination': expected "
                                               r"'module:function'"),
    ("termination_fn", "no_such_module:f", r"cannot import module 'no_such_module'"),
    ("termination_fn", "learners.termination:nope", r"module 'learners.termination' has no function 'nope'"),
    ("calibration_bins", 0, r"world_model.calibration_bins=0: expected an integer >= 1"),
    ("early_stop_patience", -1, r"world_model.early_stop_patience=-1: expected an integer >= 0 \(0: never pause\)"),
    ("improvement_threshold", 1.0, r"world_model.improvement_threshold=1.0: expected a number in \[0, 1\)"),
    ("hidden_sizes", [], r"world_model.hidden_sizes=\[\]: expected a non-empty list of integers >= 1"),
    ("device", "gpu", r"world_model.device='gpu': expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
])
def test_world_model_config_validation(field, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"world_model": {field: value}})


def test_world_model_config_accepts_auto_and_null_termination():
    assert WorldModelConfig().termination_fn == "auto"
    assert config_from_dict({"world_model": {"termination_fn": None}}).world_model.termination_fn is None


def test_members_are_independent():
    """A loss on one member's outputs leaves every other member's weights without gradient."""
    dynamics = EnsembleDynamics(O, A, E, (16, 16))
    mean, logvar, logit = dynamics(torch.randn(10, O), torch.randn(10, A))
    (mean[1].pow(2).sum() + logvar[1].sum() + logit[1].sum()).backward()
    weights = [p for name, p in dynamics.net.named_parameters()]
    assert len(weights) == 6 and all(w.shape[0] == E for w in weights)
    for weight in weights:
        others = torch.cat([weight.grad[m].flatten() for m in range(E) if m != 1])
        assert (others == 0).all() and weight.grad[1].abs().sum() > 0


def test_learned_variance_bounds_move_and_bound_the_logvar(trained):
    learner, task, _, _ = trained
    dynamics = learner.dynamics
    optimised = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert id(dynamics.max_logvar) in optimised and id(dynamics.min_logvar) in optimised
    assert (dynamics.max_logvar < 0.5).all() and (dynamics.min_logvar > -10.0).all()
    batch = LinearTask(seed=5, obs_scale=20.0).batch(500)
    with torch.no_grad():
        _, logvar, _ = dynamics(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"]))
    # soft clamps: the upper one can be passed by softplus(-(max - min)), about 1e-4 here
    assert (logvar <= dynamics.max_logvar + 1e-3).all() and (logvar >= dynamics.min_logvar).all()
    assert logvar.max() > dynamics.max_logvar.min() - 1.0  # far off-distribution rows reach the upper bound


def test_disagreement_rises_off_distribution(trained):
    learner, _, _, _ = trained
    model = WorldModel(O, A, CONFIG)
    model.load_state(learner.model_state())
    spread = {}
    for scale in (1.0, 10.0):
        batch = LinearTask(seed=7, obs_scale=scale).batch(1000)
        spread[scale] = model.step(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"])).disagreement
    assert (spread[1.0] >= 0).all()
    assert spread[10.0].mean() > 10 * spread[1.0].mean()
    batch = LinearTask(seed=7, obs_scale=10.0).batch(1000)
    prediction = model.predict(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"]))
    torch.testing.assert_close(prediction["disagreement"], spread[10.0])


def test_disagreement_is_the_elites_rms_std_of_the_state_delta():
    means = torch.tensor([[[0.0, 0.0, 5.0]], [[2.0, 4.0, -5.0]]])  # K=2 elites, N=1 row, O=2 (+ reward)
    torch.testing.assert_close(disagreement(means, 2), torch.tensor([math.sqrt((1.0 + 4.0) / 2)]))
    assert disagreement(means[:1], 2).item() == 0.0


def test_spearman_on_known_cases():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    torch.testing.assert_close(average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])),
                               torch.tensor([2.5, 0.0, 2.5, 1.0], dtype=torch.float64))
    # ties: Pearson correlation of the average ranks [0, 1.5, 1.5, 3] and [0, 1, 2, 3]
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5.0))
    assert math.isnan(spearman(torch.ones(4), x[:4]))
    with pytest.raises(ValueError, match=r"x has shape \(5,\) and y \(4,\)"):
        spearman(x, x[:4])


def test_calibration_table_bins_by_disagreement_quantile():
    spread = torch.tensor([4.0, 1.0, 3.0, 2.0])
    error = torch.tensor([40.0, 10.0, 30.0, 20.0])
    table = calibration_table(spread, error, 2)
    assert table[0] == pytest.approx((math.sqrt(2.5), math.sqrt(250.0)))  # rows with spread 1 and 2
    assert table[1] == pytest.approx((math.sqrt(12.5), math.sqrt(1250.0)))  # rows with spread 3 and 4
    assert all(math.isnan(v) for v in calibration_table(spread, error, 5)[-1])  # more bins than rows


def test_calibration_metrics_track_the_error_off_distribution(trained):
    """Holdout rows near and far from the training data: the far rows have both the larger disagreement and the
    larger error, so the rank correlation is high and the calibration table's error rises with its bins."""
    learner = WorldModelLearner(O, A, CONFIG)
    learner.load_state_dict(trained[0].state_dict())
    for scale in (1.0, 5.0):
        batch = LinearTask(seed=11, obs_scale=scale).batch(1000)
        learner._add_validation({c: batch[c] for c in ("obs", "action", "reward", "next_obs", "terminated")})
    metrics = learner.validate()
    assert metrics["val_disagreement_spearman"] > 0.5
    errors = [metrics[f"val_calib_q{i}_error"] for i in range(1, 6)]
    spreads = [metrics[f"val_calib_q{i}_disagreement"] for i in range(1, 6)]
    assert spreads == sorted(spreads) and errors[-1] > 5 * errors[0]
    assert metrics["val_elite_mse"] <= metrics["val_mse"] * 1.5
    assert metrics["val_nll"] == pytest.approx((metrics["val_nll_delta"] * O + metrics["val_nll_reward"]) / (O + 1))
    assert 0 < metrics["val_termination_bce"] < 1 and metrics["val_disagreement_mean"] > 0


class NoiseTask(LinearTask):
    """Unlearnable dynamics: next_obs = obs + shift + unit Gaussian noise, so the holdout loss plateaus at once."""

    shift = 0.0

    def batch(self, rows=256):
        batch = super().batch(rows)
        batch["next_obs"] = batch["obs"] + self.shift + self.rng.normal(size=(rows, O)).astype(np.float32)
        batch["reward"] = self.rng.normal(size=rows).astype(np.float32)
        return batch


def test_early_stopping_pauses_on_a_plateau_and_resumes_on_new_data():
    config = dataclasses.replace(CONFIG, validate_every=10, validation_size=500, early_stop_patience=3,
                                 improvement_threshold=0.05)
    learner = WorldModelLearner(O, A, config, seed=0)
    task = NoiseTask()
    since = []
    for _ in range(400):
        metrics = learner.update(task.batch())
        if "val_since_improvement" in metrics:
            since.append(metrics["val_since_improvement"])
        if learner.paused:
            break
    assert learner.paused and since[-3:] == [1.0, 2.0, 3.0]

    # paused: no weight changes, holdout rows still collected, a validation every validate_every batches
    weights = [w.clone() for w in learner.dynamics.parameters()]
    updates = learner.num_updates
    paused = [learner.update(task.batch()) for _ in range(10)]
    assert all(m["skipped"] == 1.0 and m["paused"] == 1.0 for m in paused)
    assert "val_mse" in paused[-1] and not any("val_mse" in m for m in paused[:-1])
    assert learner.num_updates == updates
    assert all(torch.equal(a, b) for a, b in zip(weights, learner.dynamics.parameters()))

    # the data moves on: the holdout loss gets worse, training resumes
    task.shift = 3.0
    for _ in range(20):
        learner.update(task.batch())
        if not learner.paused:
            break
    assert not learner.paused and learner.since_improvement == 0
    assert "skipped" not in learner.update(task.batch()) and learner.num_updates == updates + 1


def test_known_termination_function_replaces_the_learned_head(trained):
    learner, task, _, _ = trained
    config = dataclasses.replace(CONFIG, termination_fn="learners.termination:inverted_pendulum")
    model = WorldModel(O, A, config)
    model.load_state(learner.model_state())
    batch = task.batch(2000)
    obs, action = torch.from_numpy(batch["obs"]), torch.from_numpy(batch["action"])
    step = model.step(obs, action)
    expected = inverted_pendulum(batch["obs"], batch["action"], step.next_obs.numpy())
    np.testing.assert_array_equal(step.terminated.numpy(), expected)
    assert 0.2 < expected.mean() < 0.95  # the rule differs from the learned head's (obs[0] > 0.5)
    prediction = model.predict(obs, action)
    mean_next_obs = prediction["mean"][..., :O]
    for member in range(E):
        np.testing.assert_array_equal(
            prediction["termination_prob"][member].numpy(),
            inverted_pendulum(batch["obs"], batch["action"], mean_next_obs[member].numpy()).astype(np.float32),
        )


def wrong_shape(obs, action, next_obs):
    return np.zeros((len(obs), 1), dtype=bool)


def test_termination_function_of_the_wrong_shape_is_reported():
    model = WorldModel(O, A, dataclasses.replace(CONFIG, termination_fn=f"{__name__}:wrong_shape"))
    with pytest.raises(ValueError, match=r"termination_fn '.*:wrong_shape' returned shape \(8, 1\), expected \(8,\)"):
        model.step(torch.zeros(8, O), torch.zeros(8, A))


def test_bf16_world_model_learns_and_predicts_like_fp32_within_rounding():
    task = LinearTask(seed=5)
    fp32 = WorldModelLearner(O, A, CONFIG, seed=0)
    bf16 = WorldModelLearner(O, A, dataclasses.replace(CONFIG, precision="bf16"), seed=0)
    assert bf16.dtype == torch.bfloat16
    for _ in range(30):
        batch = task.batch(128)
        expected, got = fp32.update(batch), bf16.update(batch)
    assert got["loss"] == pytest.approx(expected["loss"], rel=0.1, abs=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.dynamics.parameters())
    model = WorldModel(O, A, CONFIG)
    model.load_state(bf16.model_state())
    obs, action = torch.randn(300, O), torch.randn(300, A)
    expected = model.predict(obs, action)["mean"]
    model.set_dtype(torch.bfloat16)
    got = model.predict(obs, action)["mean"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)
    step = model.step(obs, action)
    assert step.next_obs.dtype == torch.float32 and torch.isfinite(step.next_obs).all()


def test_interval_coverage_of_a_calibrated_gaussian_is_nominal():
    """Targets drawn from the predicted Gaussian: the 50%/90% intervals hold ~50%/90% of them and the ECE is ~0;
    a mixture of members with different means, sampled from itself, is as calibrated."""
    generator = torch.Generator().manual_seed(0)
    n, t = 20000, 3
    mean = torch.randn(1, n, t, generator=generator)
    std = 0.1 + torch.rand(1, n, t, generator=generator)
    target = mean[0] + std[0] * torch.randn(n, t, generator=generator)
    coverage = interval_coverage(mixture_pit(mean, std.pow(2), target))
    assert coverage[INTERVAL_LEVELS.index(0.5)] == pytest.approx(0.5, abs=0.01)
    assert coverage[INTERVAL_LEVELS.index(0.9)] == pytest.approx(0.9, abs=0.01)
    assert expected_calibration_error(coverage) < 0.01

    k = 5
    means = torch.randn(k, n, t, generator=generator) * 2.0
    member = torch.randint(k, (n,), generator=generator)
    drawn = means[member, torch.arange(n)] + torch.randn(n, t, generator=generator)
    coverage = interval_coverage(mixture_pit(means, torch.ones(k, n, t), drawn))
    assert coverage[INTERVAL_LEVELS.index(0.9)] == pytest.approx(0.9, abs=0.01)
    assert expected_calibration_error(coverage) < 0.01


def test_interval_coverage_shows_over_and_under_confidence():
    generator = torch.Generator().manual_seed(1)
    target = torch.randn(20000, 2, generator=generator)
    mean = torch.zeros(1, 20000, 2)
    narrow = interval_coverage(mixture_pit(mean, torch.full_like(mean, 0.25), target))  # std 0.5 for std 1 data
    wide = interval_coverage(mixture_pit(mean, torch.full_like(mean, 4.0), target))
    # a std half the truth: the 90% interval (+-0.82) holds P(|z| < 0.82) = 0.59; twice: P(|z| < 3.29) = 0.999
    assert narrow[INTERVAL_LEVELS.index(0.9)] == pytest.approx(0.59, abs=0.015)
    assert wide[INTERVAL_LEVELS.index(0.9)] == pytest.approx(0.999, abs=0.005)
    assert expected_calibration_error(narrow) > 0.15 and expected_calibration_error(wide) > 0.15
    assert math.isnan(interval_coverage(torch.empty(0))[0])


def test_learner_reports_calibrated_intervals_on_noisy_dynamics():
    """A model trained on dynamics with known Gaussian noise: its holdout intervals cover about what they say."""
    learner = WorldModelLearner(O, A, dataclasses.replace(CONFIG, validate_every=10_000), seed=0)
    task, rng = LinearTask(seed=5), np.random.default_rng(5)
    for _ in range(600):
        batch = task.batch()
        batch["next_obs"] = batch["next_obs"] + 0.3 * rng.normal(size=batch["next_obs"].shape).astype(np.float32)
        batch["reward"] = batch["reward"] + 0.3 * rng.normal(size=batch["reward"].shape).astype(np.float32)
        learner.update(batch)
    metrics = learner.validate()
    assert metrics["val_coverage_50"] == pytest.approx(0.5, abs=0.05)
    assert metrics["val_coverage_90"] == pytest.approx(0.9, abs=0.03)
    assert metrics["val_calibration_ece"] < 0.03


def test_every_training_step_has_one_shape_whatever_the_holdout_takes():
    """A row count per step made oneDNN's bf16 matmuls compile a kernel per count (+200 MB in one learner)."""
    learner = WorldModelLearner(O, A, dataclasses.replace(CONFIG, batch_size=64, holdout_ratio=0.3), seed=0)
    task, shapes, forward = LinearTask(seed=4), [], learner.dynamics.forward

    def recording_forward(obs, action):
        shapes.append(tuple(obs.shape))
        return forward(obs, action)

    learner.dynamics.forward = recording_forward
    for _ in range(12):
        learner.update(task.batch(64))
    assert len(shapes) == 12 and set(shapes) == {(E, 64, O)}, shapes
    assert learner.validation.size > 0  # the holdout took rows from these batches
