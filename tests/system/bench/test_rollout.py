"""``dynaray bench rollout`` in process, tiny and without Ray: its tables have their rows and columns.

Nothing here asserts a speed; the numbers are only checked to be positive.
"""

import json

import numpy as np
import pytest

from system.bench.rollout import staleness
from system.cli import main
from tests.system.bench.markdown import number, table_rows

HEADER = (
    "| env | envs/worker | workers | backend | raw steps/s | collected steps/s | ratio | raw steps/CPU-s "
    "| collected steps/CPU-s | CPU ratio | staleness p50 / p90 (act) | staleness p50 / p90 (insert) | publishes |"
)
TINY = ["--envs", "Hopper-v5", "--envs-per-worker", "1,2", "--seconds", "0.2", "--rounds", "2",
        "--publish-interval", "0.01"]


def test_bench_rollout_in_process_prints_every_configuration(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "rollout", *TINY, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert HEADER in out

    rows = table_rows(out, "Hopper-v5")
    assert [(r[1], r[2], r[3]) for r in rows] == [("1", "1", "process"), ("2", "1", "process")]
    for row in rows:
        assert len(row) == 13
        raw, collected, ratio, raw_cpu, collected_cpu, cpu_ratio = (number(c) for c in row[4:10])
        assert raw > 0 and collected > 0 and ratio > 0 and raw_cpu > 0 and collected_cpu > 0 and cpu_ratio > 0
        for cell in row[10:12]:
            p50, p90 = (float(v) for v in cell.split(" / "))
            assert 0 <= p50 <= p90
        assert number(row[12]) >= 1
    assert "| scaling |" not in out  # no Ray, no 2-vs-1 table

    assert "| target | measured | goal | met |" in out
    assert "staleness p50, versions (Hopper-v5, process, 1 worker(s), 1 envs)" in out
    assert "one torch thread per worker; load average" in out

    report = json.loads(out_json.read_text())
    assert report["settings"]["envs"] == ["Hopper-v5"] and report["settings"]["workers"] == [1]
    assert report["machine"]["torch_threads_per_worker"] == 1 and report["machine"]["cpus"] >= 1
    assert len(report["results"]) == 2 and not report["scaling"]
    for result in report["results"]:
        assert len(result["raw"]) == len(result["collected"]) == 1
        assert result["collected"][0]["steps"] > 0 and result["raw"][0]["steps"] > 0
        # every collected row was chosen by the policy with published weights, and reached replay
        assert result["staleness_act"]["rows"] == result["collected"][0]["steps"]
        assert result["staleness_insert"]["rows"] == result["collected"][0]["steps"]


def test_bench_rollout_rejects_an_unknown_env(capsys):
    assert main(["bench", "rollout", "--envs", "Hopper-v55", "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "Hopper-v55" in err and "Hopper-v5" in err


@pytest.mark.parametrize("args", [["--envs-per-worker", "0"], ["--seconds", "-1"], ["--rounds", "x"],
                                  ["--vector-mode", "threads"]])
def test_bench_rollout_rejects_bad_settings(args):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "rollout", *args])
    assert exc.value.code == 2


def test_staleness_counts_versions_published_before_each_row():
    publish_times = [1.0, 2.0, 3.0]  # versions 1, 2, 3
    times = np.array([1.5, 2.5, 3.5, 3.5])
    versions = np.array([1, 1, 2, 3])
    assert staleness(times, versions, None, publish_times).tolist() == [0, 1, 1, 0]
    assert staleness(times, versions, np.array([2, 1, 0, 3]), publish_times).tolist() == [0, 0, 1, 0, 0, 0]


def test_the_probes_are_the_configs_workers_built_by_the_wiring():
    from actors.envs import probe_env
    from system.bench.rollout import CollectorProbe, _tables
    from system.config import load_config
    from system.wiring import System, build_replay, build_rollout, build_store, table_configs

    config = load_config(["debug"], ["env.id=Hopper-v5", "rollout.chunk_length=5", "replay.num_shards=3"])
    spec = probe_env(config.env)
    system = System(local=True)
    build_replay(config, _tables(config, spec), system)
    build_store(config, system)
    pool = build_rollout(config, spec, system, role=CollectorProbe)
    (probe,) = (handle.wrapped for handle in pool.values())
    try:
        assert isinstance(probe, CollectorProbe) and probe.worker.config is config.rollout
        assert probe.worker._replay._client.config is config.replay
        assert len(system.shards) == 3 and system.worker_factories["rollout"]
        (real,) = (t for t in table_configs(config, spec) if t.name == "real")
        (table,) = _tables(config, spec)
        assert table.limiters == () and real.limiters  # nothing samples in the bench: no rate limiter
        assert (table.capacity, table.columns) == (real.capacity, real.columns)
    finally:
        probe.close()


def test_bench_rollout_takes_presets_and_overrides(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "rollout", "debug", "rollout.chunk_length=5", *TINY, "--envs-per-worker", "2",
                 "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["settings"]["config_items"] == ["debug", "rollout.chunk_length=5"]
    assert report["settings"]["config"]["rollout"]["chunk_length"] == 5
    assert report["settings"]["hidden_sizes"] == report["settings"]["config"]["policy"]["hidden_sizes"]
    (result,) = report["results"]
    assert result["staleness_act"]["rows"] == result["collected"][0]["steps"] > 0


def test_bench_rollout_rejects_a_bad_preset_or_override(capsys):
    assert main(["bench", "rollout", "no_such_preset", "--seconds", "0.1"]) == 2
    assert "unknown preset 'no_such_preset'" in capsys.readouterr().err
    assert main(["bench", "rollout", "rollout.chunk_lenght=5", "--seconds", "0.1"]) == 2
    assert "unknown config key 'rollout.chunk_lenght'" in capsys.readouterr().err


@pytest.mark.ray
def test_bench_rollout_on_ray_builds_one_and_two_workers(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "rollout", "--envs", "Hopper-v5", "--envs-per-worker", "2", "--seconds", "0.4",
                 "--rounds", "1", "--publish-interval", "0.05", "--ray", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = [r for r in table_rows(out, "Hopper-v5") if len(r) == 13]  # not the scaling table's row
    assert [(r[2], r[3]) for r in rows] == [("1", "process"), ("1", "ray"), ("2", "ray")]
    report = json.loads(out_json.read_text())
    for result in report["results"]:
        assert len(result["collected"]) == result["workers"]
        assert all(turns["steps"] > 0 for turns in result["collected"])
        assert result["staleness_act"]["rows"] == sum(turns["steps"] for turns in result["collected"])
    (scaling,) = report["scaling"]
    assert scaling["workers"] == 2 and scaling["speedup"] > 0
