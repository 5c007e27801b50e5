"""``dynaray bench sac``, tiny: its tables have their rows and columns, with and without Stable-Baselines3.

Nothing here asserts a speed; the numbers are only checked to be positive.
"""

import json

import pytest
import torch

from system.bench import sac as bench_sac
from system.bench.sac import MATMULS, Operand, matmul_calls, matmuls_alone, ours, sb3_import_error, update_flops
from system.cli import main
from tests.system.bench.markdown import number, table_rows

HEADER = (
    "| obs x action | variant | updates/s | updates/CPU-s | SB3 updates/s | SB3 updates/CPU-s | x SB3 | x SB3 (CPU) "
    "| GFLOP/s (CPU) | of matmul peak | its matmuls alone, of peak |"
)
TINY = ["--dims", "5x2", "--updates", "1", "--rounds", "2", "--warmup", "1", "--peak-repeats", "1"]


def test_bench_sac_ours_only_when_sb3_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_sac, "sb3_import_error", lambda: "ModuleNotFoundError: no stable_baselines3")
    out_json = tmp_path / "sac.json"
    assert main(["bench", "sac", *TINY, "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "pip install stable-baselines3" in captured.err
    assert HEADER in captured.out
    rows = table_rows(captured.out, "5 x 2")
    assert [r[1] for r in rows] == ["twin", "twin_bf16", "redq", "redq_bf16", "layernorm"]
    for row in rows:
        assert len(row) == 11
        assert all(number(row[i]) > 0 for i in (2, 3, 8, 9, 10))
        assert row[4:8] == ["-", "-", "-", "-"]
    assert "x SB3 SAC" not in captured.out  # no ratio without SB3; the peak's targets stay
    assert "| GFLOP/s of the fp32 matmul peak (twin_bf16, obs 5, action 2) | " in captured.out
    assert "matmul peak (2048x2048 fp32 torch.mm, one thread, best of 1)" in captured.out

    report = json.loads(out_json.read_text())
    assert report["sb3_error"] and not report["settings"]["sb3"]
    assert [t["goal"] for t in report["targets"]] == [0.85, 0.85]
    assert [r["implementation"] for r in report["rates"]] == ["ours", "matmuls"] * 5
    assert all(len(r["wall"]) == len(r["cpu"]) == 2 for r in report["rates"])
    assert report["machine"]["torch_threads"] == 1 and report["peak"]["gflops_cpu"] > 0


@pytest.mark.skipif(sb3_import_error() is not None, reason="Stable-Baselines3 is not installed")
def test_bench_sac_against_sb3(tmp_path, capsys):
    out_json = tmp_path / "sac.json"
    assert main(["bench", "sac", *TINY, "--variants", "twin", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out, "5 x 2")
    assert row[1] == "twin" and all(number(c) > 0 for c in row[2:11])
    assert "| updates/s x SB3 SAC (twin critics, obs 5, action 2) |" in out
    report = json.loads(out_json.read_text())
    assert [r["implementation"] for r in report["rates"]] == ["ours", "matmuls", "sb3"]
    assert report["machine"]["stable_baselines3"] and report["rows"][0]["ratio"] > 0
    assert isinstance(report["targets"][0]["met"], bool)


def test_update_flops_counts_forward_and_backward_matmuls():
    b, o, a, h = 4, 3, 2, 8
    critic = (o + a) * h + h * h + h  # multiply-adds per row of one critic
    actor = o * h + h * h + h * 2 * a
    expected = 2 * b * (
        actor + 2 * critic  # target: actor on next obs, 2 target critics
        + 2 * (3 * critic - (o + a) * h)  # critic loss: forward, weight and input gradients (no first-layer input)
        + actor + 2 * 2 * critic  # actor loss: actor forward, critics forward and input gradients
        + 2 * actor - o * h  # actor weight and input gradients (no first-layer input)
    )
    assert update_flops(o, a, (h, h), 2, 2, b) == expected
    # REDQ: the target evaluates 2 of the 10 target critics, 8 fewer forwards than all 10
    assert update_flops(o, a, (h, h), 10, 10, b) - update_flops(o, a, (h, h), 10, 2, b) == 8 * 2 * b * critic


@pytest.mark.parametrize("variant, dtype", [("twin", torch.float32), ("twin_bf16", torch.bfloat16)])
def test_matmul_calls_record_every_matmul_of_an_update_as_the_kernels_saw_it(variant, dtype):
    calls = matmul_calls(ours(5, 2, variant))
    assert calls and {name for name, _, _ in calls} <= set(MATMULS)
    operands = [a for _, args, _ in calls for a in args if isinstance(a, Operand)]
    # under bf16 autocast every matmul runs on bf16 operands: none is left in fp32
    assert {dtype_ for _, _, dtype_ in operands} == {dtype}
    # the backward's weight gradients read transposed operands: their layouts are kept
    assert any(stride[-2] < stride[-1] for shape, stride, _ in operands if len(shape) >= 2 and min(shape) > 1)
    matmuls_alone(calls)(2)  # replays on operands of those layouts without an error


@pytest.mark.parametrize("args, message", [
    (["--dims", "17"], "expected comma-separated OBSxACTION sizes"),
    (["--variants", "twin,quad"],
     "expected a comma-separated list of ['twin', 'twin_bf16', 'redq', 'redq_bf16', 'layernorm']"),
    (["--updates", "0"], "expected a positive integer"),
])
def test_bench_sac_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "sac", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
