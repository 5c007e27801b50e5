"""Imagination: horizon schedule, branched rollouts (termination, horizon, non-finite rows), conservative
rollouts (reward penalty, truncation on disagreement), and the worker's report."""

import math

import numpy as np
import pytest
import torch

from actors.config import ImaginationConfig
from actors.imagination import ImaginationWorker, bucket_rows, rollout
from learners import WorldModel, WorldModelConfig
from system.config import ConfigError, load_config
from tests.conftest import RecordingReplay, StaticWeights


class DriftModel:
    """next_obs = obs + 1; terminates rows whose first coordinate passes a threshold.

    Disagreement = ``spread_slope * next_obs[:, 1]`` (rows can be given different slopes through obs[:, 1]); rows in
    ``nan_rows`` get a NaN next observation on call ``nan_call``.
    """

    def __init__(self, threshold=3.0, nan_rows=(), nan_call=1, spread_slope=0.0):
        self.threshold, self.nan_rows, self.nan_call = threshold, set(nan_rows), nan_call
        self.spread_slope = spread_slope
        self.calls = 0

    def step(self, obs, action):
        self.calls += 1
        next_obs = obs + 1.0
        reward = action[:, 0].clone()
        for row in self.nan_rows:
            if self.calls == self.nan_call and row < len(next_obs):
                next_obs[row] = float("nan")
        spread = self.spread_slope * next_obs[:, 1].abs()
        return next_obs, reward, next_obs[:, 0] >= self.threshold, spread


class HalfPolicy:
    def act_tensor(self, obs, deterministic=False):
        return torch.full((obs.shape[0], 1), 0.5)


def test_horizon_schedule_is_linear_between_the_ramp_ends():
    config = ImaginationConfig(horizon_start=1, horizon_end=5, horizon_ramp_start=1000, horizon_ramp_end=5000)
    assert [config.horizon(s) for s in (0, 1000, 2000, 3000, 4999, 5000, 10**6)] == [1, 1, 2, 3, 4, 5, 5]


def test_schedule_validation_names_the_key():
    with pytest.raises(ValueError, match="imagination.horizon_ramp_end=10: expected >= horizon_ramp_start"):
        ImaginationConfig(horizon_ramp_start=20, horizon_ramp_end=10)
    with pytest.raises(ConfigError, match="imagination.horizon_ramp_end=10: expected >= horizon_ramp_start"):
        load_config([], ["imagination.horizon_ramp_start=20", "imagination.horizon_ramp_end=10"])


def test_rollout_stops_terminated_rows_and_marks_the_cut():
    obs = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # row 1 terminates after its first step
    out = rollout(HalfPolicy(), DriftModel(threshold=3.0), obs, horizon=4)
    starts = out["start"].tolist()
    assert starts.count(1) == 1 and starts.count(0) == 3  # row 0 stops when its obs reaches 3 at step 3
    assert out["terminated"][out["start"] == 1].tolist() == [True]
    row0 = out["start"] == 0
    assert out["step"][row0].tolist() == [0, 1, 2]
    assert out["terminated"][row0].tolist() == [False, False, True]
    torch.testing.assert_close(out["next_obs"][row0][:-1], out["obs"][row0][1:])


def test_rollout_truncates_live_rows_at_the_horizon():
    out = rollout(HalfPolicy(), DriftModel(threshold=100.0), torch.zeros(3, 2), horizon=2)
    assert out["truncated"].tolist() == [False] * 3 + [True] * 3
    assert not out["terminated"].any()


def test_rollout_drops_and_counts_nonfinite_rows():
    out = rollout(HalfPolicy(), DriftModel(threshold=100.0, nan_rows=[1]), torch.zeros(3, 2), horizon=2)
    assert int(out["nonfinite"]) == 1
    assert 1 not in out["start"].tolist()
    assert torch.isfinite(out["next_obs"]).all()


def test_rollout_stops_nonfinite_rows_mid_way_and_marks_the_cut():
    model = DriftModel(threshold=100.0, nan_rows=[0], nan_call=2)
    out = rollout(HalfPolicy(), model, torch.zeros(2, 2), horizon=3)
    assert int(out["nonfinite"]) == 1 and int(out["uncertain"]) == 0
    row0 = out["start"] == 0
    assert out["step"][row0].tolist() == [0] and out["truncated"][row0].tolist() == [True]
    assert out["step"][~row0].tolist() == [0, 1, 2] and out["truncated"][~row0].tolist() == [False, False, True]


