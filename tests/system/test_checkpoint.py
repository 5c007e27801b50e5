"""Whole-system checkpoints: the format (atomic swap, fallback to the previous one, refusals), the driver's lock,
and learners and shards restoring themselves from a checkpoint, in process."""

import json
import os
import socket
import time

import pytest
import torch

from actors.envs import probe_env
from system.checkpoint import (CHECKPOINT, KEPT, PREVIOUS, TEMPORARY, DriverLock, RunLockedError, check_compatible,
                               checkpoint_run_path, describe_meta, find_checkpoint, keep_checkpoint, kept_checkpoints,
                               newest_checkpoint, write_checkpoint)
from system.config import load_config
from system.run_dir import CheckpointError
from system.wiring import build_system


@pytest.fixture
def config():
    return load_config(["debug"], ["replay.insert_timeout_s=5", "replay.sample_timeout_s=5"])


def write(run, value, meta=None):
    return write_checkpoint(run, {"policy.pt": {"w": torch.full((3,), float(value))}}, {"driver.json": {"n": value}},
                            meta or {"format": 1, "env_steps": value})


def test_a_new_checkpoint_replaces_the_current_one_and_keeps_it_as_previous(tmp_path):
    write(tmp_path, 1)
    assert not (tmp_path / PREVIOUS).exists()
    write(tmp_path, 2)
    found = find_checkpoint(tmp_path)
    assert found.path == tmp_path / CHECKPOINT and found.meta["env_steps"] == 2
    assert found.document("driver.json") == {"n": 2} and found.load("policy.pt")["w"].tolist() == [2.0] * 3
    assert json.loads((tmp_path / PREVIOUS / "meta.json").read_text())["env_steps"] == 1
    assert found.meta["files"].keys() == {"policy.pt", "driver.json"}
    assert not (tmp_path / TEMPORARY).exists()
    assert found.load("world_model.pt") is None  # a file the checkpoint does not have


@pytest.mark.parametrize("damage", ["file_missing", "file_truncated", "meta_missing", "meta_corrupt"])
def test_an_incomplete_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    write(tmp_path, 1)
    write(tmp_path, 2)
    newest = tmp_path / CHECKPOINT
    if damage == "file_missing":
        (newest / "policy.pt").unlink()
    elif damage == "file_truncated":
        (newest / "policy.pt").write_bytes((newest / "policy.pt").read_bytes()[:10])
    elif damage == "meta_missing":
        (newest / "meta.json").unlink()
    else:
        (newest / "meta.json").write_text("{not json")
    found = find_checkpoint(tmp_path)
    assert found.path == tmp_path / PREVIOUS and found.meta["env_steps"] == 1


def test_a_crash_between_the_renames_leaves_the_previous_one(tmp_path):
    write(tmp_path, 1)
    write(tmp_path, 2)
    (tmp_path / CHECKPOINT).rename(tmp_path / TEMPORARY)  # as if killed after checkpoint -> prev, before tmp -> current
    assert find_checkpoint(tmp_path).meta["env_steps"] == 1
    write(tmp_path, 3)  # the next one writes over the leftover temporary directory
    assert find_checkpoint(tmp_path).meta["env_steps"] == 3
    assert json.loads((tmp_path / PREVIOUS / "meta.json").read_text())["env_steps"] == 1


def test_no_complete_checkpoint_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        find_checkpoint(tmp_path)
    write(tmp_path, 1)
    (tmp_path / CHECKPOINT / "policy.pt").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: checkpoint/: policy.pt is missing"):
        find_checkpoint(tmp_path)
    write(tmp_path, 2, meta={"format": 99})
    with pytest.raises(CheckpointError, match="format 99, expected 1"):
        find_checkpoint(tmp_path)


def test_a_checkpoint_of_another_version_env_or_network_is_refused(tmp_path, config):
    spec = probe_env(config.env)
    expected = describe_meta(config, spec)
    write(tmp_path, 1, meta=expected)
    check_compatible(find_checkpoint(tmp_path), expected)
    cases = [("dynaray_version", "0.0.1", "dynaray version '0.0.1', expected"),
             ("env_id", "Hopper-v5", "env 'Hopper-v5', expected 'InvertedPendulum-v5'"),
             ("obs_shape", [11], "observation shape [11], expected [4]")]
    for key, value, message in cases:
        write(tmp_path, 1, meta={**expected, key: value})
        with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_compatible(find_checkpoint(tmp_path), expected)
    write(tmp_path, 1, meta={**expected, "networks": {**expected["networks"], "policy_hidden_sizes": [256, 256]}})
    with pytest.raises(CheckpointError, match=r"policy_hidden_sizes=\[256, 256\], expected \[64, 64\]"):
        check_compatible(find_checkpoint(tmp_path), expected)


