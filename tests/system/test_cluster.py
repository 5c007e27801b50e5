"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, token auth, explicit
ports and temp dir) running a `debug` training job submitted with `ray job submit`: rollout workers land on the node
that offers `rollout_node`, learners on the one that offers `learner_node`.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there). Ends the processes
it started by their ids (never `ray stop`).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT, DASHBOARD_PORT = 46379, 48265
HEAD_PORTS = ["--node-manager-port=46380", "--object-manager-port=46381", "--min-worker-port=46400",
              "--max-worker-port=46499", "--dashboard-agent-listen-port=46382", "--dashboard-agent-grpc-port=46383",
              "--runtime-env-agent-port=46384", "--metrics-export-port=46385", "--ray-client-server-port=46386"]
WORKER_PORTS = ["--node-manager-port=46390", "--object-manager-port=46391", "--min-worker-port=46500",
                "--max-worker-port=46599", "--dashboard-agent-listen-port=46392", "--dashboard-agent-grpc-port=46393",
                "--runtime-env-agent-port=46394", "--metrics-export-port=46395"]


def cluster_processes(temp_dir: str) -> list[int]:
    """Every process whose command line names the cluster's temp dir (GCS, raylets, agents, workers' parents)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if temp_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


def end_processes(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="drc", dir="/tmp")  # short: Ray's socket paths live below it
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token_path = Path(temp_dir) / "token"
    token_path.write_text(generate_new_authentication_token())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    started: list[int] = []
    try:
        head = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={GCS_PORT}", f"--temp-dir={temp_dir}",
             "--num-cpus=6", '--resources={"learner_node": 2}', "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}", *HEAD_PORTS],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert head.returncode == 0, head.stderr[-3000:]
        worker = subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{GCS_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
             '--resources={"rollout_node": 2}', *WORKER_PORTS],
            env=env, capture_output=True, text=True, timeout=180,
        )
        assert worker.returncode == 0, worker.stderr[-3000:]
        yield env
    finally:
        started = cluster_processes(temp_dir)
        end_processes(started)


def test_job_submitted_to_a_two_node_cluster_places_roles_by_resources(cluster, tmp_path):
    env = cluster
    runs = tmp_path / "runs"
    entrypoint = (
        f"{sys.executable} -m system.cli train debug name=cluster run.runs_dir={runs} run.progress=false "
        "run.total_env_steps=800 'rollout.resources={rollout_node: 1}' 'placement.policy.resources={learner_node: 1}' "
        "'placement.world_model.resources={learner_node: 1}'"
    )
    runtime_env = {"excludes": [".venv", ".git", "runs", "*.egg-info", "__pycache__"]}
    job = subprocess.run(
        [RAY, "job", "submit", f"--address=http://127.0.0.1:{DASHBOARD_PORT}", f"--working-dir={REPO}",
         f"--runtime-env-json={json.dumps(runtime_env)}", "--", *["bash", "-c", entrypoint]],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert job.returncode == 0 and "succeeded" in job.stdout, (job.stdout + job.stderr)[-4000:]

    run_dir = runs / "cluster"
    for name in ("config.yaml", "metrics.parquet", "evals.parquet", "learning_curve.png", "placement.json",
                 "checkpoint/actor.pt", "checkpoint/policy.pt"):
        assert (run_dir / name).is_file(), name
    nodes = subprocess.run(
        [RAY, "list", "nodes", f"--address=http://127.0.0.1:{DASHBOARD_PORT}", "--format=json", "--detail"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert nodes.returncode == 0, nodes.stderr[-2000:]
    by_resource = {}
    for node in json.loads(nodes.stdout):
        for resource in ("rollout_node", "learner_node"):
            if resource in node.get("resources_total", {}):
                by_resource[resource] = node["node_id"]
    placement = json.loads((run_dir / "placement.json").read_text())
    assert placement["rollout-0"]["node_id"] == by_resource["rollout_node"]
    assert placement["policy-learner"]["node_id"] == by_resource["learner_node"]
    assert placement["world-model-learner"]["node_id"] == by_resource["learner_node"]
    assert by_resource["rollout_node"] != by_resource["learner_node"]
