"""Prioritized replay for SAC (``policy.prioritized``): the learner loop sends |TD error| + eps back as the sampled
real rows' priorities, the wiring makes ``real`` prioritized and ``imagined`` uniform, unsupported combinations
are config errors."""

import numpy as np
import pytest

from actors.envs import probe_env
from replay import ReplayClient, ReplayConfig, ReplayShard, TableConfig
from system.config import ConfigError, load_config
from replay.handles import LocalHandle
from system.loops import PRIORITY_UPDATES_PER_SEND, BatchPart, LearnerLoop
from system.wiring import build_system, table_configs
from tests.replay.helpers import COLUMNS, make_chunk

ALPHA, EPS = 0.5, 0.01


class FakeLearner:
    """Keeps the batches; with ``prioritized`` returns a known TD error per row (its ``seq`` / 100)."""

    def __init__(self, prioritized=True):
        self.prioritized, self.num_updates, self.nonfinite_streak, self.batches = prioritized, 0, 0, []

    def update(self, batch):
        self.batches.append(batch)
        self.num_updates += 1
        if not self.prioritized:
            return {"critic_loss": 1.0}
        return {"critic_loss": 1.0, "td_error": batch["seq"].astype(np.float32) / 100}


class NoPublisher:
    version = 0

    def publish(self, state):
        return 0

    def check(self):
        pass


def in_process_shards(num_shards=2):
    tables = [
        TableConfig("real", 1000, COLUMNS, sampler="prioritized", priority_exponent=ALPHA, importance_exponent=1.0),
        TableConfig("imagined", 1000, COLUMNS),
    ]
    return [LocalHandle(ReplayShard(tables, seed=i, index=i)) for i in range(num_shards)]


def stored_priorities(shards, table, keys):
    """``priority ** alpha`` of rows with client-wide ``keys`` as their shards hold them."""
    k = len(shards)
    return np.array([shards[key % k].wrapped._state(table).table.priorities(np.array([key // k]))[0] for key in keys])


def test_loop_sends_the_td_errors_of_prioritized_parts_back_as_their_rows_priorities():
    shards = in_process_shards()
    client = ReplayClient(shards, ReplayConfig(), local=True)
    client.insert("real", make_chunk(100, start_seq=0), writer_id=0)
    client.insert("real", make_chunk(100, start_seq=100), writer_id=0)
    client.insert("imagined", make_chunk(100, start_seq=500, writer_id=1), writer_id=1)
    client.flush()
    sent = []
    update_priorities = client.update_priorities
    client.update_priorities = lambda table, keys, priorities: (sent.append((table, keys, priorities)),
                                                                 update_priorities(table, keys, priorities))
    parts = [BatchPart("real", 24, None, priority_eps=EPS), BatchPart("imagined", 8, None)]
    learner = FakeLearner()
    loop = LearnerLoop("policy", learner, client, NoPublisher(), lambda: parts, publish_every=100,
                       publish_state=dict, local=True)

    report = loop.run(max_seconds=1.0)
    assert report.updates == learner.num_updates > 0
    assert "td_error" not in report.metrics and report.metrics["critic_loss"] == 1.0

    # every batch: real rows first, then imagined ones; each row has a key and an importance weight
    for batch in learner.batches:
        assert len(batch["seq"]) == 32 and (batch["seq"][:24] < 200).all() and (batch["seq"][24:] >= 500).all()
        assert batch["weight"].shape == (32,) and (batch["weight"] > 0).all() and (batch["weight"][24:] == 1).all()
    # the real rows only get |TD error| + eps, every update's, in update order, one call per
    # PRIORITY_UPDATES_PER_SEND updates and the rest when run() returns
    calls = -(-learner.num_updates // PRIORITY_UPDATES_PER_SEND)
    assert [table for table, _, _ in sent] == ["real"] * calls
    sent_keys = np.concatenate([keys for _, keys, _ in sent])
    sent_priorities = np.concatenate([priorities for _, _, priorities in sent])
    np.testing.assert_array_equal(sent_keys, np.concatenate([batch["key"][:24] for batch in learner.batches]))
    np.testing.assert_allclose(sent_priorities, np.concatenate([b["seq"][:24] / 100 + EPS for b in learner.batches]),
                               rtol=1e-6)
    latest = dict(zip(sent_keys.tolist(), sent_priorities.tolist()))
    keys = np.array(list(latest))
    np.testing.assert_allclose(stored_priorities(shards, "real", keys), np.array(list(latest.values())) ** ALPHA,
                               rtol=1e-6)
    # rows never sampled keep the initial (maximum) priority 1
    unsampled = np.setdiff1d(np.arange(200), keys)
    np.testing.assert_array_equal(stored_priorities(shards, "real", unsampled), 1.0)


def test_plain_loop_samples_without_keys():
    shards = in_process_shards(num_shards=1)
    client = ReplayClient(shards, ReplayConfig(), local=True)
    client.insert("real", make_chunk(50), writer_id=0)
    client.flush()
    learner = FakeLearner(prioritized=False)
    loop = LearnerLoop("policy", learner, client, NoPublisher(), lambda: [BatchPart("real", 8, None)],
                       publish_every=100, publish_state=dict, local=True)
    loop.run(max_seconds=0.5)
    assert learner.batches and "key" not in learner.batches[0] and "weight" not in learner.batches[0]


def debug_config(*overrides):
    return load_config(["debug"], ["replay.insert_timeout_s=5", "replay.sample_timeout_s=5", *overrides])


def test_real_table_is_prioritized_with_the_policy_exponents_and_imagined_stays_uniform():
    config = debug_config("policy.prioritized=true", "policy.priority_alpha=0.7", "policy.priority_beta=0.5")
    tables = {t.name: t for t in table_configs(config, probe_env(config.env))}
    assert (tables["real"].sampler, tables["real"].priority_exponent, tables["real"].importance_exponent) == (
        "prioritized", 0.7, 0.5)
    assert tables["imagined"].sampler == "uniform"
    plain = {t.name: t for t in table_configs(debug_config(), probe_env(config.env))}
    assert plain["real"].sampler == plain["imagined"].sampler == "uniform"


def test_prioritized_with_a_cold_tier_is_a_config_error():
    with pytest.raises(ConfigError, match=r"policy.prioritized=true: expected replay.real_disk_capacity=0 .* "
                                          r"got replay.real_disk_capacity=5000"):
        debug_config("policy.prioritized=true", "replay.real_disk_capacity=5000")


def test_prioritized_policy_learner_in_the_in_process_system():
    config = debug_config("policy.prioritized=true", "world_model.publish_every=20")
    system = build_system(config, probe_env(config.env), local=True)
    rollout, policy, model = system.rollout[0].wrapped, system.policy.wrapped, system.world_model.wrapped
    rollout.run(300)
    real = [shard.wrapped._state("real").table for shard in system.shards]
    assert all(table.prioritized for table in real)
    assert all(np.all(table.priorities(np.arange(table.size)) == 1.0) for table in real)

    report = policy.run(max_seconds=30)
    assert report.updates > 0 and np.isfinite(report.metrics["critic_loss"])
    changed = sum(int((table.priorities(np.arange(table.size)) != 1.0).sum()) for table in real)
    assert changed > 0
    # the world model samples the prioritized table too
    assert model.run(max_seconds=30).updates > 0
