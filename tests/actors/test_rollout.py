import numpy as np
import pytest

from actors.envs import EnvConfig
from actors.config import RolloutConfig
from actors.rollout import RANDOM_POLICY_VERSION, ChunkBuilder, RolloutWorker
from system.config import ConfigError, load_config
from tests.conftest import StaticWeights


class ConstantPolicy:
    def __init__(self):
        self.loaded = None

    def load_state(self, state):
        self.loaded = state

    def act(self, obs, deterministic=False):
        return np.full((obs.shape[0], 1), 0.5, dtype=np.float32)


def make_worker(replay, weights=None, **overrides):
    config = RolloutConfig(**{"envs_per_worker": 2, "chunk_length": 10, "warmup_steps": 0, **overrides})
    env = EnvConfig("InvertedPendulum-v5", max_episode_steps=7)
    return RolloutWorker(env, config, replay, weights or StaticWeights(), ConstantPolicy, index=3, seed=1)


def test_chunk_builder_is_slot_major():
    builder = ChunkBuilder(length=3, num_envs=2, obs_shape=(1,), action_shape=(1,))
    for t in range(3):
        builder.add(obs=np.array([[t], [10 + t]]), step=np.array([t, 10 + t]))
    chunk = builder.take()
    assert chunk["obs"][:, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert chunk["step"].tolist() == [0, 1, 2, 10, 11, 12]
    assert "seq" not in chunk and "writer_id" not in chunk  # the worker's RowStamper adds them
    assert builder.t == 0


def test_chunks_own_their_rows_even_with_one_env():
    builder = ChunkBuilder(length=2, num_envs=1, obs_shape=(1,), action_shape=(1,))
    for t in range(2):
        builder.add(obs=np.array([[t]]))
    chunk = builder.take()
    for t in range(2):  # refill: a chunk resubmitted after a "not now" must still hold its own rows
        builder.add(obs=np.array([[7]]))
    assert chunk["obs"][:, 0].tolist() == [0, 1]


def test_chunks_have_fixed_size_and_rows_are_consistent(recording_replay):
    worker = make_worker(recording_replay)
    report = worker.run(60)
    assert report.env_steps == 60
    assert all(len(c["obs"]) == 20 for _, c, _ in recording_replay.chunks)
    rows = recording_replay.rows()
    assert len(rows["obs"]) == 60
    assert np.all(np.diff(rows["seq"]) == 1)
    # Within each slot's run of rows, next_obs[t] == obs[t+1] unless the episode ended at t.
    for start in range(0, 60, 10):
        sl = slice(start, start + 10)
        obs, nxt = rows["obs"][sl], rows["next_obs"][sl]
        ended = rows["terminated"][sl] | rows["truncated"][sl]
        same_episode = rows["episode_id"][sl][1:] == rows["episode_id"][sl][:-1]
        np.testing.assert_array_equal(same_episode, ~ended[:-1])
        np.testing.assert_allclose(nxt[:-1][~ended[:-1]], obs[1:][~ended[:-1]])


def test_truncation_and_termination_stay_separate(recording_replay):
    worker = make_worker(recording_replay)
    report = worker.run(200)
    rows = recording_replay.rows()
    assert (rows["truncated"] & ~rows["terminated"]).any(), "time limit of 7 steps must truncate some episodes"
    assert (rows["terminated"] & ~rows["truncated"]).any(), "random actions must topple the pendulum sometimes"
    # A truncated row keeps the true final observation, not the reset observation of the next episode.
    trunc = np.flatnonzero(rows["truncated"])
    assert np.all(rows["step"][trunc] == 6)
    assert all(length <= 7 for _, length in report.episodes)
    # Each episode id holds one unbroken run of steps 0, 1, 2, ... (ids never shared between slots).
    for episode in np.unique(rows["episode_id"]):
        steps = rows["step"][rows["episode_id"] == episode]
        assert steps.tolist() == list(range(len(steps)))


def test_warmup_is_random_then_policy_with_its_version(recording_replay):
    weights = StaticWeights(state={"w": 1}, version=4)
    worker = make_worker(recording_replay, weights, warmup_steps=20)
    worker.run(60)
    rows = recording_replay.rows()
    versions = rows["policy_version"].reshape(3, 2, 10).transpose(0, 2, 1).reshape(-1)  # back to time order
    assert np.all(versions[:20] == RANDOM_POLICY_VERSION)
    assert np.all(versions[20:] == 4)
    assert np.allclose(rows["action"][rows["policy_version"] == 4], 0.5)


def test_no_policy_yet_keeps_acting_randomly(recording_replay):
    worker = make_worker(recording_replay, StaticWeights(state=None))
    worker.run(20)
    assert np.all(recording_replay.rows()["policy_version"] == RANDOM_POLICY_VERSION)


class CountingWeights(StaticWeights):
    def __init__(self):
        super().__init__(state={"w": 1}, version=2)
        self.polls = 0

    def poll(self):
        self.polls += 1
        return super().poll()


def test_polls_count_vector_steps_across_run_calls(recording_replay):
    weights = CountingWeights()
    worker = make_worker(recording_replay, weights, weights_poll_steps=10, weights_poll_s=0.0)
    for _ in range(10):
        worker.run(4)  # 2 vector steps a call (2 envs)
    assert weights.polls == 2  # vector steps 0 and 10 of 20, not one poll per call


def test_polls_are_at_least_weights_poll_s_apart(recording_replay):
    weights = CountingWeights()
    worker = make_worker(recording_replay, weights, weights_poll_steps=1, weights_poll_s=3600.0)
    worker.run(100)
    assert weights.polls == 1 and worker.run(2).policy_version == 2  # the first poll, at once; then none


def test_a_call_asks_at_least_one_chunk():
    assert RolloutConfig(steps_per_call=50, chunk_length=25, envs_per_worker=1).call_steps == 50
    assert RolloutConfig(steps_per_call=50, chunk_length=25, envs_per_worker=32).call_steps == 800


class SlowFirstWeights(StaticWeights):
    """The store's answer arrives only for a waiting worker: every non-blocking poll finds it not yet answered."""

    def __init__(self):
        super().__init__(state={"w": 1}, version=7)
        self.waits = []

    def poll(self):
        return None

    def wait_first(self, timeout):
        self.waits.append(timeout)
        return super().poll()


def test_a_worker_past_the_warm_up_waits_once_for_its_first_policy(recording_replay):
    weights = SlowFirstWeights()
    worker = make_worker(recording_replay, weights, first_policy_wait_s=12.0)
    worker.run(40)
    assert weights.waits == [12.0]  # once, with the configured bound
    assert np.all(recording_replay.rows()["policy_version"] == 7)  # no random row before it


def test_a_worker_that_warmed_up_never_waits(recording_replay):
    weights = SlowFirstWeights()
    worker = make_worker(recording_replay, weights, warmup_steps=20)
    worker.run(60)
    assert weights.waits == [] and np.all(recording_replay.rows()["policy_version"] == RANDOM_POLICY_VERSION)


def test_close_flushes_partial_chunk(recording_replay):
    worker = make_worker(recording_replay)
    worker.run(6)
    assert recording_replay.chunks == []
    worker.close()
    assert len(recording_replay.chunks[0][1]["obs"]) == 6 and recording_replay.flushed == 1


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"rollout.chunk_length=0: expected an integer >= 1"):
        load_config([], ["rollout.chunk_length=0"])


