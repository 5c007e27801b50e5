"""``dynaray bench planner``, tiny: the planner and the policy per call, a worker with each; sizes from the config."""

import json

from system.cli import main
from tests.system.bench.markdown import number, table_rows


def test_bench_planner_on_the_debug_preset(tmp_path, capsys):
    out_json = tmp_path / "planner.json"
    assert main(["bench", "planner", "debug", "--envs-per-worker", "1,2", "--candidates", "3", "--horizon", "2",
                 "--steps", "3", "--worker-steps", "20", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for n in ("1", "2"):
        calls, worker = table_rows(out, n)
        policy_ms, planner_ms = ([float(v) for v in cell.split(" / ")] for cell in calls[1:3])
        assert 0 < policy_ms[0] <= policy_ms[1] <= policy_ms[2] and 0 < planner_ms[0] <= planner_ms[1]
        assert number(worker[1]) > 0 and number(worker[2]) > 0
    assert "InvertedPendulum-v5, K=3, H=2" in out
    report = json.loads(out_json.read_text())
    assert report["settings"]["planner"]["enabled"] and report["settings"]["planner"]["num_candidates"] == 3
    assert report["settings"]["config_items"] == ["debug"]
    assert [w["envs"] for w in report["workers"]] == [1, 2]
