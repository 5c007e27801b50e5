"""A running `dynaray train` seen and changed from outside: `dynaray status` of every role, `dynaray scale` of the
rollout workers 1 -> 4 -> 1 while the learners run (one more than the cluster can place: `scale` answers at once
with what is missing, the run goes on with the workers it has, and the one never made is reported as stalled), an
external agent that downloads the policy and sends an episode through the ingest gateway, and SIGTERM at the end:
exit 143 with a checkpoint, every env step counted is a stored row, and the learners kept their ratio to the rows
through it all.

One run for all of it (each run starts Ray and nine roles, about half a minute on 2 cores). Runs only inside a
loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import signal

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actors.gateway_client import fetch_policy, fetch_spec, send_episode
from tests.system.runs import TrainRun, assert_well_formed, dynaray, stored_rows

pytestmark = pytest.mark.ray

NO_END = 10**7
"""The run's env-step budget: more than it reaches, so that it goes on through the checks however fast the machine
(the rate-limited run collects about 4,000 env steps within a minute of the policy learner's start on a fast one)
until the test stops it with SIGTERM."""
TOKEN = "scale-test-gateway-token-0123456789"


def robot_episode(url: str, token: str) -> dict:
    """One InvertedPendulum-v5 episode outside Ray with the downloaded policy; returns the gateway's answer."""
    policy, spec = fetch_policy(url, token)
    env = gym.make("InvertedPendulum-v5", max_episode_steps=30)
    obs, _ = env.reset(seed=0)
    columns = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}
    done = False
    while not done:
        action = policy(torch.as_tensor(obs, dtype=torch.float32)[None]).numpy()[0]
        next_obs, reward, terminated, truncated, _ = env.step(action)
        truncated = truncated and not terminated  # the time limit on a falling step: an end, not a cut (the
        # gateway takes at most one of the two on a row)
        for key, value in zip(columns, (obs, action, reward, next_obs, terminated, truncated)):
            columns[key].append(value)
        obs, done = next_obs, terminated or truncated
    episode = {k: np.asarray(v, dtype=np.float32 if k not in ("terminated", "truncated") else bool)
               for k, v in columns.items()}
    return send_episode(url, token, episode, policy_version=spec["policy"]["version"])


def check_status(run: TrainRun, runs: list[str], tmp_path) -> None:
    """`dynaray status` of the running system lists every role; a run it cannot find is named with where it
    looked."""

    def reported():  # the driver's first report is posted (before: no ray.json or no control actor yet)
        shown = dynaray("status", *runs)
        assert "Traceback" not in shown.stderr, shown.stderr
        return shown if shown.returncode == 0 and "env steps" in shown.stdout else None

    shown = run.wait_until(reported, 300, "a status with env steps")
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("run scaled on the Ray cluster at 127.0.0.1:")
    roles = {line.split()[0]: line.split() for line in lines if line and line.split()[0].islower()}
    for role in ("replay-shard", "weights-store", "policy-learner", "world-model-learner", "rollout", "imagination",
                 "evaluator", "control", "gateway"):
        assert role in roles, shown.stdout
    assert roles["rollout"][1:3] == ["1", "1/1"], shown.stdout
    assert roles["policy-learner"][1:3] == ["1", "1/1"], shown.stdout
    wrong = dynaray("status", "--run", "wrong-name", *runs)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines() == [
        f"dynaray: error: no running system named 'wrong-name' under {str(tmp_path)!r} (no live ray.json); "
        f"pass --address of its Ray cluster"]
    address = json.loads((tmp_path / "scaled" / "ray.json").read_text())["address"]
    elsewhere = dynaray("status", "--run", "wrong-name", "--address", address, *runs)
    assert elsewhere.returncode == 1 and "Traceback" not in elsewhere.stderr
    assert f"no running system named 'wrong-name' on the Ray cluster at {address}" in elsewhere.stderr