def flaky_worker(replay, **kwargs):
    env = EnvConfig("tests.actors.flaky_env:FlakyEnv", kwargs=kwargs)
    config = RolloutConfig(envs_per_worker=2, chunk_length=4, warmup_steps=0, max_env_errors_in_a_row=3)
    return RolloutWorker(env, config, replay, StaticWeights(), ConstantPolicy, index=0, seed=1)


@pytest.mark.parametrize("mode", ["raise", "nan", "nan_reward"])
def test_a_failing_env_is_made_afresh_and_counted_and_no_episode_is_stitched(recording_replay, mode):
    worker = flaky_worker(recording_replay, fail_every=7, mode=mode)
    report = worker.run(100)
    assert report.env_steps == 100
    assert report.env_errors >= 5  # every env instance fails at its 7th step
    worker.flush()
    rows = recording_replay.rows()
    assert np.isfinite(rows["obs"]).all() and np.isfinite(rows["next_obs"]).all() and np.isfinite(rows["reward"]).all()
    for episode in np.unique(rows["episode_id"]):  # every stored episode: consecutive steps from 0
        mine = rows["episode_id"] == episode
        assert rows["step"][mine].tolist() == list(range(mine.sum()))
        np.testing.assert_array_equal(rows["obs"][mine][:, 0], np.arange(mine.sum()))
    assert len(rows["obs"]) <= 100  # the unfinished chunk of each failure is dropped


def test_an_env_that_keeps_failing_stops_the_worker_with_its_error(recording_replay):
    worker = flaky_worker(recording_replay, fail_every=1)
    with pytest.raises(RuntimeError, match=r"FlakyEnv' failed 4 times in a row .*simulator blew up at step 1"):
        worker.run(10)


def test_every_worker_incarnation_writes_under_its_own_writer_id(recording_replay):
    first, second = make_worker(recording_replay), make_worker(recording_replay)
    assert first.writer_id != second.writer_id
    first.run(20)
    second.run(20)
    assert len(recording_replay.rows()["seq"]) == 40
    ids = {(w, int(c["seq"][0])) for _, c, w in recording_replay.chunks}
    assert len(ids) == len(recording_replay.chunks)  # no dedup key repeats: a restarted worker loses nothing


def test_exploration_noise_per_worker_index(recording_replay):
    weights = StaticWeights(state={"w": 1}, version=2)
    config = RolloutConfig(envs_per_worker=2, chunk_length=10, warmup_steps=0, exploration_noise=(0.0, 0.5))
    env = EnvConfig("InvertedPendulum-v5", max_episode_steps=7)
    quiet = RolloutWorker(env, config, recording_replay, weights, ConstantPolicy, index=2, seed=1)
    noisy = RolloutWorker(env, config, recording_replay, StaticWeights(state={"w": 1}, version=2), ConstantPolicy,
                          index=3, seed=1)
    quiet.run(20)
    noisy.run(20)
    actions = [c["action"][:, 0] for _, c, _ in recording_replay.chunks]
    assert (actions[0] == 0.5).all()  # worker 2 uses entry 0: no noise
    assert actions[1].std() > 0.3 and (np.abs(actions[1]) <= 3.0).all()  # half-range 3: std 1.5, clipped to bounds
    with pytest.raises(ConfigError,
                       match=r"rollout.exploration_noise=\[-1.0\]: expected a list of numbers in \[0, 10\]"):
        load_config([], ["rollout.exploration_noise=[-1.0]"])
