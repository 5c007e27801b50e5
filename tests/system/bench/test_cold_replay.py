"""``dynaray bench cold-replay``, tiny: three sample cases, the insert and disk facts."""

import json

from system.cli import main
from tests.system.bench.markdown import number, table_rows


def test_bench_cold_replay_small_table(tmp_path, capsys):
    out_json = tmp_path / "cold.json"
    assert main(["bench", "cold-replay", "--rows", "20000", "--dir", str(tmp_path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    cases = ["all 20,000 rows in memory", "10% in memory, 90% on disk, page cache warm",
             "10% in memory, 90% on disk, page cache dropped before each batch"]
    for case in cases:
        (row,) = table_rows(out, case)
        assert 0 < number(row[1]) <= number(row[2]) and number(row[3]) > 0
    assert "- disk:" in out and "bytes per row in segment files" in out
    report = json.loads(out_json.read_text())
    assert [s["case"] for s in report["samples"]] == cases
    assert report["raw_bytes"] == 206 and report["file_rows"] >= 18_000 and report["disk_files"] >= 1
    assert [size for size, _ in report["row_group_decode_ms"]] == [1024, 16384]
    assert not list(tmp_path.glob("cold-replay-*"))  # the segment files are removed
