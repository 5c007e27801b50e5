import numpy as np
import pytest
import torch

from actors.imagination import ImaginationConfig, rollout


class DriftModel:
    """next_obs = obs + 1; terminates rows whose first coordinate passes a threshold."""

    def __init__(self, threshold=3.0, nan_rows=()):
        self.threshold, self.nan_rows = threshold, set(nan_rows)
        self.calls = 0

    def step(self, obs, action):
        self.calls += 1
        next_obs = obs + 1.0
        reward = action[:, 0].clone()
        for row in self.nan_rows:
            if self.calls == 1 and row < len(next_obs):
                next_obs[row] = float("nan")
        return next_obs, reward, next_obs[:, 0] >= self.threshold


class HalfPolicy:
    def act_tensor(self, obs, deterministic=False):
        return torch.full((obs.shape[0], 1), 0.5)


def test_horizon_schedule_is_linear_between_the_ramp_ends():
    config = ImaginationConfig(horizon_start=1, horizon_end=5, horizon_ramp_start=1000, horizon_ramp_end=5000)
    assert [config.horizon(s) for s in (0, 1000, 2000, 3000, 4999, 5000, 10**6)] == [1, 1, 2, 3, 4, 5, 5]


def test_schedule_validation_names_the_key():
    with pytest.raises(ValueError, match="imagination.horizon_ramp_end=10: expected >= horizon_ramp_start"):
        ImaginationConfig(horizon_ramp_start=20, horizon_ramp_end=10)


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
