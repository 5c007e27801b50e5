"""``dynaray bench components``, tiny: every component has its row, the JSON its fields."""

import json

from system.cli import main
from tests.system.bench.markdown import number, table_rows

COMPONENTS = [
    "SACLearner.update, hidden (64, 64), batch 128",
    "SACLearner.update, hidden (256, 256), batch 256",
    "WorldModelLearner.update, 7 x (200,)*4, batch 256",
    "imagination step (policy + WorldModel.step), 1024 rows",
    "ReplayShard.insert, 64-row chunks",
    "ReplayShard.sample, 256 rows",
]


def test_bench_components_times_every_component(tmp_path, capsys):
    out_json = tmp_path / "components.json"
    assert main(["bench", "components", "--seconds", "0.01", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| component | time per call | CPU time per call | rows/s |" in out
    for component in COMPONENTS:
        (row,) = table_rows(out, component)
        assert number(row[1].removesuffix(" ms")) > 0 and number(row[3]) > 0
    report = json.loads(out_json.read_text())
    assert [c["component"] for c in report["costs"]] == COMPONENTS
    assert all(c["calls"] >= 1 and c["per_call_ms"] > 0 for c in report["costs"])
    assert report["machine"]["torch_threads"] == 1
