"""``dynaray bench offline`` without training: arguments, the d3rlpy skip path, the dataset's arrays, the report."""

import json
from argparse import Namespace

import numpy as np

from system.bench import harness, offline
from system.bench.harness import machine
from system.bench.offline import Result, d3rlpy_problem, dataset_return, train_command, write_npz
from system.cli import main
from system.collect_cli import write_parquet
from tests.system.bench.markdown import table_rows


def write_dataset(directory, lengths=(3, 2), cut_last=True):
    """A Pendulum-shaped Parquet dataset whose episode e has rewards -(e + 1) per step; the last one is cut
    (truncated by the budget) when ``cut_last``."""
    episode = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)])
    step = np.concatenate([np.arange(n) for n in lengths])
    rows = len(episode)
    truncated = np.r_[episode[1:] != episode[:-1], cut_last].astype(bool)
    directory.mkdir()
    write_parquet(str(directory / "transitions.parquet"), {
        "obs": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), "action": np.zeros((rows, 1), np.float32),
        "reward": -(episode + 1).astype(np.float32), "next_obs": np.ones((rows, 3), np.float32),
        "terminated": np.zeros(rows, bool), "truncated": truncated, "episode": episode, "step": step,
    }, (3,), (1,), 0)
    return directory


def test_d3rlpy_is_skipped_with_a_reason_when_its_python_is_absent_or_lacks_it(tmp_path):
    assert "no d3rlpy Python given" in d3rlpy_problem(None)
    assert "is not an executable file" in d3rlpy_problem(str(tmp_path / "nope"))
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named d3rlpy' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert "cannot import d3rlpy and torch (ModuleNotFoundError: No module named d3rlpy)" in d3rlpy_problem(str(fake))


def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["bench", "offline"]) == 2
    assert "--datasets: expected at least one dataset" in capsys.readouterr().err
    assert main(["bench", "offline", "--datasets", str(tmp_path / "missing")]) == 2
    assert "--datasets:" in capsys.readouterr().err
    data = write_dataset(tmp_path / "d")
    assert main(["bench", "offline", "--datasets", str(data), "--seeds", "1", "1"]) == 2
    assert "expected distinct seeds" in capsys.readouterr().err


def test_dataset_return_and_d3rlpy_arrays(tmp_path):
    data = write_dataset(tmp_path / "d", lengths=(3, 2, 4))
    assert dataset_return(str(data)) == (-3 - 4 - 12) / 3  # every episode ends truncated
    write_npz(str(data), tmp_path / "d.npz")
    arrays = np.load(tmp_path / "d.npz")
    assert arrays["observations"].shape == (9, 3) and arrays["actions"].shape == (9, 1)
    assert arrays["timeouts"].tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 1]
    assert arrays["terminals"].sum() == 0
    assert arrays["rewards"].tolist() == [-1] * 3 + [-2] * 2 + [-3] * 4


def test_train_command_runs_the_offline_mode_with_the_budget_then_the_extra_overrides():
    args = Namespace(preset="pendulum", runs_dir="/tmp/b", updates=3000, eval_episodes=7, set=["offline.x=1"])
    assert train_command("data/p-medium", 2, "n", args)[1:] == [
        "-m", "system.cli", "train", "offline", "data/p-medium", "pendulum", "seed=2", "name=n", "run.runs_dir=/tmp/b",
        "run.progress=false", "offline.total_updates=3000", "eval.episodes=7", "offline.x=1"]


def test_report_without_d3rlpy_gives_means_margins_and_the_skip_reason(tmp_path, capsys, monkeypatch):
    data = write_dataset(tmp_path / "pendulum-medium")  # data return (-3 - 4) / 2 = -3.5

    def fake_run(dataset, seed, args, stamp):
        return [Result(dataset, "dynaray", seed, -1.0 - seed, 0.5, args.updates, 9.0, "dynaray train offline ..."),
                Result(dataset, "bc", seed, -3.0, 0.1, 100, 9.0, "dynaray train offline ...")]

    monkeypatch.setattr(offline, "dynaray_run", fake_run)
    monkeypatch.setattr(offline, "machine", lambda *modules: machine())  # no torch import for its version
    monkeypatch.delenv(offline.D3RLPY_ENV, raising=False)
    out_json = tmp_path / "o.json"
    code = main(["bench", "offline", "--datasets", str(data), "--seeds", "0", "2", "--updates", "50",
                 "--runs-dir", str(tmp_path / "runs"), "--json", str(out_json)])
    assert code == 0
    captured = capsys.readouterr()
    assert "d3rlpy skipped: no d3rlpy Python given" in captured.err
    (row,) = table_rows(captured.out, "pendulum-medium")[:1]
    assert row[1:] == ["-3.5", "-2.0 +- 1.0 (2)", "-3.0 +- 0.0 (2)", "+1.0", "+1.5", "-"]
    report = json.loads(out_json.read_text())
    assert report["summary"][str(data)]["best_d3rlpy"] is None
    assert report["settings"]["algos"] == [] and report["skipped"] and "complete" not in report


def test_a_run_whose_ray_never_started_is_tried_again_under_a_new_name(tmp_path, monkeypatch):
    names = []

    def fake_child_process(command):
        name = next(a for a in command if a.startswith("name="))[5:]
        names.append(name)
        if len(names) == 1:
            return Namespace(returncode=1, stderr="Exception: The current node timed out during startup. ...")
        (tmp_path / name).mkdir()
        (tmp_path / name / "offline.json").write_text(json.dumps({
            "training_env_steps": 0, "eval_env_steps": 400, "conservatism": {}, "policy_updates": 50, "evals": [
                {"phase": "bc", "policy_updates": 20, "return_mean": -900.0, "return_std": 1.0},
                {"phase": "final", "policy_updates": 50, "return_mean": -300.0, "return_std": 2.0}]}))
        return Namespace(returncode=0, stderr="")

    monkeypatch.setattr(harness, "child_process", fake_child_process)
    args = Namespace(preset="pendulum", runs_dir=str(tmp_path), updates=50, eval_episodes=2, set=[])
    dyn, bc = offline.dynaray_run("data/p-medium", 0, args, "stamp")
    assert names == ["p-medium-s0-stamp", "p-medium-s0-stamp-try1"]
    assert (dyn.method, dyn.eval_return, bc.method, bc.eval_return, bc.updates) == ("dynaray", -300.0, "bc", -900.0, 20)
    assert dyn.extra["training_env_steps"] == 0
