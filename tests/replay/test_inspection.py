"""``dynaray replay inspect``: sizes, files, column statistics and rates (replay/inspection.py)."""

from __future__ import annotations

import warnings

import pyarrow as pa
import pytest

from replay.inspection import inspect_replay, run_rates
from replay.stored import OfflineError
from tests.replay.helpers import write_two_shards


def test_inspect_counts_sizes_and_column_stats(tmp_path):
    shards = write_two_shards(tmp_path, chunks=3)
    report = inspect_replay(str(tmp_path))
    table = report["tables"]["real"]
    assert report["shards"] == 2 and table["rows"] == 48 and table["inserted"] == 48
    assert [s["rows"] for s in table["shards"]] == [24, 24]
    assert table["disk_bytes"] == sum(s["disk_bytes"] for s in table["shards"]) > 0
    assert table["episodes"] == 6 and table["truncated"] == 4 and table["terminated"] == 0 and table["writers"] == 2
    stats = {s.name: s for s in table["columns"]}
    assert (stats["reward"].min, stats["reward"].max, stats["reward"].nan) == (0.0, 1023.0, 0)
    assert stats["obs"].component_means[0] == 0.0 and stats["obs"].shape == (4,)
    assert stats["truncated"].true == 4 and stats["seq"].max == 1023
    assert report["rates"] is None
    with pytest.raises(OfflineError, match=r"no table\(s\) \['imagined'\]"):
        inspect_replay(str(tmp_path), tables=["imagined"])
    for shard in shards:
        shard.close()


def test_run_rates_from_metrics():
    metrics = pa.table(
        {
            "env_steps": [100, 200],
            "wall_time_s": [5.0, 10.0],
            "env_steps_per_s": [20.0, 22.0],
            "policy_total_updates": [300, 800],
            "policy_updates_per_s": [60.0, 100.0],
            "replay_insert_rows_per_s": [float("nan"), 21.0],
        }
    )
    rates = run_rates(metrics)
    assert rates["env_steps"] == 200 and rates["wall_time_s"] == 10.0
    assert rates["overall"] == {
        "env_steps_per_s": 20.0,
        "policy_updates_per_s": 80.0,
        "policy_updates_per_env_step": 4.0,
    }
    assert rates["per_report"]["policy_updates_per_s"] == {"mean": 80.0, "last": 100.0}
    assert rates["per_report"]["replay_insert_rows_per_s"] == {"mean": 21.0, "last": 21.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_rates(metrics.slice(0, 0))["overall"] == {}