def test_conservative_rollouts_off_by_default():
    out = rollout(HalfPolicy(), DriftModel(threshold=100.0, spread_slope=1.0), torch.zeros(3, 2), horizon=3)
    assert out["obs"].shape[0] == 9 and int(out["uncertain"]) == 0
    torch.testing.assert_close(out["reward"], torch.full((9,), 0.5))
    assert (out["penalty"] == 0).all() and (out["disagreement"] > 0).all()


def test_rewards_are_penalized_by_scaled_disagreement():
    obs = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # disagreement 0.1 * |obs[1] + 1 + h|: 0.1, 0.2, ... per step
    out = rollout(HalfPolicy(), DriftModel(threshold=100.0, spread_slope=0.1), obs, horizon=2, penalty_scale=2.0)
    expected_spread = torch.tensor([0.1, 0.2, 0.2, 0.3])
    torch.testing.assert_close(out["disagreement"], expected_spread)
    torch.testing.assert_close(out["penalty"], 2.0 * expected_spread)
    torch.testing.assert_close(out["reward"], 0.5 - 2.0 * expected_spread)


def test_rows_stop_before_disagreement_passes_the_threshold():
    obs = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 9.0]])  # disagreement 0.1 * (obs[1] + 1 + h)
    out = rollout(HalfPolicy(), DriftModel(threshold=100.0, spread_slope=0.1), obs, horizon=4, max_disagreement=0.35)
    assert (out["disagreement"] <= 0.35).all()
    per_start = {s: out["step"][out["start"] == s].tolist() for s in range(3)}
    assert per_start == {0: [0, 1, 2], 1: [0], 2: []}  # spreads 0.1, 0.2, 0.3 | 0.3 | 1.0: never written
    assert out["truncated"][out["start"] == 0].tolist() == [False, False, True]
    assert out["truncated"][out["start"] == 1].tolist() == [True]
    assert int(out["uncertain"]) == 3 and int(out["nonfinite"]) == 0


def test_rollout_of_rows_all_stopped_at_once_is_empty():
    out = rollout(HalfPolicy(), DriftModel(spread_slope=1.0), torch.ones(2, 2), horizon=3, max_disagreement=0.5)
    assert out["obs"].shape == (0, 2) and out["action"].shape == (0, 1) and int(out["uncertain"]) == 2


def test_config_validates_the_conservative_keys():
    assert ImaginationConfig().penalty_scale == 0.0 and ImaginationConfig().max_disagreement == math.inf
    assert load_config([], ["imagination.max_disagreement=.inf"]).imagination.max_disagreement == math.inf
    with pytest.raises(ConfigError, match="imagination.penalty_scale=-1.0: expected a finite number >= 0"):
        load_config([], ["imagination.penalty_scale=-1.0"])
    with pytest.raises(ConfigError, match=r"imagination.max_disagreement=0.0: expected a number > 0 \(inf: off\)"):
        load_config([], ["imagination.max_disagreement=0.0"])
    with pytest.raises(ConfigError, match=r"imagination.max_disagreement=nan: expected a number > 0 \(inf: off\)"):
        load_config([], ["imagination.max_disagreement=nan"])


class _Done:
    def __init__(self, value):
        self.value = value

    def done(self):
        return True

    def result(self):
        return self.value


class StartStates(RecordingReplay):
    """Replay with a ``real`` table of start states whose obs[:, 1] sets each row's disagreement in DriftModel."""

    def __init__(self, obs):
        super().__init__()
        self.obs, self.samples = obs, 0

    def submit_sample(self, table, rows, consumer):
        self.samples += 1
        return _Done({"obs": self.obs[:rows]})


class PoisonedModel(DriftModel):
    """DriftModel whose rows with a negative obs[:, 0] predict NaN."""

    def step(self, obs, action):
        next_obs, reward, terminated, spread = super().step(obs, action)
        next_obs[obs[:, 0] < 0] = float("nan")
        return next_obs, reward, terminated, spread


def test_worker_writes_only_trusted_rows_and_reports_the_counts():
    obs = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 9.0], [-1.0, 0.0]], dtype=np.float32)
    model = PoisonedModel(threshold=100.0, spread_slope=0.1)
    config = ImaginationConfig(batch_size=4, prefetch=1, horizon_start=4, horizon_end=4, penalty_scale=1.0,
                               max_disagreement=0.35)
    replay = StartStates(obs)
    worker = ImaginationWorker(config, replay, StaticWeights({}, 3), StaticWeights({}, 7),
                               lambda: _Loadable(HalfPolicy()), lambda: _Loadable(model), local=True)
    report = worker.run(env_steps=0, max_seconds=0.2)
    written = replay.rows("imagined")
    assert report.transitions == len(written["obs"]) == 4 * report.rollouts
    assert np.isfinite(written["next_obs"]).all()
    # per rollout: row 3 is non-finite at once; rows 0, 1 and 2 pass the threshold at steps 3, 1 and 0
    assert report.stopped_nonfinite == report.rollouts and report.stopped_uncertain == 3 * report.rollouts
    assert report.penalized == report.transitions
    assert report.disagreement_mean == pytest.approx((0.1 + 0.2 + 0.3 + 0.3) / 4)
    assert report.penalty_mean == pytest.approx(report.disagreement_mean)
    np.testing.assert_allclose(written["reward"], 0.5 - np.tile([0.1, 0.3, 0.2, 0.3], report.rollouts), rtol=1e-6)
    assert (written["policy_version"] == 3).all() and report.model_version == 7


