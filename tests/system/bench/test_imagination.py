"""``dynaray bench imagination``, tiny: its tables have their rows and columns, the JSON its fields.

Nothing here asserts a speed; the numbers are only checked to be positive.
"""

import json

from system.bench.imagination import linear_flops
from system.cli import main
from tests.system.bench.markdown import number, table_rows

HEADER = (
    "| env | obs, act | rows | forward GFLOP/s | of peak | forward GFLOP/CPU-s | of peak (CPU) | step transitions/s "
    "| transitions/CPU-s | step GFLOP/CPU-s | of peak (CPU) |"
)
TINY = ["--envs", "InvertedPendulum-v5", "--batch-sizes", "8,16", "--ensemble", "3", "--elites", "2",
        "--hidden", "16,16", "--policy-hidden", "8", "--peak-sizes", "32,64", "--seconds", "0.02", "--rounds", "2"]


def test_bench_imagination_prints_every_configuration(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "imagination", *TINY, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out

    peak_rows = table_rows(out, "torch.mm 32x32") + table_rows(out, "torch.mm 64x64")
    assert len(peak_rows) == 2 and all(number(c) > 0 for row in peak_rows for c in row[1:])
    assert HEADER in out
    rows = table_rows(out, "InvertedPendulum-v5")
    assert [(r[1], r[2]) for r in rows] == [("4, 1", "8"), ("4, 1", "16")]
    for row in rows:
        assert len(row) == 11
        assert all(number(c) >= 0 for c in row[3:])  # tiny models: GFLOP/s may print as 0.0
        assert number(row[7]) > 0 and number(row[8]) > 0
    assert "| forward / peak, per CPU second (InvertedPendulum-v5, 16 rows) |" in out
    assert "one torch thread, float32; load average" in out

    report = json.loads(out_json.read_text())
    assert report["settings"]["ensemble_size"] == 3 and report["settings"]["hidden_sizes"] == [16, 16]
    assert report["machine"]["torch_threads"] == 1 and len(report["machine"]["load_average_at_end"]) == 3
    assert set(report["peak"]) == {"32", "64"} and report["peak_flops_per_cpu_s"] > 0
    assert [(r["env"], r["batch"]) for r in report["results"]] == [("InvertedPendulum-v5", 8),
                                                                   ("InvertedPendulum-v5", 16)]
    for result in report["results"]:
        assert len(result["forward_flops"]["rounds"]) == 2 and len(result["step_transitions"]["rounds"]) == 2
        # FLOPs of 3 members of 5 -> 16 -> 16 -> 11; a transition: 2 elites and the policy 4 -> 8 -> 2
        member = 2 * (5 * 16 + 16 * 16 + 16 * 11)
        assert result["forward_flops"]["rounds"][0]["work"] % (3 * member * result["batch"]) == 0
        assert result["step_flops_per_transition"] == 2 * member + 2 * (4 * 8 + 8 * 2)
        # every row of a horizon-1 rollout is written (the model's outputs are finite)
        first = result["step_transitions"]["rounds"][0]
        assert first["work"] == first["calls"] * result["batch"]
        assert 0 < result["forward_peak_fraction_cpu"] and 0 < result["step_peak_fraction_cpu"]
    assert len(report["targets"]) == 2


def test_linear_flops_counts_two_per_multiply_add():
    assert linear_flops([5, 16, 11]) == 2 * (5 * 16 + 16 * 11)


def test_bench_imagination_rejects_more_elites_than_members(capsys):
    assert main(["bench", "imagination", "--ensemble", "3", "--elites", "4"]) == 2
    assert "--elites 4: expected at most --ensemble (3)" in capsys.readouterr().err
