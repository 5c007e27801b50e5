"""The metrics facade (system/metrics.py): a no-op without Ray, names and tags, gauge refresh, the role recorders.

The recording path is checked against a fake of ``ray.util.metrics``; tests/system/test_prometheus.py checks the
real one end to end.
"""

from __future__ import annotations

import importlib.util
import pickle
import types
from pathlib import Path

import numpy as np
import pytest

import system.metrics as sm
from actors.imagination import ImaginationReport
from actors.metrics import GatewayRecorder, ImaginationRecorder, RolloutRecorder
from actors.rollout import RolloutReport
from replay.metrics import ShardRecorder
from replay.rate_limiter import RateLimiterConfig
from replay.schema import transition_columns
from replay.shard import ReplayShard
from replay.table import TableConfig
from system.loops import LearnerReport


class FakeMetric:
    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.boundaries = name, tag_keys, boundaries
        self.default_tags: dict = {}
        self.calls: list[tuple[str, float, dict]] = []

    def set_default_tags(self, tags):
        self.default_tags = tags
        return self

    def _record(self, kind, value, tags):
        tags = {**self.default_tags, **(tags or {})}
        assert set(tags) == set(self.tag_keys), (tags, self.tag_keys)
        self.calls.append((kind, value, tags))

    def inc(self, value, tags=None):
        assert value > 0
        self._record("inc", value, tags)

    def set(self, value, tags=None):
        self._record("set", value, tags)

    def observe(self, value, tags=None):
        self._record("observe", value, tags)

    def values(self, **tags) -> list[float]:
        return [v for _, v, t in self.calls if all(t.get(k) == str(x) for k, x in tags.items())]


@pytest.fixture
def fake_ray(monkeypatch):
    """Recording on: metric objects are FakeMetrics, kept by name."""
    made: dict[str, FakeMetric] = {}

    def factory(*args, **kwargs):
        metric = FakeMetric(*args, **kwargs)
        made[metric.name] = metric
        return metric

    backend = types.SimpleNamespace(Counter=factory, Gauge=factory, Histogram=factory)
    monkeypatch.setattr(sm, "_backend", lambda: backend)
    monkeypatch.setattr(sm, "metrics_enabled", lambda: True)
    monkeypatch.setattr(sm, "_run_tag", lambda: "test-run")
    return made


def _rollout_report(**fields) -> RolloutReport:
    base = dict(index=2, writer_id=1, env_steps=10, total_env_steps=10, episodes=(), policy_version=1,
                env_errors=0, planned_steps=0, seconds=0.1)
    return RolloutReport(**{**base, **fields})


def _learner_report(**fields) -> LearnerReport:
    base = dict(updates=3, total_updates=3, updates_per_s=1.0, sample_wait_fraction=0.0, version=1, metrics={})
    return LearnerReport(**{**base, **fields})


def test_the_recorders_implement_the_interfaces_of_their_floors():
    assert issubclass(sm.RolloutMetrics, RolloutRecorder) and issubclass(sm.ImaginationMetrics, ImaginationRecorder)
    assert issubclass(sm.GatewayMetrics, GatewayRecorder) and issubclass(sm.ReplayMetrics, ShardRecorder)


def test_without_ray_every_recorder_is_a_no_op():
    assert not sm.metrics_enabled()
    rollout = sm.RolloutMetrics(0)
    assert not rollout.metrics.enabled
    rollout.record(_rollout_report(episodes=((1.0, 5),)))
    sm.LearnerMetrics("policy").record(_learner_report(metrics={"critic_loss": 0.5}))
    gauge = sm.Metrics("x").gauge("g", "d", ("table",))
    gauge.set(1.0)  # tags are not even checked: nothing is recorded
    gauge.refresh()


def test_the_switch_turns_recording_off(monkeypatch):
    monkeypatch.setenv(sm.ENV_VAR, "0")
    assert not sm.metrics_enabled()
    assert sm.runtime_env_vars(False) == {sm.ENV_VAR: "0"} and sm.runtime_env_vars(True) == {}


def test_names_tags_and_counters(fake_ray):
    metrics = sm.Metrics("rollout", index=3)
    steps = metrics.counter("env_steps", "d")
    assert metrics.counter("env_steps", "d") is steps
    steps.inc(250)
    steps.inc(0)  # counters only go up: ignored
    metric = fake_ray["dynaray_rollout_env_steps"]
    assert metric.tag_keys == ("role", "index", "run")
    assert metric.calls == [("inc", 250.0, {"role": "rollout", "index": "3", "run": "test-run"})]
    with pytest.raises(ValueError, match="already made as a Counter"):
        metrics.gauge("env_steps", "d")
    with pytest.raises(ValueError, match="expected exactly"):
        metrics.gauge("size", "d", ("table",)).set(1.0)
    with pytest.raises(ValueError, match="letters, digits"):
        sm.Metrics("roll-out")