class _Loadable:
    """A policy or model stand-in that accepts (and ignores) weights."""

    def __init__(self, inner):
        self.inner = inner

    def load_state(self, state):
        pass

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_rollout_with_a_world_model_records_its_disagreement():
    config = WorldModelConfig(ensemble_size=3, num_elites=2, hidden_sizes=(16,), device="cpu")
    model = WorldModel(2, 1, config, seed=0)
    obs = torch.randn(5, 2)
    out = rollout(HalfPolicy(), model, obs, horizon=1, penalty_scale=1.0)
    expected = model.predict(obs, torch.full((5, 1), 0.5))["disagreement"]
    torch.testing.assert_close(out["disagreement"], expected)
    assert (out["disagreement"] > 0).all()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_worker_runs_its_policy_and_model_at_the_configured_precision(precision, dtype):
    from learners import Policy

    model_config = WorldModelConfig(ensemble_size=3, num_elites=2, hidden_sizes=(16,), device="cpu")
    worker = ImaginationWorker(
        ImaginationConfig(precision=precision), RecordingReplay(), StaticWeights(), StaticWeights(),
        lambda: Policy(2, 1, -1.0, 1.0, (16,)), lambda: WorldModel(2, 1, model_config),
    )
    assert worker._policy.dtype == dtype and worker._model.dtype == dtype
    assert worker._padded == (dtype == torch.bfloat16)  # on this CPU: padded forwards for bf16's kernels


def test_auto_precision_is_decided_for_each_network_by_its_width(monkeypatch):
    import learners._common as common
    from learners import Policy

    monkeypatch.setattr(common, "_CPU_BF16", True)  # as on a CPU with bf16 matrix instructions
    wide = (common.BF16_MIN_WIDTH,)
    model_config = WorldModelConfig(ensemble_size=3, num_elites=2, hidden_sizes=wide, device="cpu")
    worker = ImaginationWorker(
        ImaginationConfig(precision="auto"), RecordingReplay(), StaticWeights(), StaticWeights(),
        lambda: Policy(2, 1, -1.0, 1.0, (16,)), lambda: WorldModel(2, 1, model_config),
    )
    assert worker._policy.dtype == torch.float32 and worker._model.dtype == torch.bfloat16
    assert worker._padded


class ShapeLog(DriftModel):
    """A DriftModel that records the row count of every forward."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = []

    def step(self, obs, action):
        self.rows.append(obs.shape[0])
        return super().step(obs, action)


def test_bucket_rows_is_the_next_power_of_two():
    assert [bucket_rows(n) for n in (0, 1, 2, 3, 5, 64, 65, 1000)] == [1, 1, 2, 4, 8, 64, 128, 1024]


@pytest.mark.parametrize("kwargs", [
    {"threshold": 3.0},                                              # rows end at different steps
    {"threshold": 100.0, "nan_rows": [1, 4], "nan_call": 2},         # stopped mid-way as non-finite
    {"threshold": 100.0, "spread_slope": 0.1, "max_disagreement": 0.35, "penalty_scale": 2.0},
])
def test_padded_rollouts_write_the_same_rows_on_power_of_two_shapes(kwargs):
    rollout_keys = {k: kwargs.pop(k) for k in ("max_disagreement", "penalty_scale") if k in kwargs}
    obs = torch.stack([torch.arange(7.0) % 3, torch.arange(7.0)], dim=1)  # 7 rows, ending at different steps
    plain, padded = ShapeLog(**kwargs), ShapeLog(**kwargs)
    expected = rollout(HalfPolicy(), plain, obs, horizon=4, **rollout_keys)
    out = rollout(HalfPolicy(), padded, obs, horizon=4, padded=True, **rollout_keys)
    assert out.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], msg=key)
    assert any(n & (n - 1) for n in plain.rows), plain.rows  # the counts the live rows had: not all powers of two
    assert padded.rows == [bucket_rows(n) for n in plain.rows], (padded.rows, plain.rows)
