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
