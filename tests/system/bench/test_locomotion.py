"""``dynaray bench locomotion`` without training (the commands, the medians and ratios, the report, bad input), and
Stable-Baselines3's side for a few hundred env steps where it imports."""

import json
import os
import signal
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

from system.bench import locomotion
from system.bench.harness import write_partial
from system.bench.locomotion import Run, command, return_at, sb3_import_error
from system.cli import main
from system.plot_cli import load_curve
from tests.system.bench.markdown import number, table_rows

ARGS = Namespace(env_steps=15000, eval_every=1000, episodes=5, set=["policy.updates_per_step=5"])


def test_commands_run_the_envs_preset_then_the_bench_keys_then_the_overrides(tmp_path):
    run_dir = tmp_path / "Hopper-v5-dynaray-s1-x"
    ours = command("Hopper-v5", "dynaray", 1, run_dir, ARGS)
    assert ours[1:6] == ["-m", "system.cli", "train", "hopper", "seed=1"]
    assert ours[-1] == "policy.updates_per_step=5" and "run.total_env_steps=15000" in ours
    assert {"eval.every_steps=1000", "eval.episodes=5", f"name={run_dir.name}", f"run.runs_dir={tmp_path}"} <= set(ours)
    free = command("HalfCheetah-v5", "model_free", 0, run_dir, ARGS)
    assert free[4:6] == ["halfcheetah", "model_free"]
    sb3 = command("Hopper-v5", "sb3", 2, run_dir, ARGS)
    assert sb3[1:3] == ["-m", "system.bench.sb3_sac_worker"] and sb3[sb3.index("--seed") + 1] == "2"
    assert sb3[sb3.index("--out") + 1] == str(run_dir) and "policy.updates_per_step=5" not in sb3


def test_a_runs_return_at_a_budget_is_its_newest_eval_at_or_before_it():
    evals = [{"env_steps": 1000, "return_mean": 10.0}, {"env_steps": 2100, "return_mean": 30.0}]
    assert return_at(evals, 999) is None
    assert return_at(evals, 2000) == 10.0 and return_at(evals, 2100) == 30.0 and return_at(evals, 9000) == 30.0


def test_the_random_policys_return_is_the_same_every_time_and_low():
    first = locomotion.random_return("Hopper-v5", episodes=3)
    assert first == locomotion.random_return("Hopper-v5", episodes=3)
    assert -50.0 < first < 100.0  # random actions fall within tens of steps at about 1 per step


def test_no_ratio_over_random_where_sb3_is_not_above_it():
    report = locomotion.Report({"envs": ["Hopper-v5"], "systems": ["dynaray", "sb3"], "from_steps": 1000,
                                "env_steps": 1000, "eval_every": 1000}, {}, random={"Hopper-v5": 50.0})
    report.runs = [Run("Hopper-v5", "dynaray", 0, "d", ["x"], evals=evals(300.0)),
                   Run("Hopper-v5", "sb3", 0, "d", ["x"], evals=evals(40.0))]
    assert report.medians()[0]["over_random"] is None and report.medians()[0]["ratio"] == 7.5
    report.random = {}  # an older report: no floor, no ratio over it
    report.runs[1].evals = evals(60.0)
    assert report.medians()[0]["over_random"] is None


def test_a_failed_run_has_no_return_past_its_last_eval():
    run = Run("HalfCheetah-v5", "dynaray", 0, "d", ["x"], evals=[{"env_steps": 4000, "return_mean": -824.1}],
              error="exit code 143: stopped")
    assert run.reached(4000) and not run.reached(10000) and run.stopped
    run.error = "exit code 1: boom"
    assert run.reached(4000) and not run.reached(10000) and not run.stopped
    run.error = None
    assert run.reached(10000)


def evals(*returns, every=1000):
    return [{"env_steps": every * (i + 1), "wall_time_s": 10.0 * (i + 1), "return_mean": r}
            for i, r in enumerate(returns)]


