"""``dynaray bench device`` and tests/benchmarks/device_check.sh: the rates in process, the run's overrides, and the
script's CPU fallback end to end (Ray: only inside tests/run.sh's network namespace)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from system.bench.device import GPU_RUN, SMALL_RUN, RunResult, run_overrides
from system.cli import main
from system.config import load_config

ROOT = Path(__file__).resolve().parents[3]


def test_run_overrides_are_a_valid_hopper_config_with_a_wall_budget():
    items = run_overrides(small=True, gpu=True, seconds=20, runs_dir="/tmp/x", name="n")
    config = load_config(["hopper"], [i for i in items if not i.startswith("name=")])
    assert config.run.max_wall_s == 20 and config.run.target_return is None
    assert config.policy.hidden_sizes == (64, 64) and config.placement.policy.num_gpus == 0.5
    assert config.imagination.num_gpus == 0.25 and config.imagination.device == "auto"
    full = run_overrides(small=False, gpu=False, seconds=300, runs_dir="/tmp/x", name="n")
    assert not set(full) & (set(SMALL_RUN) | set(GPU_RUN))
    assert load_config(["hopper"], [i for i in full if not i.startswith("name=")]).policy.hidden_sizes == (256, 256)


def test_bench_device_small_rates_in_process(tmp_path, capsys):
    out = tmp_path / "device.json"
    assert main(["bench", "device", "--small", "--seconds", "0.2", "--run-seconds", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    gpu = ["sac_eager", "sac_bf16", "sac_compiled"] if report["settings"]["device"].startswith("cuda") else []
    assert [r["name"] for r in report["rates"]] == ["sac", *gpu, "world_model", "imagination"]
    assert all(r["per_s"] > 0 and r["calls"] >= 1 for r in report["rates"])
    assert report["run"] is None and report["settings"]["device"] in ("cpu", "cuda")
    assert "| sac updates |" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "inf", "x"])
def test_bench_device_rejects_bad_run_seconds(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "device", "--run-seconds", value])
    assert exc.value.code == 2
    assert "expected a finite number of seconds >= 0" in capsys.readouterr().err


def test_run_result_defaults_mean_no_eval_read():
    assert RunResult(["x"], 1, 2.0).env_steps is None


@pytest.mark.ray
def test_device_check_script_cpu_fallback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "tests/benchmarks/device_check.sh"), "--small", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["settings"]["small"] is True
    assert all(r["per_s"] > 0 for r in report["rates"])
    run = report["run"]
    assert run["exit_code"] == 0 and run["env_steps"] > 0 and run["env_steps_per_s"] > 0
    assert run["eval_return"] is not None
    assert "| hopper run |" in done.stdout
