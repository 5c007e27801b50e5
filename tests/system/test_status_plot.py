"""`dynaray plot` (runs overlaid in one PNG; a directory that is not a run names the missing file), `dynaray status`
(the role table; no running system or a wrong run name: one line and exit 1), and the live progress display of
`dynaray train`. `dynaray status` against a running system: tests/system/test_liveness.py.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from system.cli import main
from system.config import load_config
from system.driver import progress_printer
from system.run_dir import RunDir
from system.status_cli import ActorInfo, render

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(path: Path, seed: int, evals: bool = True) -> RunDir:
    """A finished run directory as the driver writes it: config, metrics every report, evals at the end."""
    run = RunDir(path).create(load_config(["debug"], [f"seed={seed}"]))
    metrics, scored = [], []
    for i in range(1, 11):
        steps, wall = 200 * i, 3.0 * i + seed
        if i % 2 == 0:
            scored.append({"env_steps": steps, "policy_version": 10 * i, "return_mean": 5.0 * i + seed,
                           "return_std": 1.5, "length_mean": 20.0, "wall_time_s": wall})
        metrics.append({"env_steps": steps, "wall_time_s": wall, "env_steps_per_s": 66.0,
                        "eval_env_steps": scored[-1]["env_steps"] if scored else None,
                        "eval_return_mean": scored[-1]["return_mean"] if scored else float("nan")})
    run.write_table("metrics", metrics)
    if evals:
        run.write_table("evals", [{**scored[0], "return_mean": float("nan")}, *scored])  # one unscored (random)
    return run


# ---------------------------------------------------------------------------------------------------------------
# dynaray plot


def test_plot_overlays_two_runs_in_one_png(tmp_path, capsys):
    a, b = fake_run(tmp_path / "debug-seed0", 0), fake_run(tmp_path / "debug-seed1", 1)
    out = tmp_path / "out" / "seeds.png"
    assert main(["plot", str(a.path), str(b.path), "--out", str(out)]) == 0
    assert f"2 runs plotted to {out}" in capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(out).shape
    assert width > height > 300  # two panels side by side


def test_plot_of_a_running_run_uses_its_metrics_table(tmp_path, capsys):
    running = fake_run(tmp_path / "running", 0, evals=False)
    out = tmp_path / "running.png"
    assert main(["plot", str(running.path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_names_the_missing_file(tmp_path, capsys):
    good = fake_run(tmp_path / "good", 0)
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    assert main(["plot", str(good.path), str(not_a_run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dynaray: error: {str(not_a_run)!r} is not a run directory: config.yaml is missing"
    assert not (tmp_path / "x.png").exists()

    started = RunDir(tmp_path / "started").create(load_config(["debug"]))  # no report written yet
    assert main(["plot", str(started.path)]) == 2
    assert "evals.parquet is missing" in capsys.readouterr().err

    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# dynaray status without Ray


def test_status_with_no_running_system_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["status", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dynaray: error: no running system found under {str(tmp_path)!r} (no run directory with a live "
                   f"ray.json); pass --run NAME and --address ADDR for a run elsewhere"]

    fake_run(tmp_path / "ended", 0)  # a finished run: no ray.json
    (tmp_path / "ended" / "ray.json").write_text(json.dumps({"run": "ended", "address": "127.0.0.1:1",
                                                             "namespace": "dynaray-ended", "pid": 2**22 + 1}))
    assert main(["status", "--run", "ended", "--runs-dir", str(tmp_path)]) == 1  # its driver is gone
    assert "no running system named 'ended'" in capsys.readouterr().err


def test_status_table_shows_each_role_from_snapshot_and_actor_states():
    snapshot = {
        "row": {"env_steps": 1500, "wall_time_s": 42.0, "env_steps_per_s": 35.7, "eval_return_mean": 61.2,
                "eval_env_steps": 1000, "policy_version": 120, "policy_updates_per_s": 88.0,
                "policy_total_updates": 3600, "world_model_version": 6, "world_model_val_mse": 0.0123,
                "policy_version_acting": 118, "rollout_env_errors": 2, "imagination_transitions": 4000},
        "pools": {"rollout": {"active": [0, 2], "retiring": [], "restarts": 1, "unplaced": [2]},
                  "imagination": {"active": [0], "retiring": [], "restarts": 0}},
        "budget": 5000, "restarts": {"rollout": 1, "imagination": 0, "policy": 3, "replay": 1},
        "stalled": ["rollout-2"],
    }
    actors = [ActorInfo("replay-shard-0", "ALIVE", 0, "10.0.0.1"),
              ActorInfo("replay-shard-1", "RESTARTING", 1, "10.0.0.2"),
              ActorInfo("policy-learner", "ALIVE", 0, "10.0.0.1"),
              ActorInfo("world-model-learner", "ALIVE", 0, "10.0.0.1"),
              ActorInfo("rollout-0", "ALIVE", 1, "10.0.0.2"), ActorInfo("rollout-1", "DEAD", 0, "10.0.0.2"),
              ActorInfo("rollout-2", "ALIVE", 0, "10.0.0.2"), ActorInfo("imagination-0", "ALIVE", 0, "10.0.0.1"),
              ActorInfo("control", "ALIVE", 0, "10.0.0.1")]
    text = render({"run": "demo", "status": snapshot, "age_s": 0.4}, actors, "Ray's state API", "10.0.0.1:6379")
    lines = text.splitlines()
    assert lines[0] == "run demo on the Ray cluster at 10.0.0.1:6379"
    assert lines[1] == "env steps 1,500 / 5,000 (30%), 36 env steps/s, 42 s running; last eval return 61.2"
    table = {line.split()[0]: line for line in lines[3:-2]}
    assert list(table) == ["ROLE", "replay-shard", "policy-learner", "world-model-learner", "rollout", "imagination",
                           "control"]
    assert table["replay-shard"].split()[1:4] == ["2", "1/2", "1"]
    assert "replay-shard-1 RESTARTING" in table["replay-shard"] and "10.0.0.1, 10.0.0.2" in table["replay-shard"]
    assert table["rollout"].split()[1:4] == ["2", "2/2", "1"]  # rollout-1 was retired: not in the roster
    for part in ("36 env steps/s", "acts v118", "2 env errors", "10.0.0.2 x2"):
        assert part in table["rollout"], part
    assert "rollout-2 not placed" in table["rollout"] and "rollout-2 stalled" in table["rollout"]
    assert table["policy-learner"].split()[1:4] == ["1", "1/1", "3"]  # restarts counted by the driver
    assert "88 updates/s" in table["policy-learner"] and "v120" in table["policy-learner"]
    assert "val mse 0.0123" in table["world-model-learner"]
    assert lines[-1].startswith("alive, restarts, nodes: from Ray's state API")


# ---------------------------------------------------------------------------------------------------------------
# the live progress display


ROW = {"env_steps": 1600, "wall_time_s": 20.0, "env_steps_per_s": 80.0, "eval_return_mean": 25.0,
       "eval_env_steps": 1000, "world_model_val_mse": 0.0667, "policy_version": 20, "policy_updates_per_s": 95.0,
       "rollout_workers": 2, "rollout_restarts": 1, "rollout_env_errors": 3, "imagination_workers": 1}


def test_progress_is_a_plain_line_per_report_off_a_terminal():
    stream = io.StringIO()
    show = progress_printer(5000, stream)
    show(ROW)
    show({**ROW, "env_steps": 2400, "eval_return_mean": float("nan")})
    show.close()
    show({**ROW, "policy_restarts": 2, "stalled": "rollout-2"})
    show.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "steps   1,600/5,000 | 80 steps/s | eval 25.0 | wm val 0.0667 | policy v20 95 upd/s | rollout 2 workers, "
        "3 env errors | restarts rollout 1",
        "steps   2,400/5,000 | 80 steps/s | eval - | wm val 0.0667 | policy v20 95 upd/s | rollout 2 workers, "
        "3 env errors | restarts rollout 1",
        "steps   1,600/5,000 | 80 steps/s | eval 25.0 | wm val 0.0667 | policy v20 95 upd/s | rollout 2 workers, "
        "3 env errors | restarts rollout 1, policy 2 | stalled: rollout-2",
    ]


def test_an_offline_run_shows_its_progress_in_policy_updates(monkeypatch):
    from system.config import load_config
    from system.driver import POLICY_UPDATES, run_progress

    assert run_progress(load_config(["offline"], ["offline.dataset=x", "offline.total_updates=900"])) == \
        (POLICY_UPDATES, 900)
    row = {**ROW, "env_steps": 0, "env_steps_per_s": 0.0, "offline_policy_updates": 300, "eval_policy_updates": 200,
           "eval_env_steps": 0, "rollout_workers": 0, "rollout_restarts": 0, "rollout_env_errors": 0}
    stream = io.StringIO()
    show = progress_printer(900, stream, counter=POLICY_UPDATES)
    show(row)
    show.close()
    assert stream.getvalue().startswith("updates     300/900 | 95 updates/s | eval 25.0 |")
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "160")
    terminal = FakeTerminal()
    show = progress_printer(900, terminal, counter=POLICY_UPDATES)
    show(row)
    show.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue()).split("\r")[-1]
    for part in ("policy updates", "300/900 (33%)", "95 updates/s", "eta 0:06", "25.0 @ 200"):
        assert part in text, part

    snapshot = {"row": row, "pools": {"imagination": {"active": [0], "retiring": [], "restarts": 0}},
                "budget": 900, "counter": {"key": "offline_policy_updates", "label": "policy updates",
                                           "rate": "policy_updates_per_s"}}
    actors = [ActorInfo("evaluator-0", "ALIVE", 0, "10.0.0.1"), ActorInfo("imagination-0", "ALIVE", 0, "10.0.0.1")]
    lines = render({"run": "off", "status": snapshot, "age_s": 0.1}, actors, "Ray's state API", "x").splitlines()
    assert lines[1] == "policy updates 300 / 900 (33%), 95 policy updates/s, 20 s running; last eval return 25.0"
    assert "last return 25.0 at 200 policy updates" in text_of(lines, "evaluator")


def text_of(lines, role):
    return next(line for line in lines if line.startswith(role))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_live_display(monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "160")
    stream = FakeTerminal()
    show = progress_printer(5000, stream)
    show(ROW)
    show.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue()).split("\r")  # without colours, cursor moves
    text = frames[-1]  # redrawn in place: the last frame is what stays on screen
    assert len(text.strip().splitlines()) == 3, text
    for part in ("1,600/5,000 (32%)", "80 steps/s", "eta 0:42", "eval return", "25.0 @ 1,000", "val mse",
                 "0.0667", "v20", "rollout workers", "env errors", "imagination workers"):
        assert part in text, part
