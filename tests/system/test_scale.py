"""A running `dynaray train` seen and changed from outside, one run on an embedded Ray: `dynaray status` of every
role; `dynaray scale` of the rollout workers 1 -> 3 -> 1 while the learners run; an external agent that downloads
the policy and sends an episode through the ingest gateway; then `dynaray scale` beyond what the cluster can place,
which answers at once with what is missing, while the run goes on with the workers it has, reports the worker it
cannot place as stalled, and ends by its budget.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there).
"""

import json
import re

import gymnasium as gym
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actors.gateway_client import fetch_policy, fetch_spec, send_episode
from tests.system.runs import TrainRun, assert_well_formed, dynaray, stored_rows

pytestmark = pytest.mark.ray

BUDGET = 5000
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


def test_status_scale_and_gateway_episode_while_learners_run_then_scale_beyond_the_cluster(tmp_path):
    runs = ["--runs-dir", str(tmp_path)]
    # ray.num_cpus=8: the debug roles take 5 CPUs and the gateway 0.5 (system.placement.planned_demands), so 3
    # rollout workers (1 CPU each) fit and a 4th cannot be placed
    with TrainRun(tmp_path, "debug", "name=scaled", f"run.runs_dir={tmp_path}", "run.progress=false",
                  f"run.total_env_steps={BUDGET}", "ray.num_cpus=8", "rollout.steps_per_call=25",
                  "run.stall_timeout_s=5", "placement.timeout_s=600", "run.startup_timeout_s=600",
                  "gateway.enabled=true", f"run.upload_to=file://{tmp_path / 'uploaded'}",
                  env={"DYNARAY_GATEWAY_TOKEN": TOKEN}) as run:
        line = run.wait_until(lambda: run.saw("ingest gateway at"), 300, "the gateway to start")
        url = line.split(" at ")[1].split()[0]
        run.wait_until(lambda: run.processes("ray::PolicyLoop.run"), 300, "the policy learner to run")
        # Scale up first and send the gateway's episode while the new workers start: on a fast machine the
        # rate-limited run collects its whole budget within a minute of the policy learner's start.
        up = dynaray("scale", "rollout=3", *runs)
        assert up.returncode == 0, up.stderr
        assert "run scaled: rollout 1 -> 3" in up.stdout and "cannot place" not in up.stderr, up.stderr
        run.wait_until(lambda: fetch_spec(url, TOKEN)["policy"]["version"] is not None, 180, "a published policy")
        answer = robot_episode(url, TOKEN)
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 3, 120, "3 rollout workers")

        # dynaray status of the running system: every role, and a run it cannot find named with where it looked
        shown = dynaray("status", *runs)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("run scaled on the Ray cluster at 127.0.0.1:"), shown.stdout
        roles = {line.split()[0]: line.split() for line in lines if line and line.split()[0].islower()}
        for role in ("replay-shard", "weights-store", "policy-learner", "world-model-learner", "rollout",
                     "imagination", "evaluator", "control", "gateway"):
            assert role in roles, shown.stdout
        assert roles["rollout"][1:3] == ["3", "3/3"], shown.stdout
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

        down = dynaray("scale", "rollout=1", "--run", "scaled", *runs)
        assert down.returncode == 0, down.stderr
        assert "run scaled: rollout 3 -> 1" in down.stdout
        run.wait_until(lambda: len(run.processes("ray::RolloutWorker")) == 1, 120, "1 rollout worker")
        bad = dynaray("scale", "rollout=0", *runs)
        assert bad.returncode == 2 and "rollout=0: expected 1 <= rollout <= 4096" in bad.stderr, bad.stderr
        unknown = dynaray("scale", "learner=2", *runs)
        assert unknown.returncode == 2 and "unknown pool 'learner'" in unknown.stderr, unknown.stderr

        # beyond the cluster: the answer comes without waiting for the workers to be made, and names what lacks
        beyond = dynaray("scale", "rollout=4", *runs)
        assert beyond.returncode == 0, beyond.stderr
        assert "run scaled: rollout 1 -> 4" in beyond.stdout
        # 2 of the 3 new workers fit (fewer while Ray's view of the free CPUs lags the retired workers' exit)
        assert re.search(r"cannot place (1 of the|2 of the|the) 3 new rollout worker\(s\) now: each asks CPU 1, "
                         r"the cluster lacks CPU", beyond.stderr), beyond.stderr

        # the worker that cannot be placed is reported by name once run.stall_timeout_s has passed (which of the
        # three new ones is Ray's choice; all three wait while the retired workers still hold their CPUs)
        def stalled() -> str | None:
            shown = dynaray("status", *runs).stdout
            found = re.findall(r"(rollout-\d+) not placed", shown)
            return found[0] if len(found) == 1 and f"{found[0]} stalled" in shown else None

        unplaced = run.wait_until(stalled, 300, "one new rollout worker reported not placed and stalled")
        run.wait(timeout=600)
    assert run.returncode == 0, run.tail()

    metrics = pq.read_table(tmp_path / "scaled" / "metrics.parquet").to_pylist()
    workers = [row["rollout_workers"] for row in metrics]
    assert max(workers) == 3 and 1 in workers and workers[-1] == 3, workers
    assert unplaced in metrics[-1]["stalled"], (unplaced, metrics[-1])
    # The learners kept their ratio through the changes: 3 policy updates per row of real after 300 learning starts
    # (the gateway's rows count too), within the error buffer of 100 rows.
    inserted = BUDGET + answer["rows"]
    assert abs(metrics[-1]["policy_total_updates"] - 3 * (inserted - 300)) <= 3 * 100, metrics[-1]
    assert metrics[-1]["gateway_episodes"] == 1 and metrics[-1]["gateway_requests_200"] >= 2, metrics[-1]
    rows = stored_rows(tmp_path / "scaled")
    from_gateway = rows["writer_id"] == answer["writer_id"]
    assert from_gateway.sum() == answer["rows"] > 0
    # every env step of the budget stored, none held by the worker that was never made; retired workers flushed
    # everything they collected
    assert (~from_gateway).sum() == BUDGET == metrics[-1]["env_steps"]
    assert_well_formed(rows)
    gone = dynaray("scale", "rollout=2", *runs)
    assert gone.returncode == 1 and "no running system found" in gone.stderr

    # The token (from the environment) is in no file the run wrote, nor in the copy run.upload_to made.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("uploaded" in p.parts for p in written) and not (tmp_path / "scaled" / "gateway_token").exists()
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []
    assert TOKEN not in run.log()
