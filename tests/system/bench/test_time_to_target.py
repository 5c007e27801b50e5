"""``dynaray bench time-to-target`` without training: reading a run's evals, the commands, the report."""

import json
from argparse import Namespace

import pyarrow as pa
import pyarrow.parquet as pq

from system.bench import time_to_target
from system.bench.time_to_target import Result, first_reach, train_command
from system.cli import main
from tests.system.bench.markdown import table_rows


def write_evals(run_dir, rows):
    run_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(
        [{"env_steps": s, "wall_time_s": w, "return_mean": r} for s, w, r in rows]), run_dir / "evals.parquet")


def test_first_reach_is_the_earliest_eval_at_or_above_the_target(tmp_path):
    write_evals(tmp_path / "run", [(500, 50.0, 960.0), (250, 20.0, 40.0), (750, 70.0, 1000.0), (1000, 90.0, None)])
    assert first_reach(tmp_path / "run", 950) == (500, 50.0, 1000.0)
    assert first_reach(tmp_path / "run", 2000) == (None, None, 1000.0)


def test_train_command_merges_presets_then_sets_the_bench_keys_then_the_extra_overrides():
    args = Namespace(runs_dir="/tmp/bench", target=950.0, set=["run.total_env_steps=5000"])
    command = train_command("inverted_pendulum+model_free", 3, "n", args)
    assert command[1:] == ["-m", "system.cli", "train", "inverted_pendulum", "model_free", "seed=3", "name=n",
                           "run.runs_dir=/tmp/bench", "run.target_return=950.0", "run.progress=false",
                           "run.total_env_steps=5000"]


def test_bench_time_to_target_table_and_medians(tmp_path, capsys, monkeypatch):
    steps = {("a", 0): 1000, ("a", 1): 2000, ("a", 2): None, ("b", 0): 500, ("b", 1): None, ("b", 2): None}

    def fake_run(preset, seed, args, stamp):
        if (preset, seed) == ("b", 2):
            return None  # the run failed
        reached = steps[preset, seed]
        return Result(preset, seed, reached, None if reached is None else reached / 10, 1000.0, 60.0,
                      f"{args.runs_dir}/{preset}-{seed}")

    monkeypatch.setattr(time_to_target, "train_run", fake_run)
    out_json = tmp_path / "ttt.json"
    code = main(["bench", "time-to-target", "--presets", "a", "b", "--seeds", "0", "1", "2", "--runs-dir",
                 str(tmp_path), "--json", str(out_json)])
    assert code == 1  # one run failed; the others are reported
    out = capsys.readouterr().out
    assert [(r[1], r[2], r[3]) for r in table_rows(out, "a")] == [("0", "1000", "100"), ("1", "2000", "200"),
                                                                   ("2", "not reached", "-")]
    assert "a: median env steps to target: 2000 (2/3 seeds reached it)" in out
    assert "b: median env steps to target: not reached (above the budget) (1/2 seeds reached it)" in out
    assert "b seed 2: the run failed" in out
    report = json.loads(out_json.read_text())
    assert report["medians"] == {"a": {"median_steps": 2000, "reached": 2, "runs": 3},
                                 "b": {"median_steps": None, "reached": 1, "runs": 2}}
    assert report["failed"] == [{"preset": "b", "seed": 2}]
