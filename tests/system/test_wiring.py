"""The same factories as a real run, in one process: every edge carries data, every ratio holds."""

import time

import pytest

from actors.envs import probe_env
from system.config import load_config
from system.wiring import build_system, real_table_limiters


@pytest.fixture
def config():
    return load_config(["debug"], ["world_model.publish_every=20", "replay.insert_timeout_s=5",
                                   "replay.sample_timeout_s=5"])


def total(shards, table):
    return sum(s.wrapped.size(table) for s in shards)


def run_to(loop, updates: int, deadline_s: float = 600.0):
    """``loop.run`` calls until 90% of ``updates`` updates or ``deadline_s``: a loaded machine makes them slowly,
    and the rate limiter, not the clock, is what holds the count (the last call runs against it)."""
    end = time.monotonic() + deadline_s
    report = loop.run(max_seconds=5)
    while report.total_updates < 0.9 * updates and time.monotonic() < end:
        report = loop.run(max_seconds=5)
    return loop.run(max_seconds=2)


def test_every_edge_carries_data_in_process(config):
    spec = probe_env(config.env)
    system = build_system(config, spec, local=True)
    rollout, policy, model = system.rollout[0].wrapped, system.policy.wrapped, system.world_model.wrapped
    imagination = system.imagination[0].wrapped

    # rollout -> real (warm-up inserts are never held back)
    rollout.run(300)
    assert total(system.shards, "real") == 300

    # real -> learners, bounded by their rate limiters' error buffers; learners -> store
    error_steps = config.replay.error_buffer_steps
    policy_report = run_to(policy, config.policy.updates_per_step * error_steps)
    model_report = run_to(model, config.world_model.updates_per_step * error_steps)
    assert policy_report.total_updates == pytest.approx(config.policy.updates_per_step * error_steps, rel=0.1)
    assert model_report.total_updates == pytest.approx(config.world_model.updates_per_step * error_steps, rel=0.1)
    versions = system.store.wrapped.versions()
    assert versions["policy"] >= 1 and versions["world_model"] >= 1

    # real start states + both weights -> imagination -> imagined
    report = imagination.run(env_steps=300, max_seconds=30)
    assert report.model_version >= 1 and report.policy_version >= 1
    assert report.transitions > 0 and total(system.shards, "imagined") == report.transitions

    # store -> rollout: the policy acts, rows carry its version
    rollout.run(100)
    rows = system.shards[0].wrapped.sample("real", 2000)
    assert (rows["policy_version"] >= 1).any()


def test_rate_limiter_ratios_come_from_config(config):
    limiters = real_table_limiters(config)
    n_real = round(config.policy.batch_size * config.policy.real_ratio)
    assert limiters["policy"] == (config.policy.updates_per_step * n_real, config.policy.learning_starts)
    assert limiters["world_model"][0] == config.world_model.updates_per_step * config.world_model.batch_size
    assert limiters["imagination"][0] == config.imagination.starts_per_step

    model_free = load_config(["debug", "model_free"])
    assert set(real_table_limiters(model_free)) == {"policy"}
    policy = model_free.policy
    assert real_table_limiters(model_free)["policy"][0] == policy.updates_per_step * policy.batch_size


def test_rollout_workers_get_a_world_model_only_with_the_planner(config):
    from system.weights import WeightsPublisher

    spec = probe_env(config.env)
    assert build_system(config, spec, local=True).rollout[0].wrapped._planner is None
    planning = load_config(["debug"], ["rollout.planner.enabled=true", "rollout.planner.num_candidates=2",
                                       "rollout.planner.horizon=2"])
    system = build_system(planning, spec, local=True)
    rollout = system.rollout[0].wrapped
    WeightsPublisher(system.store, "policy").publish(system.policy.wrapped.learner.policy_state())
    WeightsPublisher(system.store, "world_model").publish(system.world_model.wrapped.learner.model_state())

    # store -> rollout: "policy" and "world_model" both polled, the planner acts; rollout -> real
    report = rollout.run(30, random_steps=0)
    assert report.planned_steps == 30 and report.policy_version == 1
    rollout.flush()
    assert total(system.shards, "real") == 30


def test_auto_termination_is_resolved_once_for_every_world_model():
    """`world_model.termination_fn: auto` on InvertedPendulum-v5: imagination and planning use its known function."""
    planning = load_config(["debug"], ["rollout.planner.enabled=true"])
    assert planning.world_model.termination_fn == "auto"
    system = build_system(planning, probe_env(planning.env), local=True)
    models = [system.imagination[0].wrapped._model, system.rollout[0].wrapped._model]
    assert [m._termination_name for m in models] == ["learners.termination:inverted_pendulum"] * 2
    learned = load_config(["debug"], ["world_model.termination_fn=null"])
    system = build_system(learned, probe_env(learned.env), local=True)
    assert system.imagination[0].wrapped._model._termination_fn is None
