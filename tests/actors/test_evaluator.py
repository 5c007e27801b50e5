import numpy as np

from actors.envs import EnvConfig
from actors.evaluator import Evaluator


class ZeroPolicy:
    def __init__(self):
        self.state = None

    def load_state(self, state):
        self.state = state

    def act(self, obs, deterministic=False):
        assert deterministic, "the evaluator must act deterministically"
        return np.zeros(1, dtype=np.float32)


def test_evaluate_runs_whole_episodes_and_echoes_tags():
    evaluator = Evaluator(EnvConfig("InvertedPendulum-v5", max_episode_steps=30), ZeroPolicy, seed=3)
    result = evaluator.evaluate({"w": 1}, episodes=3, env_steps=500, version=7)
    assert result.env_steps == 500 and result.version == 7
    assert len(result.returns) == 3 and all(1 <= n <= 30 for n in result.lengths)
    # InvertedPendulum-v5 pays 1 per step, except 0 on the step that topples it.
    assert all(r in (n, n - 1) for r, n in zip(result.returns, result.lengths))
    assert result.return_mean == np.mean(result.returns)
