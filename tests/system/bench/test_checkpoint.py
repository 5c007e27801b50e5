"""``dynaray bench checkpoint``, tiny: one preset, one checkpoint; the row and the JSON have every figure."""

import json

from system.cli import main
from tests.system.bench.markdown import table_rows


def test_bench_checkpoint_measures_size_pause_write_and_load(tmp_path, capsys):
    out_json = tmp_path / "checkpoint.json"
    assert main(["bench", "checkpoint", "--presets", "debug", "--rounds", "1", "--updates", "1",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out, "debug (InvertedPendulum-v5)")
    assert row[1].endswith(" MB") and all(cell.endswith(" ms") for cell in row[2:])
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["bytes"] > 0 and result["write_ms"] > 0 and result["load_ms"] > 0
    assert set(result["pause_ms"]) == {"policy", "world_model"}