def test_set_total_adds_the_growth_after_a_baseline(fake_ray):
    counter = sm.Metrics("replay").counter("inserted_rows", "d", ("table",))
    for total in (100, 100, 150, 140, 160):
        counter.set_total(total, table="real")
    assert fake_ray["dynaray_replay_inserted_rows"].values() == [50.0, 20.0]


def test_gauges_keep_their_last_values_and_refresh_them(fake_ray):
    metrics = sm.Metrics("replay", 1)
    size = metrics.gauge("size", "d", ("table",))
    size.set(5, table="real")
    size.set(7, table="real")
    size.set(3, table="imagined")
    size.set(float("nan"), table="real")  # unknown: keeps 7
    size.set(None, table="real")
    collected = []
    metrics.every_refresh(lambda: collected.append(1))
    metrics.refresh()
    metric = fake_ray["dynaray_replay_size"]
    assert metric.values(table="real") == [5.0, 7.0, 7.0]
    assert metric.values(table="imagined") == [3.0, 3.0]
    assert collected == [1]


def test_a_failing_collector_does_not_stop_the_refresh(fake_ray):
    metrics = sm.Metrics("replay")
    gauge = metrics.gauge("size", "d")
    gauge.set(1)
    metrics.every_refresh(lambda: 1 / 0)
    metrics.refresh()
    assert fake_ray["dynaray_replay_size"].values() == [1.0, 1.0]


def test_histogram(fake_ray):
    histogram = sm.Metrics("rollout").histogram("call_seconds", "d", [0.1, 1.0])
    histogram.observe(0.5)
    histogram.observe(float("inf"))
    metric = fake_ray["dynaray_rollout_call_seconds"]
    assert metric.boundaries == [0.1, 1.0] and metric.values() == [0.5]


def test_metrics_are_not_pickled(fake_ray):
    metrics = sm.Metrics("rollout")
    with pytest.raises(TypeError, match="process of its role"):
        pickle.dumps(metrics.counter("env_steps", "d"))
    with pytest.raises(TypeError, match="role's process"):
        pickle.dumps(metrics)


def test_rollout_recorder(fake_ray):
    recorder = sm.RolloutMetrics(2)
    recorder.record(_rollout_report(env_steps=250, episodes=((10.0, 20), (20.0, 40)), env_errors=1, seconds=0.5,
                                    policy_version=7))
    recorder.record(_rollout_report(env_steps=250, episodes=(), env_errors=3, seconds=0.5, policy_version=8))
    assert fake_ray["dynaray_rollout_env_steps"].values(index=2) == [250.0, 250.0]
    assert fake_ray["dynaray_rollout_episodes"].values() == [2.0]
    assert fake_ray["dynaray_rollout_episode_return"].values() == [15.0]
    assert fake_ray["dynaray_rollout_episode_length"].values() == [30.0]
    assert fake_ray["dynaray_rollout_env_steps_per_s"].values() == [500.0, 500.0]
    assert fake_ray["dynaray_rollout_env_errors"].values() == [2.0]  # 1 was there before the first report
    assert fake_ray["dynaray_rollout_policy_version"].values() == [7.0, 8.0]


def test_imagination_recorder(fake_ray):
    sm.ImaginationMetrics(0).record(ImaginationReport(index=0, writer_id=1, horizon=3, seconds=1.0, policy_version=2,
                                                      model_version=1, transitions=300, rollouts=2, terminated=4))
    assert fake_ray["dynaray_imagination_transitions"].values() == [300.0]
    assert fake_ray["dynaray_imagination_stopped_rows"].values(reason="terminated") == [4.0]
    assert fake_ray["dynaray_imagination_horizon"].values() == [3.0]


def test_learner_recorder_exports_every_reported_metric(fake_ray):
    recorder = sm.LearnerMetrics("world_model")
    recorder.record(_learner_report(updates=12, total_updates=112, updates_per_s=6.0, sample_wait_fraction=0.25,
                                    version=3, metrics={"loss": 1.5, "val_nll": -0.5}))
    assert fake_ray["dynaray_world_model_updates"].values() == [12.0]
    assert fake_ray["dynaray_world_model_published_version"].values() == [3.0]
    assert fake_ray["dynaray_world_model_loss"].values() == [1.5]
    assert fake_ray["dynaray_world_model_val_nll"].values() == [-0.5]
    assert "dynaray_world_model_total_updates" not in fake_ray


