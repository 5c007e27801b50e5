"""``dynaray collect``: datasets from random and checkpointed behaviour policies, as Parquet and Minari, that
``dynaray replay import`` reads; bad input is one line and exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.envs import probe_env
from learners.sac import Policy, SACLearner
from replay.datasets import load_dataset
from system.cli import main
from system.config import load_config
from system.run_dir import RunDir


def policy_run(tmp_path, env_id="Pendulum-v1"):
    """A run directory whose checkpoint holds a (randomly initialised) actor for ``env_id``."""
    config = load_config(["debug"], [f"env.id={env_id}"])
    spec = probe_env(config.env)
    learner = SACLearner(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy, seed=7)
    run = RunDir(tmp_path / "run").create(config)
    run.save_checkpoint({"actor": learner.policy_state()}, {"env_id": env_id, "policy_version": 12})
    return run, config, spec, learner


def test_collect_random_writes_parquet_and_minari_that_import_reads(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["collect", "--env", "Pendulum-v1", "--steps", "300", "--to", str(out), "--seed", "1"]) == 0
    assert "collected 300 steps" in capsys.readouterr().out
    table = pq.read_table(out / "transitions.parquet")
    assert table.num_rows == 300 and {"obs", "next_obs", "episode_id", "writer_id", "seq"} <= set(table.column_names)
    summary = json.loads((out / "collect.json").read_text())
    assert summary["behaviour"] == "random" and summary["episodes"] == 2 and summary["finished_episodes"] == 1
    parquet = load_dataset(str(out))
    minari = load_dataset(str(out / "minari" / summary["minari_dataset_id"]))
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated"):
        np.testing.assert_allclose(parquet.data[name], minari.data[name])
    assert main(["replay", "import", str(out / "minari" / summary["minari_dataset_id"]), "--to",
                 str(tmp_path / "replay")]) == 0
    assert "imported 300 rows (2 episodes, minari" in capsys.readouterr().out


def test_collect_from_a_checkpoint_acts_like_it(tmp_path):
    run, config, spec, learner = policy_run(tmp_path)
    out = tmp_path / "data"
    assert main(["collect", "--policy", str(run.path), "--steps", "50", "--to", str(out), "--format", "parquet"]) == 0
    data = load_dataset(str(out)).data
    policy = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy.hidden_sizes)
    policy.load_state(learner.policy_state())
    np.testing.assert_allclose(data["action"], policy.act(data["obs"], deterministic=True), atol=1e-6)
    summary = json.loads((out / "collect.json").read_text())
    assert summary["env_id"] == "Pendulum-v1" and summary["policy_version"] == 12 and not (out / "minari").exists()
    assert pq.read_table(out / "transitions.parquet").column("policy_version").to_pylist() == [12] * 50


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps 0: expected an int >= 1"),
    (["--steps", "5", "--noise", "-1"], "--noise -1.0: expected a number >= 0"),
    (["--steps", "5", "--format", "csv"], "--format 'csv': expected a comma-separated list of parquet, minari"),
    (["--steps", "5", "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--steps", "5", "--policy", "/nonexistent/run"], "--policy '/nonexistent/run'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["collect", "--to", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_policy_for_another_env_and_a_used_target_are_refused(tmp_path, capsys):
    run, *_ = policy_run(tmp_path)
    assert main(["collect", "--policy", str(run.path), "--env", "InvertedPendulum-v5", "--steps", "5", "--to",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit env InvertedPendulum-v5 (obs (4,), action (1,))" in err[0]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    assert main(["collect", "--steps", "5", "--to", str(tmp_path / "used")]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
