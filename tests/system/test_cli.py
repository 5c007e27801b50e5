"""The CLI's answers to bad input: one line, non-zero exit, no Ray started (all checked before Ray)."""

import subprocess
import sys

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
