"""`dynaray eval --in-model`: policies ranked in a run's checkpointed world model, with the real returns and their
agreement; bad input (dataset shapes, empty, NaN rewards, no world model, another env) is one line, exit 2.

The runs are made here by hand (config, a checkpoint with a fresh world-model learner and actors), not trained:
what is checked is the verb's plumbing; the ranking itself is tested on a known model in
tests/actors/test_model_evaluator.py and end to end in tests/system/test_offline_e2e.py."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.envs import probe_env
from learners.sac import Policy
from learners.world_model import WorldModelLearner
from system.checkpoint import describe_meta, write_checkpoint
from system.cli import main
from system.config import load_config
from system.run_dir import RunDir

PENDULUM = ["pendulum", "debug"]


def make_run(path, presets=PENDULUM, overrides=(), seed=0, model=True):
    config = load_config(list(presets), [f"name={path.name}", f"seed={seed}", *overrides])
    spec = probe_env(config.env)
    run = RunDir(path).create(config)
    actor = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy.hidden_sizes,
                   seed=seed).actor.state_dict()
    tensors = {"actor.pt": actor}
    if model and config.world_model.enabled:
        learner = WorldModelLearner(spec.obs_dim, spec.action_dim, config.world_model, seed=seed)
        tensors["world_model.pt"] = {"learner": learner.state_dict(), "weights": learner.model_state(), "version": 1}
    write_checkpoint(run.path, tensors, {}, {**describe_meta(config, spec), "env_steps": 100 * (seed + 1)})
    return run


def write_dataset(path, rows=60, obs_dim=3, action_dim=1, reward=None):
    rng = np.random.default_rng(0)
    step = np.arange(rows) % 20
    columns = {
        "obs": rng.normal(size=(rows, obs_dim)).astype(np.float32).tolist(),
        "action": rng.uniform(-1, 1, size=(rows, action_dim)).astype(np.float32).tolist(),
        "reward": (rng.normal(size=rows) if reward is None else reward).astype(np.float32),
        "next_obs": rng.normal(size=(rows, obs_dim)).astype(np.float32).tolist(),
        "terminated": np.zeros(rows, bool), "truncated": step == 19,
        "episode_id": (np.arange(rows) // 20).astype(np.int64), "step": step.astype(np.int64),
    }
    vector = pa.list_(pa.float32())
    schema = pa.schema([("obs", vector), ("action", vector), ("reward", pa.float32()), ("next_obs", vector),
                        ("terminated", pa.bool_()), ("truncated", pa.bool_()), ("episode_id", pa.int64()),
                        ("step", pa.int64())])
    pq.write_table(pa.table(columns, schema=schema), path)
    return str(path)


def test_policies_ranked_in_the_model_with_real_returns(tmp_path, capsys):
    model = make_run(tmp_path / "model")
    policies = [make_run(tmp_path / f"p{i}", seed=i, model=False) for i in range(3)]
    dataset = write_dataset(tmp_path / "data.parquet")
    out = tmp_path / "ranking.json"
    code = main(["eval", *(str(p.path) for p in policies), "--in-model", str(model.path), "--dataset", dataset,
                 "--real", "1", "--starts", "4", "--horizon", "20", "--json", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert sorted(e["policy"] for e in report["policies"]) == sorted(str(p.path) for p in policies)
    scores = [e["score"] for e in report["policies"]]
    assert scores == sorted(scores, reverse=True) and [e["rank"] for e in report["policies"]] == [1, 2, 3]
    assert {e["env_steps"] for e in report["policies"]} == {100, 200, 300}
    assert set(report["agreement"]) == {"spearman", "kendall", "regret_at_1", "best_real_return"}
    assert report["agreement"]["regret_at_1"] >= 0
    assert "agreement with the real returns: Spearman" in printed.out and "regret@1" in printed.out
    assert (model.path / "in_model_ranking.png").stat().st_size > 0


@pytest.fixture
def runs(tmp_path):
    return make_run(tmp_path / "model"), make_run(tmp_path / "policy", model=False)


@pytest.mark.parametrize("case, message", [
    ("obs", "column 'obs' has shape (4,) per row, expected (3,) (env Pendulum-v1)"),
    ("empty", "has no rows; expected at least one transition"),
    ("nan", "non-finite values (NaN or inf)"),
    ("no-model", "has no world model (world_model.enabled=false)"),
    ("other-env", "was trained on InvertedPendulum-v5, the model on Pendulum-v1; expected one env"),
    ("not-a-run", "is not a run directory: config.yaml is missing"),
    ("flag", "--starts=0: expected >= 1"),
    ("real-alone", "expected --in-model MODEL_RUN_DIR with them"),
])
def test_bad_input_is_one_line(tmp_path, runs, capsys, case, message):
    model, policy = runs
    dataset = write_dataset(tmp_path / "data.parquet")
    args = ["eval", str(policy.path), "--in-model", str(model.path), "--dataset", dataset, "--horizon", "5"]
    if case == "obs":
        args[-3] = write_dataset(tmp_path / "wide.parquet", obs_dim=4)
    elif case == "empty":
        args[-3] = write_dataset(tmp_path / "empty.parquet", rows=0)
    elif case == "nan":
        args[-3] = write_dataset(tmp_path / "nan.parquet", reward=np.full(60, np.nan))
    elif case == "no-model":
        args[3] = str(make_run(tmp_path / "free", overrides=["world_model.enabled=false",
                                                              "imagination.num_workers=0"]).path)
    elif case == "other-env":
        args[1] = str(make_run(tmp_path / "ip", presets=["debug"], model=False).path)
    elif case == "not-a-run":
        args[1] = str(tmp_path / "nope")
    elif case == "flag":
        args += ["--starts", "0"]
    elif case == "real-alone":
        args = ["eval", str(policy.path), "--real", "2"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dynaray: error: "), lines
    assert message in lines[0]


def test_a_checkpoint_that_does_not_fit_the_policy_network_is_named(tmp_path, runs, capsys):
    model, policy = runs
    torch.save({"unrelated": torch.zeros(3)}, policy.checkpoint / "actor.pt")
    meta = json.loads((policy.checkpoint / "meta.json").read_text())
    meta["files"]["actor.pt"] = (policy.checkpoint / "actor.pt").stat().st_size
    (policy.checkpoint / "meta.json").write_text(json.dumps(meta))
    dataset = write_dataset(tmp_path / "data.parquet")
    assert main(["eval", str(policy.path), "--in-model", str(model.path), "--dataset", dataset]) == 2
    assert "the checkpoint does not fit the policy network" in capsys.readouterr().err


def test_a_runs_kept_checkpoints_are_ranked_each(tmp_path, capsys):
    from system.checkpoint import keep_checkpoint

    model = make_run(tmp_path / "model")
    run = make_run(tmp_path / "run", model=False)
    meta = json.loads((run.checkpoint / "meta.json").read_text())
    for steps, seed in ((1000, 5), (2000, 6)):
        actor = Policy(3, 1, -2 * np.ones(1), 2 * np.ones(1), (64, 64), seed=seed).actor.state_dict()
        keep_checkpoint(run.path, steps, actor, {**meta, "env_steps": steps}, keep=5)
    dataset = write_dataset(tmp_path / "data.parquet")
    out = tmp_path / "ranking.json"
    kept = run.path / "checkpoints"
    assert main(["eval", str(kept), str(kept / "0000001000"), str(run.checkpoint), "--in-model", str(model.path),
                 "--dataset", dataset, "--starts", "2", "--horizon", "3", "--json", str(out)]) == 0, \
        capsys.readouterr().err
    policies = json.loads(out.read_text())["policies"]
    assert sorted(e["env_steps"] for e in policies) == sorted([1000, 1000, 2000, meta["env_steps"]])
    assert {e["policy"] for e in policies} == {str(kept / "0000001000"), str(kept / "0000002000"),
                                               str(run.checkpoint)}
