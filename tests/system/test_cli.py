"""The CLI's answers to bad input: one line, non-zero exit, no Ray started (all checked before Ray)."""

import subprocess
import sys
import time

import pytest
import torch

from system.cli import main
from system.run_dir import RunDir
from system.config import load_config


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "system.cli", *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "env.id=InvertedPendulm-v5"], "did you mean 'InvertedPendulum-v5'"),
        (["train", "policy.batch_sise=64"], "did you mean 'policy.batch_size'"),
        (["train", "policy.real_ratio=2"], "policy.real_ratio=2.0"),
        (["train", "nosuchpreset"], "unknown preset 'nosuchpreset'"),
        (["train", "env.id=gymnasium.envs.toy_text.frozen_lake:FrozenLakeEnv"], "observation space"),
        (["train", "env.id=CartPole-v1"], "SAC needs a bounded continuous Box action space"),
    ],
)
def test_bad_train_input_is_one_clear_line(args, message):
    code, out, err = run_cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynaray: error: "), err
    assert message in lines[0]


def test_eval_on_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a run directory: config.yaml is missing" in capsys.readouterr().err

    run = RunDir(tmp_path / "run").create(load_config(["debug"]))
    assert main(["eval", str(run.path)]) == 2
    assert "is incomplete: actor.pt is missing" in capsys.readouterr().err

    run.checkpoint.mkdir()
    (run.checkpoint / "meta.json").write_text("{}")
    (run.checkpoint / "actor.pt").write_bytes(b"not a torch file")
    assert main(["eval", str(run.path)]) == 2
    assert "is corrupt or not a dynaray checkpoint" in capsys.readouterr().err

    torch.save({"unrelated": torch.zeros(3)}, run.checkpoint / "actor.pt")
    assert main(["eval", str(run.path)]) == 2
    assert "does not fit the policy network" in capsys.readouterr().err


def resumable_run(tmp_path):
    """A run directory with a complete checkpoint (its files need not be learner states for the checks before
    Ray starts)."""
    from actors.envs import probe_env
    from system.checkpoint import describe_meta, write_checkpoint

    config = load_config(["debug"], ["name=r"])
    run = RunDir(tmp_path / "r").create(config)
    write_checkpoint(run.path, {"actor.pt": {}}, {}, {**describe_meta(config, probe_env(config.env)),
                                                      "env_steps": 500, "policy_version": 3})
    return run


def tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_bad_resume_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    import json

    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run directory: config.yaml is missing" in capsys.readouterr().err

    run = resumable_run(tmp_path)
    meta_path = run.checkpoint / "meta.json"
    meta = json.loads(meta_path.read_text())
    cases = [
        (["policy.batch_size=64"], "policy.batch_size: cannot be changed when resuming"),
        (["hopper"], "--resume takes key=value overrides only"),
        (["imagination.num_workers=0"], "cannot switch imagination off when resuming"),
        (["run.total_env_steps=0"], "run.total_env_steps=0: expected an integer >= 1"),
    ]
    for items, message in cases:
        before = tree(tmp_path)
        assert main(["train", "--resume", str(run.path), *items]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert tree(tmp_path) == before

    for key, value, message in [("dynaray_version", "0.0.1", "from dynaray version '0.0.1'"),
                                ("env_id", "Hopper-v5", "from env 'Hopper-v5'")]:
        meta_path.write_text(json.dumps({**meta, key: value}))
        before = tree(tmp_path)
        assert main(["train", "--resume", str(run.path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert tree(tmp_path) == before
    meta_path.write_text(json.dumps(meta))

    (run.checkpoint / "actor.pt").unlink()
    assert main(["train", "--resume", str(run.path)]) == 2
    assert "is incomplete: checkpoint/: actor.pt is missing" in capsys.readouterr().err
    meta_path.unlink()
    assert main(["train", "--resume", str(run.path)]) == 2
    assert "is incomplete: checkpoint/: meta.json is missing" in capsys.readouterr().err


def test_resuming_a_run_whose_driver_lives_is_refused(tmp_path, capsys):
    from system.checkpoint import DriverLock

    run = resumable_run(tmp_path)
    lock = DriverLock(run.path).acquire()  # this process plays the live driver
    try:
        before = tree(tmp_path)
        assert main(["train", "--resume", str(run.path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is still running (driver pid" in err[0], err
        assert tree(tmp_path) == before
    finally:
        lock.release()


def test_items_may_come_after_options():
    from system.cli import parse

    args = parse(["train", "offline_to_online", "--init", "runs/offline", "seed=3", "name=o2o"])
    assert (args.items, args.init) == (["offline_to_online", "seed=3", "name=o2o"], "runs/offline")
    assert parse(["scale", "--run", "r", "rollout=3"]).items == ["rollout=3"]
    with pytest.raises(SystemExit):
        parse(["train", "debug", "--init", "x", "--no-such-flag"])


WATCHED_RUN = """
import signal, sys, time
from system.cli import _Signals

record = open(sys.argv[2], "w", buffering=1)

class Driver:  # what a signal asks of the driver
    def interrupt(self, why):
        record.write(why + "\\n")
        print(why, flush=True)  # to the dead bench's pipe

signals = _Signals()
signals.install()
signals.driver = Driver()
if sys.argv[1] == "signalled":  # the parent's own SIGTERM came before it died
    signals.received = signal.SIGTERM
signals.stop_with_parent()
record.write("watching\\n")
time.sleep(3)
if sys.argv[1] != "inherited":  # (not watched: nothing keeps its pipes from failing)
    print("still here", flush=True)
record.write("end\\n")
"""
BENCH = """
import os, subprocess, sys, time
watched = {"own": str(os.getpid()), "signalled": str(os.getpid()), "inherited": "1"}[sys.argv[1]]
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1], sys.argv[3]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "DYNARAY_STOP_WITH_PARENT": watched})
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("case, lines", [("own", ["watching", "interrupted by SIGTERM", "end"]),
                                         ("signalled", ["watching", "end"]), ("inherited", ["watching", "end"])])
def test_a_run_whose_bench_is_killed_stops_as_on_one_sigterm(tmp_path, case, lines):
    """``$DYNARAY_STOP_WITH_PARENT`` (set by a bench for its runs): when the bench is SIGKILLed, the run gets one
    SIGTERM, none when a signal came already (a second would stop it without its checkpoint), none when the
    variable names another process than its parent (inherited from further up). What the run writes to its stdout
    and stderr, pipes to the dead bench, raises no BrokenPipeError."""
    from tests.system.runs import alive

    out = tmp_path / "out.txt"
    bench = subprocess.Popen([sys.executable, "-c", BENCH, case, WATCHED_RUN, str(out)], stdout=subprocess.PIPE,
                             text=True)
    run = int(bench.stdout.readline())
    deadline = time.monotonic() + 60
    while "watching" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline and alive(run), "the run never started watching"
        time.sleep(0.05)
    bench.kill()
    bench.wait()
    while alive(run):
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.05)
    assert out.read_text().split("\n")[:-1] == lines
