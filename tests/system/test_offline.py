"""Offline mode in process (build_system(local=True)): a dataset from a random policy, a world model fitted until
early stopping, behaviour cloning, then SAC only on imagined rows with calibrated penalty and truncation; the
real env only evaluates. Bad datasets and configs are one line."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.collector import collect
from actors.envs import EnvConfig, probe_env
from replay.stored import OfflineError, read_table
from replay.writers import writer_role
from system.cli import main
from system.collect_cli import write_parquet
from system.config import ConfigError, load_config
from system.offline import OfflineDataError, conservatism_from_calibration, prepare_dataset
from system.checkpoint import find_checkpoint, kept_checkpoints
from system.driver import _Call
from system.offline_driver import OfflineDriver, resumed_offline_data
from system.run_dir import RunDir
from system.wiring import build_system, kill_system

ENV = EnvConfig(id="Pendulum-v1", max_episode_steps=50)
TINY = ["env.max_episode_steps=50", "offline.total_updates=40", "policy.bc_init_updates=20",
        "offline.critic_warmup_updates=5", "offline.eval_every_updates=10", "world_model.early_stop_patience=1",
        "world_model.validate_every=10", "offline.model_max_updates=40", "eval.episodes=1",
        "run.report_interval_s=0.2", "run.metrics=false", "imagination.batch_size=32", "policy.batch_size=32",
        "world_model.batch_size=64"]


def dataset(tmp_path, steps=400, env=ENV):
    spec = probe_env(env)
    directory = tmp_path / "data"
    directory.mkdir()
    write_parquet(str(directory / "t.parquet"), collect(env, steps, seed=0).transitions(), spec.obs_shape,
                  spec.action_shape, -1)
    return directory


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("offline")
    data = dataset(tmp_path)
    config = load_config(["pendulum", "debug", "offline"],
                         [f"offline.dataset={data}", f"run.runs_dir={tmp_path}", "name=offline-run", *TINY,
                          "run.keep_checkpoints=2", "run.checkpoint_every_s=0.5"])
    spec = probe_env(config.env)
    run_dir = RunDir(tmp_path / "offline-run").create(config)
    replay_dir = str(run_dir.replay_directory(config))
    prepared = prepare_dataset(config, spec, replay_dir)
    system = build_system(config, spec, local=True, replay_dir=replay_dir)
    rows = []
    try:
        summary = OfflineDriver(config, spec, system, run_dir, prepared, on_report=rows.append).run()
    finally:
        kill_system(system)
    return config, system, run_dir, prepared, summary, rows


def test_no_rollout_worker_and_no_env_step_for_training(offline_run):
    config, system, run_dir, prepared, summary, rows = offline_run
    assert system.rollout == {} and config.rollout.num_workers == 0
    assert summary.env_steps == 0 and all(r["env_steps"] == 0 for r in rows)
    assert summary.stopped_because == "policy-update budget of 40 reached"
    # `real` holds exactly the dataset: every row written by the import, none by a rollout worker
    stored = read_table(str(run_dir.replay_directory(config)), "real").concatenated()
    assert len(stored["obs"]) == prepared.rows == 400
    assert {writer_role(int(w)) for w in np.unique(stored["writer_id"])} == {"import"}


def test_policy_is_cloned_then_refined_only_on_imagined_rows(offline_run):
    config, system, run_dir, prepared, summary, rows = offline_run
    loop = system.policy.wrapped
    assert loop.learner.num_updates >= 40
    refined = [r for r in rows if r.get("offline_phase") == "refine" and "policy_refine_real_rows" in r]
    assert refined and all(r["policy_refine_real_rows"] == 0 for r in refined)
    assert rows[-1]["imagination_transitions"] > 0
    assert "policy_bc_loss" in rows[-1]  # the cloning updates reported
    summary_file = json.loads((run_dir.path / "offline.json").read_text())
    assert summary_file["training_env_steps"] == 0
    phases = [e["phase"] for e in summary_file["evals"]]
    assert phases[0] == "bc" and phases[-1] == "final"
    # every eval env step is counted, none is training data: one 50-step episode per evaluation
    assert summary_file["eval_env_steps"] == 50 * len(summary_file["evals"])
    assert rows[-1]["eval_env_steps_total"] == summary_file["eval_env_steps"]
    assert rows[-1]["eval_return_mean"] == pytest.approx(summary_file["evals"][-1]["return_mean"])
    assert (run_dir.path / "learning_curve.png").is_file() and (run_dir.path / "checkpoint" / "actor.pt").is_file()


def test_model_fit_ends_and_sets_the_conservatism_from_its_calibration(offline_run):
    config, system, run_dir, prepared, summary, rows = offline_run
    summary_file = json.loads((run_dir.path / "offline.json").read_text())
    calibration, conservatism = summary_file["calibration"], summary_file["conservatism"]
    assert 0 <= calibration["val_coverage_90"] <= 1 and calibration["val_calibration_ece"] >= 0
    penalty, threshold = conservatism_from_calibration(calibration, prepared.reward_std,
                                                       config.world_model.calibration_bins)
    assert conservatism["penalty_scale"] == pytest.approx(penalty) and penalty > 0
    assert conservatism["max_disagreement"] == pytest.approx(threshold) and 0 < threshold < math.inf
    worker = system.imagination[0].wrapped
    assert worker.config.penalty_scale == pytest.approx(penalty)
    assert worker.config.max_disagreement == pytest.approx(threshold)
    assert conservatism["model_updates"] <= config.offline.model_max_updates


def test_kept_checkpoints_of_an_offline_run_are_keyed_by_policy_updates(offline_run):
    config, system, run_dir, prepared, summary, rows = offline_run
    kept = kept_checkpoints(run_dir.path)
    assert 1 <= len(kept) <= 2
    final = find_checkpoint(run_dir.path)
    for path in kept:
        meta = find_checkpoint(path).meta
        assert meta["kept_by"] == "policy_updates" and meta["policy_updates"] == int(path.name)
        assert meta["env_steps"] == 0 and meta["env_id"] == "Pendulum-v1"
    newest = find_checkpoint(kept[-1])
    assert newest.meta["policy_updates"] == final.load("policy.pt")["learner"]["num_updates"]
    assert newest.meta["offline_phase"] == "refine" and newest.meta["policy_version"] == final.meta["policy_version"]


def test_a_resumed_offline_run_refines_on_without_fitting_the_model_again(offline_run, tmp_path):
    config, system, run_dir, prepared, summary, rows = offline_run
    shutil.copytree(run_dir.path, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    found = find_checkpoint(run.path)
    saved = found.document("driver.json")["offline"]
    before = json.loads((run.path / "offline.json").read_text())
    assert saved["phase"] == "refine" and saved["model_frozen"] and saved["bc_done"]
    assert saved["conservatism"] == before["conservatism"] and resumed_offline_data(found) == prepared
    model_updates = found.load("world_model.pt")["learner"]["num_updates"]
    policy_updates = found.load("policy.pt")["learner"]["num_updates"]
    resumed = replace(config, offline=replace(config.offline, total_updates=policy_updates + 20))
    spec = probe_env(config.env)
    again = build_system(resumed, spec, local=True, replay_dir=str(run.replay_directory(resumed)),
                         run_path=str(run.path))
    try:
        summary = OfflineDriver(resumed, spec, again, run, resumed_offline_data(found), resume=found).run()
    finally:
        kill_system(again)
    assert summary.stopped_because == f"policy-update budget of {policy_updates + 20} reached"
    assert again.world_model.wrapped.learner.num_updates == model_updates  # restored frozen, not fitted again
    policy = again.policy.wrapped
    assert policy.learner.num_updates >= policy_updates + 20 and policy.restored_version is not None
    worker = again.imagination[0].wrapped
    assert worker.config.penalty_scale == pytest.approx(saved["conservatism"]["penalty_scale"])
    assert worker.config.max_disagreement == pytest.approx(saved["conservatism"]["max_disagreement"])
    after = json.loads((run.path / "offline.json").read_text())
    assert after["policy_updates"] >= policy_updates + 20 and after["training_env_steps"] == 0
    assert after["evals"][:len(before["evals"])] == before["evals"] and after["evals"][-1]["phase"] == "final"
    assert after["evals"][-1]["policy_updates"] > before["evals"][-1]["policy_updates"]
    assert after["conservatism"] == before["conservatism"] and after["calibration"] == before["calibration"]
    metrics = pq.read_table(run.path / "metrics.parquet").to_pandas()
    assert (metrics["env_steps"] == 0).all() and metrics["offline_policy_updates"].max() >= policy_updates + 20
    assert (metrics["policy_refine_real_rows"].dropna() == 0).all()


def test_an_offline_run_resumed_from_a_cut_while_fitting_goes_on_fitting_and_cloning(offline_run, tmp_path):
    config, system, run_dir, prepared, summary, rows = offline_run
    config = replace(config, name="fit", run=replace(config.run, keep_checkpoints=0, checkpoint_every_s=0))
    spec = probe_env(config.env)
    run = RunDir(tmp_path / "fit").create(config)
    replay_dir = str(run.replay_directory(config))
    data = prepare_dataset(config, spec, replay_dir)
    first = build_system(config, spec, local=True, replay_dir=replay_dir)
    try:  # a cut while the model is fitted and the policy cloned: 10 model updates, 7 of 20 cloning updates
        first.world_model.wrapped.run(max_seconds=60, max_updates=10)
        first.policy.wrapped.run(max_seconds=60, max_updates=7)
        assert OfflineDriver(config, spec, first, run, data).checkpoint(deadline=time.monotonic() + 60)
    finally:
        kill_system(first)
        for shard in first.shards:  # its replay files are free for the resumed run's shards
            shard.wrapped.close()
    found = find_checkpoint(run.path)
    saved = found.document("driver.json")["offline"]
    assert saved["phase"] == "fit" and not saved["model_frozen"] and not saved["conservatism"]
    model_updates = found.load("world_model.pt")["learner"]["num_updates"]
    cloned = found.load("policy.pt")["learner"]["num_updates"]
    assert (model_updates, cloned) == (10, 7)

    again = build_system(config, spec, local=True, replay_dir=replay_dir, run_path=str(run.path))
    loop = again.policy.wrapped
    assert loop.learner.num_updates == cloned
    resumed_rows = []
    try:
        summary = OfflineDriver(config, spec, again, run, resumed_offline_data(found), resume=found,
                                on_report=resumed_rows.append).run()
    finally:
        kill_system(again)
    assert summary.stopped_because == "policy-update budget of 40 reached"
    assert again.world_model.wrapped.learner.num_updates > model_updates  # the fit went on
    bc = [r["policy_bc_loss"] for r in resumed_rows if "policy_bc_loss" in r]
    after = json.loads((run.path / "offline.json").read_text())
    assert bc and after["conservatism"]["penalty_scale"] > 0
    assert [e["phase"] for e in after["evals"]][-1] == "final" and after["training_env_steps"] == 0
    # cloning counted on from the restored updates: the SAC updates (the critics' optimizer steps) began right
    # after bc_init_updates cloning updates in all
    assert loop.learner.num_updates >= config.offline.total_updates
    steps = {int(state["step"]) for state in loop.learner.critic_optimizer.state.values()}
    assert steps == {loop.learner.num_updates - config.policy.bc_init_updates}


def test_a_checkpoint_without_offline_state_is_refused_in_one_line(tmp_path):
    from system.checkpoint import write_checkpoint
    from system.run_dir import CheckpointError

    write_checkpoint(tmp_path, {}, {"driver.json": {"env_steps": 0}}, {"format": 1})
    with pytest.raises(CheckpointError, match="has no offline state"):
        resumed_offline_data(find_checkpoint(tmp_path))


def test_a_restarted_imagination_worker_gets_the_conservatism_again(offline_run):
    config, system, run_dir, prepared, summary, rows = offline_run
    driver = OfflineDriver(config, probe_env(config.env), system, run_dir, prepared)
    driver.model_frozen, driver.conservatism = True, {"penalty_scale": 0.25, "max_disagreement": 0.5}
    worker = system.imagination[0]
    configured = worker.wrapped.config
    system.by_name["imagination-0"] = worker  # as on Ray, where the driver probes it by name
    try:
        driver._on_alive(_Call("alive", payload="imagination-0"), ("first", 1))  # its first answer: no restart
        assert worker.wrapped.config.penalty_scale != 0.25
        driver._on_alive(_Call("alive", payload="imagination-0"), ("second", 2))  # a new process: Ray restarted it
        assert (worker.wrapped.config.penalty_scale, worker.wrapped.config.max_disagreement) == (0.25, 0.5)
        assert driver._ledger.restarts()["imagination"] == 1
    finally:
        system.by_name.pop("imagination-0")
        worker.wrapped.config = configured


def test_conservatism_from_known_calibration():
    metrics = {"val_calib_q1_disagreement": 1.0, "val_calib_q1_error": 2.0,
               "world_model_val_calib_q2_disagreement": 2.0, "val_calib_q2_error": 4.0, "val_coverage_90": 0.9}
    penalty, threshold = conservatism_from_calibration(metrics, reward_std=3.0, bins=2)
    assert penalty == pytest.approx(2.0 * 3.0) and threshold == pytest.approx(2.0)  # slope 2, no inflation
    # over-confident intervals (68% inside the 90% ones: z 0.994 for 1.645): the penalty grows by 1.645 / 0.994
    penalty, _ = conservatism_from_calibration({**metrics, "val_coverage_90": 0.68}, 3.0, 2, penalty_factor=0.5)
    assert penalty == pytest.approx(0.5 * 6.0 * 1.6449 / 0.9945, rel=1e-3)
    with pytest.raises(ValueError, match="'val_calib_q2_error' is missing"):
        conservatism_from_calibration({k: v for k, v in metrics.items() if k != "val_calib_q2_error"}, 1.0, 2)


def test_bad_datasets_are_refused(tmp_path):
    data = dataset(tmp_path, steps=60)
    config = load_config(["offline"], [f"offline.dataset={data}"])  # InvertedPendulum: obs 4, Pendulum's are 3
    with pytest.raises(OfflineDataError, match=r"column 'obs' has shape \(3,\) per row, expected \(4,\)"):
        prepare_dataset(config, probe_env(config.env), str(tmp_path / "replay"))

    spec = probe_env(ENV)
    pendulum = load_config(["pendulum", "offline"], [f"offline.dataset={tmp_path / 'empty'}"])
    (tmp_path / "empty").mkdir()
    table = pq.read_table(data / "t.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty" / "t.parquet")
    with pytest.raises(OfflineDataError, match="has no rows"):
        prepare_dataset(pendulum, spec, str(tmp_path / "replay"))

    (tmp_path / "nan").mkdir()
    reward = table.column("reward").to_numpy().copy()
    reward[5] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(reward)),
                   tmp_path / "nan" / "t.parquet")
    with pytest.raises(OfflineError, match="reward"):
        prepare_dataset(load_config(["pendulum", "offline"], [f"offline.dataset={tmp_path / 'nan'}"]), spec,
                        str(tmp_path / "replay"))


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    data = dataset(tmp_path, steps=60)
    assert main(["train", "offline", str(data), f"run.runs_dir={tmp_path}"]) == 2  # Pendulum data, default env
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 'obs' has shape (3,) per row, expected (4,)" in err[0]
    assert main(["train", "offline", "pendulum", str(data), str(data) + "x", f"run.runs_dir={tmp_path}"]) == 2
    assert "one dataset expected, got 2" in capsys.readouterr().err
    assert main(["train", "offline", "pendulum", f"run.runs_dir={tmp_path}"]) == 2
    assert "offline.dataset='': expected a dataset path" in capsys.readouterr().err
    assert main(["train", "debug", "--init", str(tmp_path)]) == 2
    assert "offline_to_online: expected both the preset and --init OFFLINE_RUN_DIR, got --init" in \
        capsys.readouterr().err
    assert main(["train", "offline_to_online", "debug", f"run.runs_dir={tmp_path}"]) == 2
    assert "got the preset alone" in capsys.readouterr().err
    runs = tmp_path / "o2o-runs"
    assert main(["train", "offline_to_online", "debug", f"run.runs_dir={runs}", "--init", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init: " in err[0] and "has no checkpoint" in err[0], err
    assert not runs.exists()  # refused before the run directory is made
    assert main(["train", "offline", "pendulum", str(data), f"run.runs_dir={tmp_path}", "--init",
                 str(tmp_path / "nope")]) == 2
    assert "--init: " in capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", [
    (["offline.dataset=x", "rollout.num_workers=1"], "rollout.num_workers=1: expected 0 with offline.enabled=true"),
    (["offline.dataset=x", "policy.real_ratio=0.5"], "policy.real_ratio=0.5: expected 0"),
    (["offline.dataset=x", "world_model.early_stop_patience=0"], "world_model.early_stop_patience=0: expected >= 1"),
    (["offline.dataset=x", "imagination.num_workers=0"], "imagination.num_workers=0: expected >= 1"),
    (["offline.dataset=x", "run.init_from=y"], "run.init_from='y': expected '' with offline.enabled=true"),
])
def test_offline_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(["offline"], overrides)


def test_no_rollout_workers_only_offline():
    with pytest.raises(ConfigError, match=r"rollout.num_workers=0: expected >= 1 \(0 only with offline"):
        load_config([], ["rollout.num_workers=0"])


def test_two_evaluations_asked_at_the_same_mark_keep_their_own_episodes_and_phase(offline_run, tmp_path):
    """The last periodic evaluation and the final one can be asked at the same policy update: the periodic one is
    scored in the model only (eval.real_every=2) and the final one for real, each with its own phase; each is in
    evals.parquet as soon as it is done."""
    config, system, run_dir, prepared, summary, rows = offline_run
    config = replace(config, eval=replace(config.eval, in_model=True, real_every=2, model_starts=8))
    replay_dir = shutil.copytree(run_dir.replay_directory(config), tmp_path / "replay",
                                 ignore=shutil.ignore_patterns("LOCK"))  # the dataset, where model starts come from
    scoring = build_system(config, probe_env(config.env), local=True, replay_dir=str(replay_dir))
    for name in ("policy", "world_model"):  # the fitted run's weights, where the evaluators read them
        scoring.store.wrapped.publish(name, *system.store.wrapped.latest(name))
    scores = RunDir(tmp_path / "scores").create(config)
    driver = OfflineDriver(config, probe_env(config.env), scoring, scores, prepared)
    driver.policy_updates = 40
    for phase in ("bc", "refine", "final"):  # asked 0 and 2 run real episodes; asked 1 (refine) does not
        driver._offline_eval(phase)
    deadline = time.monotonic() + 120
    while not driver._evals_done() and time.monotonic() < deadline:
        driver._pump(timeout=0.1)
    kill_system(scoring)
    by_phase = {e["phase"]: e for e in driver.evals}
    assert sorted(by_phase) == ["bc", "final", "refine"], driver.evals
    assert all(e["policy_updates"] == 40 and e["model_version"] >= 0 for e in driver.evals), driver.evals
    real = {phase: not math.isnan(e["return_mean"]) for phase, e in by_phase.items()}
    assert real == {"bc": True, "refine": False, "final": True}, driver.evals
    assert len(pq.read_table(scores.path / "evals.parquet")) == 3  # on disk after each, before any end of the run
