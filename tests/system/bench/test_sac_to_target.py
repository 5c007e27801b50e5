"""``dynaray bench sac-to-target``, tiny: the per-seed table, the median, the JSON."""

import json

from system.cli import main
from tests.system.bench.markdown import table_rows

TINY = ["--budget", "40", "--warmup", "20", "--eval-every", "20", "--updates-per-step", "1",
        "--set", "hidden_sizes=[16,16]", "batch_size=16"]


def test_bench_sac_to_target_reports_each_seed(tmp_path, capsys):
    out_json = tmp_path / "sac.json"
    assert main(["bench", "sac-to-target", "--seeds", "0", "1", "--target", "0", *TINY, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert [r[1] for r in table_rows(out, "0") + table_rows(out, "1")] == ["20", "20"]
    assert "env steps to eval >= 0, seeds [0, 1]: 20 / 20; median 20" in out
    report = json.loads(out_json.read_text())
    assert report["median_steps"] == 20 and [s["seed"] for s in report["seeds"]] == [0, 1]
    assert report["settings"]["overrides"] == {"hidden_sizes": [16, 16], "batch_size": 16}


def test_bench_sac_to_target_not_reached(capsys):
    assert main(["bench", "sac-to-target", "--seeds", "0", "--target", "1e9", *TINY]) == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out, "0")
    assert row[1] == "not reached in 40"
    assert "seeds [0]: not reached in 40; median inf" in out


def test_bench_sac_to_target_rejects_a_bad_policy_field(capsys):
    assert main(["bench", "sac-to-target", "--set", "hidden=[16]"]) == 2
    assert "--set:" in capsys.readouterr().err