def test_the_driver_lock_refuses_a_second_driver_and_frees_with_its_holder(tmp_path):
    lock = DriverLock(tmp_path).acquire()
    holder = json.loads((tmp_path / "driver.lock").read_text())
    assert holder == {"pid": os.getpid(), "hostname": socket.gethostname()}
    with pytest.raises(RunLockedError, match=rf"is still running \(driver pid {os.getpid()} on host"):
        DriverLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / "driver.lock").exists()
    # a dead driver on this host left its file: the kernel released its flock, so the lock is free
    (tmp_path / "driver.lock").write_text(json.dumps({"pid": 999999, "hostname": socket.gethostname()}))
    DriverLock(tmp_path).acquire().release()


def test_a_driver_on_another_host_is_alive_while_it_touches_the_lock(tmp_path):
    path = tmp_path / "driver.lock"
    path.write_text(json.dumps({"pid": 1, "hostname": "elsewhere"}))
    with pytest.raises(RunLockedError, match="host elsewhere"):
        DriverLock(tmp_path).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    DriverLock(tmp_path).acquire().release()


def test_learners_restore_their_full_state_and_publish_above_the_saved_version(tmp_path, config):
    spec = probe_env(config.env)
    system = build_system(config, spec, local=True)
    system.rollout[0].wrapped.run(400)
    policy, model = system.policy.wrapped, system.world_model.wrapped
    policy.run(max_seconds=30)
    model.run(max_seconds=30)
    saved = {name: loop.checkpoint_state() for name, loop in (("policy", policy), ("world_model", model))}
    assert saved["policy"]["version"] == system.store.wrapped.versions()["policy"]  # the newest updates published
    assert saved["policy"]["pause_s"] >= 0
    write_checkpoint(tmp_path, {f"{n}.pt": {k: s[k] for k in ("learner", "weights", "version")}
                                for n, s in saved.items()}, {}, {"format": 1})

    restored = build_system(config, spec, local=True, run_path=str(tmp_path))
    for name in ("policy", "world_model"):
        loop = getattr(restored, name).wrapped
        state, before = loop.learner.state_dict(), saved[name]["learner"]
        assert loop.restored_version == saved[name]["version"]
        assert state["num_updates"] == before["num_updates"] > 0
        assert torch.equal(state["generator"]["state"], before["generator"]["state"])
        key = "actor" if name == "policy" else "dynamics"
        for tensor, original in zip(state[key].values(), before[key].values()):
            assert torch.equal(tensor, original)
        # published at once, numbered above the checkpoint's version
        assert restored.store.wrapped.versions()[name] == saved[name]["version"] + 1
    optimizer = restored.policy.wrapped.learner.state_dict()["critic_optimizer"]["state"]
    assert optimizer and all(torch.equal(optimizer[k]["exp_avg"], saved["policy"]["learner"]["critic_optimizer"]
                                         ["state"][k]["exp_avg"]) for k in optimizer)
    validation = restored.world_model.wrapped.learner.validation
    assert validation.size == model.learner.validation.size > 0


def test_shards_continue_their_rate_limiters_from_the_marker(tmp_path, config):
    from dataclasses import replace

    config = replace(config, world_model=replace(config.world_model, enabled=False))  # one consumer: policy
    spec = probe_env(config.env)
    system = build_system(config, spec, local=True, replay_dir=str(tmp_path))
    rollout, policy = system.rollout[0].wrapped, system.policy.wrapped
    rollout.run(350)
    rollout.flush()
    policy.run(max_seconds=30)
    markers = [shard.wrapped.checkpoint_marker() for shard in system.shards]
    assert sum(m["real"]["limiters"]["policy"]["sampled"] for m in markers) > 0
    rollout.run(50)  # acknowledged after the checkpoint: recovered from the logs
    policy.run(max_seconds=30)
    rollout.flush()
    for shard in system.shards:
        shard.wrapped.close()

    again = build_system(config, spec, local=True, replay_dir=str(tmp_path))
    since_total = 0
    for shard, marker in zip(again.shards, markers):
        shard.wrapped.restore_accounting(marker)
        stats = shard.wrapped.stats()["real"]
        since = stats["inserted"] - marker["real"]["inserted"]
        since_total += since
        for consumer, saved in marker["real"]["limiters"].items():
            now = stats["consumers"][consumer]
            assert (now["inserted"], now["sampled"]) == (saved["inserted"] + since, saved["sampled"]), consumer
    assert since_total == 50