def _shard() -> ReplayShard:
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=20.0)
    table = TableConfig("real", 100, transition_columns((3,), (1,)), (("policy", limiter),))
    return ReplayShard([table], index=1, metrics=sm.ReplayMetrics)


def _chunk(first_seq: int, n: int = 10) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((n, 3), np.float32), "action": np.zeros((n, 1), np.float32),
        "reward": np.zeros(n, np.float32), "next_obs": np.zeros((n, 3), np.float32),
        "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
        "episode_id": np.zeros(n, np.int64), "step": np.arange(n, dtype=np.int64),
        "policy_version": np.zeros(n, np.int64), "writer_id": np.ones(n, np.int64),
        "seq": np.arange(first_seq, first_seq + n, dtype=np.int64),
    }


def test_a_shard_made_without_a_factory_records_nothing():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=20.0)
    shard = ReplayShard([TableConfig("real", 100, transition_columns((3,), (1,)), (("policy", limiter),))])
    assert type(shard._metrics) is ShardRecorder


def test_the_shard_counts_seconds_waited_for_its_rate_limiters():
    shard = _shard()
    assert shard.sample("real", 5, "policy", timeout=0.05) is None  # below min_size: waits, then "not now"
    stats = shard.stats()["real"]
    assert stats["sample_wait_s"] >= 0.04 and stats["samples_waited"] == 1
    assert stats["insert_wait_s"] == 0.0


def test_replay_recorder_reads_the_shard_stats(fake_ray):
    shard = _shard()
    recorder = shard._metrics  # made with the shard: its baseline is the shard's state after recovery
    assert recorder.metrics.enabled
    shard.insert("real", _chunk(0), writer_id=1)
    recorder.collect()
    shard.insert("real", _chunk(10), writer_id=1)
    shard.insert("real", _chunk(10), writer_id=1)  # a duplicate
    shard.sample("real", 5, "policy")
    recorder.collect()
    assert fake_ray["dynaray_replay_inserted_rows"].values(table="real", index=1) == [10.0, 10.0]
    assert fake_ray["dynaray_replay_sampled_rows"].values(table="real") == [5.0]
    assert fake_ray["dynaray_replay_duplicates"].values(table="real") == [1.0]
    assert fake_ray["dynaray_replay_size"].values(table="real")[-1] == 20.0
    assert fake_ray["dynaray_replay_limiter_lag"].values(table="real", consumer="policy")[-1] == 5.0


def test_driver_recorder(fake_ray):
    recorder = sm.DriverMetrics(budget=2000)
    row = {"env_steps": 500, "episodes": 10, "rollout_env_errors": 0, "env_steps_per_s": 100.0,
           "eval_return_mean": float("nan"), "train_return_mean": 12.0, "rollout_policy_staleness": 1.5,
           "policy_version": 4, "rollout_restarts": 0, "imagination_restarts": 0, "rollout_workers": 1,
           "imagination_workers": 1}
    recorder.record(row)
    recorder.record({**row, "env_steps": 750, "rollout_restarts": 1, "store_restarts": 2, "eval_return_mean": 30.0,
                     "stalled": "rollout-1"})
    recorder.record({**row, "env_steps": 750, "stalled": ""})
    assert fake_ray["dynaray_driver_env_steps"].values() == [500.0, 250.0]
    assert fake_ray["dynaray_driver_restarts"].values(restarted="rollout") == [1.0]
    assert fake_ray["dynaray_driver_restarts"].values(restarted="store") == [2.0]
    assert fake_ray["dynaray_driver_stalled"].values(actor="rollout-1") == [1.0, 0.0]
    assert fake_ray["dynaray_driver_eval_return"].values() == [30.0]
    assert fake_ray["dynaray_driver_budget_env_steps"].values() == [2000.0]
    assert fake_ray["dynaray_driver_workers"].values(pool="imagination") == [1.0, 1.0, 1.0]


def test_the_shipped_dashboard_is_what_its_generator_writes():
    script = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "make_dashboard.py"
    spec = importlib.util.spec_from_file_location("make_dashboard", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT.read_text() == module.render(), "run deploy/grafana/make_dashboard.py"
