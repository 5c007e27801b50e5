"""Offline mode on an embedded local Ray: `dynaray collect` then `dynaray train offline DATASET` with debug sizes;
no rollout worker, no training env step, the policy refined only on imagined rows, nothing left behind; then
`dynaray train --resume` refines it further without fitting the model again, keeping its checkpoints; then
`dynaray train offline_to_online --init` continues it online with the dataset kept in `real`.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from system.checkpoint import find_checkpoint, kept_checkpoints
from tests.system.runs import ray_pids, stored_rows
from tests.system.test_train_e2e import marked_env

pytestmark = pytest.mark.ray

TINY = ["env.max_episode_steps=50", "offline.total_updates=60", "policy.bc_init_updates=30",
        "offline.critic_warmup_updates=5", "offline.eval_every_updates=20", "world_model.early_stop_patience=1",
        "world_model.validate_every=10", "offline.model_max_updates=60", "eval.episodes=1",
        "imagination.batch_size=32", "policy.batch_size=32", "world_model.batch_size=64",
        "eval.in_model=true", "eval.real_every=2", "eval.model_starts=8"]


def test_collect_then_train_offline_on_ray(tmp_path):
    env, marker = marked_env(tmp_path)
    data = tmp_path / "data"
    collected = subprocess.run([sys.executable, "-m", "system.cli", "collect", "--env", "Pendulum-v1", "--steps",
                                "500", "--max-episode-steps", "50", "--to", str(data), "--format", "minari"],
                               capture_output=True, text=True, timeout=300, env=env)
    assert collected.returncode == 0, collected.stderr
    minari = next((data / "minari").glob("*/*/*"))  # dynaray/pendulum/random-v0
    proc = subprocess.run(
        [sys.executable, "-m", "system.cli", "train", "offline", str(minari), "pendulum", "debug", "name=offline-e2e",
         f"run.runs_dir={tmp_path}", "run.keep_checkpoints=5", *TINY],
        capture_output=True, text=True, timeout=900, env=env,
    )
    time.sleep(1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "policy-update budget of 60 reached" in proc.stdout and "0 training env steps" in proc.stdout
    run = tmp_path / "offline-e2e"
    placement = json.loads((run / "placement.json").read_text())
    assert not any(name.startswith("rollout") for name in placement) and "imagination-0" in placement
    summary = json.loads((run / "offline.json").read_text())
    assert summary["training_env_steps"] == 0 and summary["eval_env_steps"] == 50 * len(summary["evals"])
    assert summary["dataset"]["rows"] == 500 and summary["conservatism"]["penalty_scale"] > 0
    metrics = pq.read_table(run / "metrics.parquet").to_pandas()
    refined = metrics["policy_refine_real_rows"].dropna()
    assert len(refined) and (refined == 0).all()
    assert metrics["imagination_transitions"].max() > 0 and (metrics["env_steps"] == 0).all()
    # eval.in_model: every evaluation scored in the frozen model; the real env at every 2nd one and the last (the
    # reports decide how many evaluations there are between cloning's and the final one)
    evals = pq.read_table(run / "evals.parquet").to_pylist()
    assert evals[0]["phase"] == "bc" and evals[-1]["phase"] == "final", evals
    real = [e["return_mean"] is not None for e in evals]  # null (NaN in the driver): scored in the model only
    assert real == [i % 2 == 0 or i == len(evals) - 1 for i in range(len(evals))], evals
    scored = [e for e in evals if e["model_version"] >= 0]
    assert scored and scored[-1] is evals[-1], evals  # the final policy is scored in the model
    assert all(e["model_return_low"] <= e["model_return_mean"] <= e["model_return_high"] for e in scored), evals
    real = stored_rows(run)
    assert len(real["obs"]) == 500  # the dataset, and nothing a rollout worker wrote
    assert not ray_pids(marker)

    # The refined policy ranked in the run's own frozen model from the dataset's start states, and run for real.
    ranking = tmp_path / "ranking.json"
    evaluated = subprocess.run(
        [sys.executable, "-m", "system.cli", "eval", str(run), "--in-model", str(run), "--real", "1", "--starts", "8",
         "--json", str(ranking), "--plot", str(tmp_path / "ranking.png")],
        capture_output=True, text=True, timeout=300, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "from the model's holdout calibration" in evaluated.stdout, evaluated.stdout
    entry, = json.loads(ranking.read_text())["policies"]
    assert entry["rank"] == 1 and entry["model_return_low"] <= entry["model_return"] <= entry["model_return_high"]
    assert entry["real_return"] is not None and 0 <= entry["untrusted_fraction"] <= 1
    assert (tmp_path / "ranking.png").stat().st_size > 0

    # resumed with a larger budget: refining goes on from the checkpoint, the frozen model is not fitted again
    model_updates = find_checkpoint(run).load("world_model.pt")["learner"]["num_updates"]
    resumed = subprocess.run([sys.executable, "-m", "system.cli", "train", "--resume", str(run),
                              "offline.total_updates=90"], capture_output=True, text=True, timeout=900, env=env)
    time.sleep(1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "policy-update budget of 90 reached" in resumed.stdout
    again = json.loads((run / "offline.json").read_text())
    assert again["policy_updates"] >= 90 and again["training_env_steps"] == 0
    assert again["conservatism"] == summary["conservatism"] and again["evals"][:len(summary["evals"])] == \
        summary["evals"]
    assert find_checkpoint(run).load("world_model.pt")["learner"]["num_updates"] == model_updates
    metrics = pq.read_table(run / "metrics.parquet").to_pandas()
    assert (metrics["env_steps"] == 0).all() and (metrics["policy_refine_real_rows"].dropna() == 0).all()
    kept = [find_checkpoint(path).meta for path in kept_checkpoints(run)]
    assert kept and all(m["kept_by"] == "policy_updates" for m in kept) and kept[-1]["policy_updates"] >= 90
    assert not ray_pids(marker)

    # offline_to_online: an online run continues the offline one's learners, with its dataset in `real` beside the
    # new env steps, and no random warm-up
    saved = {name: find_checkpoint(run).load(f"{name}.pt") for name in ("policy", "world_model")}
    dataset_writers = set(stored_rows(run)["writer_id"].tolist())
    online = subprocess.run(
        [sys.executable, "-m", "system.cli", "train", "offline_to_online", "pendulum", "debug", "name=o2o",
         f"run.runs_dir={tmp_path}", "run.total_env_steps=200", "env.max_episode_steps=50", "eval.episodes=1",
         "imagination.batch_size=32", "policy.batch_size=32", "world_model.batch_size=64", "--init", str(run)],
        capture_output=True, text=True, timeout=900, env=env)
    time.sleep(1)
    assert online.returncode == 0, online.stderr[-3000:]
    o2o = tmp_path / "o2o"
    rows = stored_rows(o2o)
    new = ~np.isin(rows["writer_id"], list(dataset_writers))
    assert (~new).sum() == 500 and new.sum() == 200  # the dataset, then every new env step
    acted = rows["policy_version"][new]
    # no warm-up, and the worker waits for its first policy (rollout.first_policy_wait_s) rather than act at random
    assert (acted == -1).sum() < 50 and (acted[acted != -1] >= saved["policy"]["version"]).all(), acted
    metrics = pq.read_table(o2o / "metrics.parquet").to_pandas()
    for role in ("policy", "world_model"):  # counters go on from the offline run's
        updates = metrics[f"{role}_total_updates"].dropna()
        assert len(updates) and updates.min() >= saved[role]["learner"]["num_updates"], (role, updates.min())
    final = pq.read_table(o2o / "evals.parquet").to_pylist()[-1]
    assert final["env_steps"] == 200 and final["policy_version"] > saved["policy"]["version"], final
    assert not ray_pids(marker)