def keep(run, key, value, n=3):
    return keep_checkpoint(run, key, {"w": torch.full((2,), float(value))},
                           {"format": 1, "env_steps": key, "policy_version": value}, keep=n)


def test_kept_checkpoints_are_named_by_key_oldest_first_and_pruned_beyond_n(tmp_path):
    assert kept_checkpoints(tmp_path) == []
    for key in (500, 1500, 1000, 2000):  # 500 is the oldest: deleted once four are kept with n=3
        keep(tmp_path, key, key)
    kept = kept_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["0000001000", "0000001500", "0000002000"]
    assert all(p.parent == tmp_path / KEPT for p in kept)
    found = find_checkpoint(kept[0])  # a kept directory is a checkpoint directory as it is
    assert found.path == kept[0] and found.meta["env_steps"] == 1000 and "written_at" in found.meta
    assert found.meta["files"].keys() == {"actor.pt"} and found.load("actor.pt")["w"].tolist() == [1000.0] * 2
    assert newest_checkpoint(kept[-1]).meta["policy_version"] == 2000
    assert checkpoint_run_path(kept[0]) == tmp_path


def test_a_kept_checkpoint_of_the_same_key_is_replaced_and_incomplete_ones_are_skipped(tmp_path):
    keep(tmp_path, 100, 1)
    keep(tmp_path, 100, 2)  # the final checkpoint at the last periodic one's env steps: the newer policy wins
    assert [find_checkpoint(p).meta["policy_version"] for p in kept_checkpoints(tmp_path)] == [2]
    keep(tmp_path, 200, 3)
    (tmp_path / KEPT / "0000000200" / "actor.pt").write_bytes(b"cut")  # damaged: skipped
    (tmp_path / KEPT / "0000000300.tmp").mkdir()  # a crash while writing: skipped, removed by the next one
    (tmp_path / KEPT / "notes").mkdir()
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["0000000100"]
    with pytest.raises(CheckpointError, match="actor.pt has 3 bytes"):
        find_checkpoint(tmp_path / KEPT / "0000000200")
    keep(tmp_path, 400, 4)
    assert not (tmp_path / KEPT / "0000000300.tmp").exists()
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["0000000100", "0000000400"]


def test_the_driver_keeps_the_policy_of_each_checkpoint(tmp_path, config):
    from dataclasses import replace

    from learners.sac import Policy
    from system.driver import Driver
    from system.run_dir import RunDir

    config = replace(config, run=replace(config.run, keep_checkpoints=2))
    spec = probe_env(config.env)
    system = build_system(config, spec, local=True)
    run_dir = RunDir(tmp_path / "run").create(config)
    driver = Driver(config, spec, system, run_dir)
    for steps in (1000, 2000, 3000):
        driver.env_steps = steps
        driver._write({"learners": {"policy": system.policy.wrapped.checkpoint_state()},
                       "counters": driver._counters(), "markers": {}, "began": 0.0})
    kept = kept_checkpoints(run_dir.path)
    assert [p.name for p in kept] == ["0000002000", "0000003000"]
    main, newest = find_checkpoint(run_dir.path), find_checkpoint(kept[-1])
    assert newest.meta["kept_by"] == "env_steps" and newest.meta["run"] == "run"
    for key in ("env_steps", "policy_version", "wall_time_s", "env_id", "obs_shape", "networks", "dynaray_version"):
        assert newest.meta[key] == main.meta[key], key
    check_compatible(newest, describe_meta(config, spec))
    actor = newest.load("actor.pt")  # what `dynaray eval` loads: the main checkpoint's actor
    assert all(torch.equal(actor[k], main.load("actor.pt")[k]) for k in actor)
    Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high,
           config.policy.hidden_sizes).load_state(actor)