def test_medians_over_seeds_ratios_and_targets(tmp_path, capsys, monkeypatch):
    curves = {  # (system, seed) -> returns at 1000 and 2000 env steps
        ("dynaray", 0): (100.0, 900.0), ("dynaray", 1): (300.0, 700.0), ("dynaray", 2): (200.0, 800.0),
        ("sb3", 0): (100.0, 300.0), ("sb3", 1): (-50.0, 500.0), ("sb3", 2): (-20.0, 400.0),
    }

    def fake_run(env, system, seed, args, stamp):
        run = Run(env, system, seed, str(tmp_path / f"{system}-{seed}"), ["x"], process_s=5.0,
                  evals=evals(*curves[system, seed]))
        if (system, seed) == ("sb3", 2):
            run.error = "exit code 1: boom"
        return run

    monkeypatch.setattr(locomotion, "one_run", fake_run)
    monkeypatch.setattr(locomotion, "sb3_import_error", lambda: None)
    monkeypatch.setattr(locomotion, "random_return", lambda env: -100.0)
    out_json = tmp_path / "loco.json"
    code = main(["bench", "locomotion", "--envs", "Hopper-v5", "--systems", "dynaray", "sb3", "--seeds", "0", "1",
                 "2", "--env-steps", "2000", "--eval-every", "1000", "--from-steps", "1000", "--runs-dir",
                 str(tmp_path), "--json", str(out_json)])
    assert code == 1  # a run failed; the others are reported
    out = capsys.readouterr().out
    rows = [r for r in table_rows(out, "Hopper-v5") if len(r) == 6 and r[1].isdigit()]  # the medians table
    assert [(r[1], number(r[2]), number(r[3])) for r in rows] == [("1000", 200.0, -20.0), ("2000", 800.0, 400.0)]
    assert [r[4] for r in rows] == ["-", "2.00"]  # no ratio where SB3's median is not positive
    assert [r[5] for r in rows] == ["3.75", "1.80"]  # over the random policy's -100: 300 / 80 and 900 / 500
    report = json.loads(out_json.read_text())
    assert report["random"] == {"Hopper-v5": -100.0} and report["medians"][0]["over_random"] == 3.75
    assert [(t["measured"], t["met"]) for t in report["targets"]] == [(2.0, True)]
    assert [r["error"] is not None for r in report["runs"]].count(True) == 1
    assert "FAILED" in out


