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


class StubWeights:
    """A weights client with one world model published (``poll`` answers None: nothing newer)."""

    def __init__(self, state):
        self.state, self.version = state, -1

    def wait_first(self, timeout):
        self.version = 0 if self.state is not None else -1
        return self.state

    def poll(self):
        return None


def test_in_model_evaluations_estimate_from_the_envs_own_start_states():
    import torch

    from actors.config import ModelEvalConfig
    from learners.config import WorldModelConfig
    from learners.sac import Policy
    from learners.world_model import WorldModel

    env = EnvConfig("InvertedPendulum-v5", max_episode_steps=30)
    model_config = WorldModelConfig(ensemble_size=3, num_elites=2, hidden_sizes=(16,),
                                    termination_fn="learners.termination:inverted_pendulum")

    def make_model():
        return WorldModel(4, 1, model_config, seed=0)

    def make_policy():
        return Policy(4, 1, -3 * np.ones(1), 3 * np.ones(1), (8,), seed=0)

    published = make_model().dynamics.state_dict()
    published["elites"] = torch.tensor([0, 1])
    evaluator = Evaluator(env, make_policy, seed=3, model_weights=StubWeights(published), make_model=make_model,
                          model_eval=ModelEvalConfig(starts=4, horizon=0))
    policy = make_policy().actor.state_dict()
    result = evaluator.evaluate(policy, episodes=0, env_steps=100, version=2, in_model=True)
    assert result.returns == () and np.isnan(result.return_mean)  # scored in the model alone: no env step
    assert result.model is not None and result.model_version == 0 and len(result.model.member_returns) == 2
    assert 1 <= result.model.length_mean <= 30  # horizon 0: the env's episode limit
    both = evaluator.evaluate(policy, episodes=1, in_model=True)
    assert len(both.returns) == 1 and both.model.member_returns == result.model.member_returns
    # no world model published yet: no estimate, the real episodes as asked
    empty = Evaluator(env, make_policy, model_weights=StubWeights(None), make_model=make_model)
    assert empty.evaluate(policy, episodes=1, in_model=True).model is None


def test_real_episodes_run_at_every_real_every_th_evaluation_and_the_last():
    from actors.config import EvalConfig

    config = EvalConfig(episodes=5, in_model=True, real_every=3)
    assert [config.real_episodes(i) for i in range(7)] == [5, 0, 0, 5, 0, 0, 5]
    assert config.real_episodes(4, final=True) == 5
    assert EvalConfig(episodes=5, real_every=3).real_episodes(1) == 5  # in_model off: every one