def test_status_scale_within_and_beyond_the_cluster_and_a_gateway_episode_while_learners_run(tmp_path):
    runs = ["--runs-dir", str(tmp_path)]
    # ray.num_cpus=8: the debug roles and the gateway take 5.5 CPUs (system.placement.planned_demands), each rollout
    # worker 1, so 3 rollout workers fit and a fourth cannot be placed
    with TrainRun(tmp_path, "debug", "name=scaled", f"run.runs_dir={tmp_path}", "run.progress=false",
                  f"run.total_env_steps={NO_END}", "ray.num_cpus=8", "rollout.steps_per_call=25",
                  "run.stall_timeout_s=5", "placement.timeout_s=600", "run.startup_timeout_s=600",
                  "gateway.enabled=true", f"run.upload_to=file://{tmp_path / 'uploaded'}",
                  env={"DYNARAY_GATEWAY_TOKEN": TOKEN}) as run:
        line = run.wait_until(lambda: run.saw("ingest gateway at"), 300, "the gateway to start")
        url = line.split(" at ")[1].split()[0]
        run.wait_until(lambda: run.processes("ray::PolicyLoop.run"), 300, "the policy learner to run")
        check_status(run, runs, tmp_path)

        # Scale up beyond the cluster, and send the gateway's episode while the new workers start.
        up = dynaray("scale", "rollout=4", *runs)  # answers without waiting for the workers to be made
        assert up.returncode == 0, up.stderr
        assert "run scaled: rollout 1 -> 4" in up.stdout
        assert "cannot place 1 of the 3 new rollout worker(s) now" in up.stderr and "lacks CPU" in up.stderr, up.stderr
        run.wait_until(lambda: fetch_spec(url, TOKEN)["policy"]["version"] is not None, 180, "a published policy")
        answer = robot_episode(url, TOKEN)
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 3, 120, "3 rollout workers")

        # the worker that cannot be placed is reported by name once run.stall_timeout_s has passed
        def stalled() -> str | None:
            shown = dynaray("status", *runs).stdout
            return shown if "rollout-3 stalled" in shown else None

        status = run.wait_until(stalled, 300, "rollout-3 reported stalled")
        assert "rollout-3 not placed" in status, status
        down = dynaray("scale", "rollout=1", "--run", "scaled", *runs)
        assert down.returncode == 0, down.stderr
        assert "run scaled: rollout 4 -> 1" in down.stdout
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 1, 120, "1 rollout worker")

        bad = dynaray("scale", "rollout=0", *runs)
        assert bad.returncode == 2 and "rollout=0: expected 1 <= rollout <= 4096" in bad.stderr, bad.stderr
        unknown = dynaray("scale", "learner=2", *runs)
        assert unknown.returncode == 2 and "unknown pool 'learner'" in unknown.stderr, unknown.stderr
        # Done: SIGTERM (as `ray job stop` sends): the workers flush, the learners end their calls, a checkpoint.
        run.proc.send_signal(signal.SIGTERM)
        run.wait(timeout=600)
    assert run.returncode == 143 and "Traceback" not in run.log(), run.tail()
    # SIGTERM's end: a checkpoint and every file a finished run writes, the driver's spill and lock gone
    run_dir = tmp_path / "scaled"
    for name in ("checkpoint/meta.json", "checkpoint/policy.pt", "checkpoint/world_model.pt", "checkpoint/actor.pt",
                 "evals.parquet", "metrics.parquet"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / ".metrics-rows").exists(), "the driver's spilled metrics rows go when it ends"
    assert not (run_dir / "driver.lock").exists()
    evals = pq.read_table(run_dir / "evals.parquet").to_pylist()
    # the curve is drawn once an evaluation had a policy
    assert (run_dir / "learning_curve.png").is_file() == any(e["policy_version"] >= 0 for e in evals), evals

    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    workers = [row["rollout_workers"] for row in metrics]
    assert max(workers) == 3 and workers[-1] == 1, workers
    assert any("rollout-3" in row["stalled"] for row in metrics), [row["stalled"] for row in metrics]
    # The learners kept their ratio through the changes: 3 policy updates per row of real after 300 learning starts
    # (the gateway's rows count too), within the error buffer of 100 rows (the rate limiter holds back inserts as
    # well as samples, and after the last insert the learners only sampled what their ratio allowed).
    env_steps = json.loads((run_dir / "checkpoint" / "meta.json").read_text())["env_steps"]
    inserted = env_steps + answer["rows"]
    assert abs(metrics[-1]["policy_total_updates"] - 3 * (inserted - 300)) <= 3 * 100, metrics[-1]
    assert metrics[-1]["gateway_episodes"] == 1 and metrics[-1]["gateway_requests_200"] >= 2, metrics[-1]
    rows = stored_rows(run_dir)
    from_gateway = rows["writer_id"] == answer["writer_id"]
    assert from_gateway.sum() == answer["rows"] > 0
    # every env step counted is a stored row: retired workers flushed what they collected, the others did at SIGTERM
    assert (~from_gateway).sum() == env_steps > 0
    assert_well_formed(rows)
    gone = dynaray("scale", "rollout=2", *runs)
    assert gone.returncode == 1 and "no running system found" in gone.stderr

    # The token (from the environment) is in no file the run wrote, nor in the copy run.upload_to made.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("uploaded" in p.parts for p in written) and not (run_dir / "gateway_token").exists()
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []
    assert TOKEN not in run.log()
