"""A running `dynaray train` changed from outside: `dynaray scale` (rollout workers 1 -> 3 -> 1 while the learners
run) and an external agent that downloads the policy and sends an episode through the ingest gateway.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import time

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actors.gateway_client import fetch_policy, fetch_spec, send_episode
from tests.system.runs import TrainRun, assert_well_formed, dynaray, stored_rows

pytestmark = pytest.mark.ray

BUDGET = 4000
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
        for key, value in zip(columns, (obs, action, reward, next_obs, terminated, truncated)):
            columns[key].append(value)
        obs, done = next_obs, terminated or truncated
    episode = {k: np.asarray(v, dtype=np.float32 if k not in ("terminated", "truncated") else bool)
               for k, v in columns.items()}
    return send_episode(url, token, episode, policy_version=spec["policy"]["version"])


def test_scale_rollout_up_and_down_and_gateway_episode_while_learners_run(tmp_path):
    runs = ["--runs-dir", str(tmp_path)]
    with TrainRun(tmp_path, "debug", "name=scaled", f"run.runs_dir={tmp_path}", "run.progress=false",
                  f"run.total_env_steps={BUDGET}", "ray.num_cpus=8", "rollout.steps_per_call=25",
                  "gateway.enabled=true", f"run.upload_to=file://{tmp_path / 'uploaded'}",
                  env={"DYNARAY_GATEWAY_TOKEN": TOKEN}) as run:
        line = run.wait_until(lambda: run.saw("ingest gateway at"), 180, "the gateway to start")
        url = line.split(" at ")[1].split()[0]
        run.wait_until(lambda: run.processes("ray::PolicyLoop.run"), 180, "the policy learner to run")
        # Scale up first and send the gateway's episode while the new workers start: on a fast machine the
        # rate-limited run collects its whole budget within a minute of the policy learner's start.
        up = dynaray("scale", "rollout=3", *runs)
        assert up.returncode == 0, up.stderr
        assert "run scaled: rollout 1 -> 3" in up.stdout
        run.wait_until(lambda: fetch_spec(url, TOKEN)["policy"]["version"] is not None, 180, "a published policy")
        answer = robot_episode(url, TOKEN)
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 3, 120, "3 rollout workers")
        time.sleep(3)  # the new workers collect for a while
        down = dynaray("scale", "rollout=1", "--run", "scaled", *runs)
        assert down.returncode == 0, down.stderr
        assert "run scaled: rollout 3 -> 1" in down.stdout
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 1, 120, "1 rollout worker")

        bad = dynaray("scale", "rollout=0", *runs)
        assert bad.returncode == 2 and "rollout=0: expected 1 <= rollout <= 4096" in bad.stderr, bad.stderr
        unknown = dynaray("scale", "learner=2", *runs)
        assert unknown.returncode == 2 and "unknown pool 'learner'" in unknown.stderr, unknown.stderr
        run.wait(timeout=600)
    assert run.returncode == 0, run.tail()

    metrics = pq.read_table(tmp_path / "scaled" / "metrics.parquet").to_pylist()
    workers = [row["rollout_workers"] for row in metrics]
    assert max(workers) == 3 and workers[-1] == 1, workers
    # The learners kept their ratio through the changes: 3 policy updates per row of real after 300 learning starts
    # (the gateway's rows count too), within the error buffer of 100 rows.
    inserted = BUDGET + answer["rows"]
    assert abs(metrics[-1]["policy_total_updates"] - 3 * (inserted - 300)) <= 3 * 100, metrics[-1]
    assert metrics[-1]["gateway_episodes"] == 1 and metrics[-1]["gateway_requests_200"] >= 2, metrics[-1]
    rows = stored_rows(tmp_path / "scaled")
    from_gateway = rows["writer_id"] == answer["writer_id"]
    assert from_gateway.sum() == answer["rows"] > 0
    assert (~from_gateway).sum() == BUDGET  # retired workers flushed everything they collected
    assert_well_formed(rows)
    gone = dynaray("scale", "rollout=2", *runs)
    assert gone.returncode == 1 and "no running system found" in gone.stderr

    # The token (from the environment) is in no file the run wrote, nor in the copy run.upload_to made.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("uploaded" in p.parts for p in written) and not (tmp_path / "scaled" / "gateway_token").exists()
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []
    assert TOKEN not in run.log()