@pytest.mark.parametrize("args, message", [
    (["--envs", "Ant-v5"], "--envs Ant-v5: no dynaray preset for it"),
    (["--env-steps", "5000", "--from-steps", "6000"], "--from-steps 6000: expected at most --env-steps (5000)"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys):
    assert main(["bench", "locomotion", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(sb3_import_error() is not None, reason="Stable-Baselines3 does not import here (bench extra)")
def test_sb3s_run_is_a_run_directory_dynaray_plot_reads(tmp_path):
    from system.bench.sb3_sac_worker import main as worker

    out = tmp_path / "sb3-run"
    worker(["--env", "Pendulum-v1", "--seed", "0", "--steps", "250", "--eval-every", "100", "--episodes", "1",
            "--out", str(out)])
    curve = load_curve(Path(out), "sb3")
    assert curve.env_id == "Pendulum-v1" and curve.env_steps == [100, 200, 250]
    assert all(w >= 0 for w in curve.wall_time_s) and curve.wall_time_s == sorted(curve.wall_time_s)
    assert all(-2000 < m <= 0 for m in curve.mean)  # Pendulum's returns: 200 steps of at most 0 and above -16.3


def test_the_json_holds_every_finished_run_before_the_bench_ends(tmp_path, monkeypatch):
    out_json = tmp_path / "loco.json"
    written = []  # (finished, planned) of each partial report, as read back from the JSON

    def fake_run(env, system, seed, args, stamp):
        return Run(env, system, seed, str(tmp_path / f"{system}-{seed}"), ["x"], evals=evals(100.0 * (seed + 1)))

    def partial(report, json_path, done, planned):
        write_partial(report, json_path, done, planned)
        written.append(tuple(json.loads(out_json.read_text())["finished"]))

    monkeypatch.setattr(locomotion, "one_run", fake_run)
    monkeypatch.setattr(locomotion, "write_partial", partial)
    monkeypatch.setattr(locomotion, "sb3_import_error", lambda: None)
    assert main(["bench", "locomotion", "--envs", "Hopper-v5", "--systems", "dynaray", "--seeds", "0", "1", "2",
                 "--env-steps", "1000", "--from-steps", "1000", "--runs-dir", str(tmp_path),
                 "--json", str(out_json)]) == 0
    assert written == [(1, 3), (2, 3), (3, 3)]
    report = json.loads(out_json.read_text())  # the final report: every run, in the planned order
    assert "finished" not in report and "complete" not in report and [r["seed"] for r in report["runs"]] == [0, 1, 2]
    assert report["medians"][0]["dynaray"] == 200.0


def test_runs_start_in_the_systems_order_every_seed_of_one_before_the_next(tmp_path, monkeypatch):
    started = []

    def fake_run(env, system, seed, args, stamp):
        started.append((system, seed))
        return Run(env, system, seed, str(tmp_path / f"{system}-{seed}"), ["x"], evals=evals(100.0))

    monkeypatch.setattr(locomotion, "one_run", fake_run)
    monkeypatch.setattr(locomotion, "sb3_import_error", lambda: None)
    assert main(["bench", "locomotion", "--envs", "Hopper-v5", "--systems", "sb3", "dynaray", "--seeds", "0", "1",
                 "--env-steps", "1000", "--from-steps", "1000", "--jobs", "1", "--runs-dir", str(tmp_path)]) == 0
    assert started == [("sb3", 0), ("sb3", 1), ("dynaray", 0), ("dynaray", 1)]


def bench_json(tmp_path, monkeypatch, system, returns, name, env_steps="2000"):
    """The --json of a bench of ``system`` on Hopper-v5, seeds 0 and 1, whose runs return ``returns[seed]``."""
    def fake_run(env, system_, seed, args, stamp):
        return Run(env, system_, seed, str(tmp_path / f"{system_}-{seed}"), ["x"], evals=evals(*returns[seed]))

    monkeypatch.setattr(locomotion, "one_run", fake_run)
    monkeypatch.setattr(locomotion, "sb3_import_error", lambda: None)
    out = tmp_path / name
    assert main(["bench", "locomotion", "--envs", "Hopper-v5", "--systems", system, "--seeds", "0", "1",
                 "--env-steps", env_steps, "--from-steps", "1000", "--runs-dir", str(tmp_path),
                 "--json", str(out)]) == 0
    return str(out)


def test_merge_reports_the_runs_of_two_benches_together(tmp_path, monkeypatch, capsys):
    ours = bench_json(tmp_path, monkeypatch, "dynaray", {0: (100.0, 400.0), 1: (300.0, 600.0)}, "ours.json")
    theirs = bench_json(tmp_path, monkeypatch, "sb3", {0: (50.0, 200.0), 1: (150.0, 300.0)}, "theirs.json")
    monkeypatch.setattr(locomotion, "one_run", lambda *a: pytest.fail("--merge makes no runs"))
    out = tmp_path / "merged.json"
    assert main(["bench", "locomotion", "--merge", ours, theirs, "--runs-dir", str(tmp_path / "plots"),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["systems"] == ["dynaray", "sb3"] and len(report["runs"]) == 4
    assert [(m["env_steps"], m["dynaray"], m["sb3"], m["ratio"]) for m in report["medians"]] == [
        (1000, 200.0, 100.0, 2.0), (2000, 500.0, 250.0, 2.0)]
    assert [m["json"] for m in report["machine"]["merged_from"]] == [ours, theirs]
    assert (tmp_path / "plots" / "locomotion-Hopper-v5.png").is_file()  # drawn from the JSONs' evaluations


def test_merge_refuses_reports_of_other_budgets_and_files_that_are_not_reports(tmp_path, monkeypatch, capsys):
    ours = bench_json(tmp_path, monkeypatch, "dynaray", {0: (1.0, 2.0), 1: (1.0, 2.0)}, "ours.json")
    other = bench_json(tmp_path, monkeypatch, "sb3", {0: (1.0,), 1: (1.0,)}, "other.json", env_steps="1000")
    capsys.readouterr()
    assert main(["bench", "locomotion", "--merge", ours, other]) == 2
    assert f"--merge {other}: env_steps is 1000, expected 2000 as in {ours}" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    for text in ('{"runs": []}', '{"settings": {}, "machine": {}, "runs": []}', "[1, 2"):
        junk.write_text(text)
        assert main(["bench", "locomotion", "--merge", ours, str(junk)]) == 2
        assert f"--merge {junk}: not a `dynaray bench locomotion --json` report" in capsys.readouterr().err


FAKE_RUN = """
import os, signal, sys, time
import pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
rows = []
while not got:  # an evaluation every 0.1 s, on disk after each (as dynaray train writes evals.parquet)
    rows.append({"env_steps": 1000 * (len(rows) + 1), "wall_time_s": 0.1 * len(rows), "return_mean": 10.0})
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(out, "evals.parquet"))
    time.sleep(0.1)
time.sleep(0.5)  # a second signal would be counted
open(os.path.join(out, "signals"), "w").write(str(len(got)))
sys.exit(128 + signal.SIGTERM)
"""


def test_a_stopped_bench_stops_its_runs_once_and_reports_their_evaluations(tmp_path, monkeypatch, capsys):
    """SIGTERM to the bench (a device's timeout, say): each run going gets it once and ends with its evaluations so
    far, the run not started yet never starts, and the JSON holds what was measured, marked incomplete."""
    monkeypatch.setattr(locomotion, "command", lambda env, system, seed, run_dir, args: [
        sys.executable, "-c", FAKE_RUN, str(run_dir)])
    out_json = tmp_path / "loco.json"

    def stop_when_both_evaluated():
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*/evals.parquet"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_both_evaluated, daemon=True).start()
    code = main(["bench", "locomotion", "--envs", "Hopper-v5", "--systems", "dynaray", "--seeds", "0", "1", "2",
                 "--jobs", "2", "--env-steps", "50000", "--from-steps", "1000", "--runs-dir", str(tmp_path),
                 "--json", str(out_json)])
    assert code == 128 + signal.SIGTERM
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [(p.name.split("-")[3], (p / "signals").read_text()) for p in runs] == [("s0", "1"), ("s1", "1")]
    report = json.loads(out_json.read_text())
    assert report["complete"] is False and report["finished"] == [2, 3]
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    assert all(r["evals"] and r["error"].startswith("exit code 143") for r in report["runs"])
    out = capsys.readouterr().out
    assert "Stopped by SIGTERM: 2 of 3 runs ended" in out
    assert out.count(" | stopped\n") == 2 and "FAILED" not in out  # stopped by the bench, not failed
