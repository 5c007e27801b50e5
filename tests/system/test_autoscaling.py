"""Ray's own autoscaler grows and shrinks a cluster under a `dynaray train` run, from the node types of
deploy/cluster.yaml.

The cluster is what ``ray.cluster_utils.AutoscalingCluster`` starts: a head started with ``--autoscaling-config``
for Ray's ``fake_multinode`` provider, whose autoscaler (Ray's monitor process, the real one) adds and removes
"nodes" that are raylets on this machine. AutoscalingCluster itself is not used: its ``start()`` and ``shutdown()``
run ``ray stop --force``, which ends every Ray process on the machine, and Ray 2.60's wheel lacks the
``fake_multi_node/example.yaml`` its constructor reads. The test writes the same config and starts the head itself
(own ports, temp dir and token; only the head up), runs `dynaray train debug cluster --address ...` against it,
and shows:
- the autoscaler adds the node types the roles' resources ask for: a cpu_worker for the rollout worker
  (rollout_node), a gpu_worker for the learners and the imagination worker (fractions of its GPU); the replay
  shards stay on the head (replay_node);
- `dynaray scale rollout=3` beyond the current nodes makes it add a cpu_worker, and a new worker lands there;
- `dynaray scale rollout=1` leaves that node idle and the autoscaler removes it while the run goes on;
- Ctrl-C then checkpoints the run on the cluster with every row it counted persisted; a role asking more than any
  node type offers stops the run with its name and what it asked for.
Sized for 2 cores: nodes of 1-2 logical CPUs, roles asking fractions of them and custom resources.

Runs only inside a loopback-only network namespace (tests/run.sh sets DYNARAY_NETNS=1 there). Ends the processes
it started by their ids (never `ray stop`).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.system.runs import assert_well_formed, stored_rows
from tests.system.test_cluster import cluster_processes, end_processes

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 47379
RUNTIME_ENV_AGENT_PORT = 47384
HEAD_PORTS = ["--node-manager-port=47380", "--object-manager-port=47381", "--min-worker-port=47400",
              "--max-worker-port=47499", "--dashboard-agent-listen-port=47382", "--dashboard-agent-grpc-port=47383",
              f"--runtime-env-agent-port={RUNTIME_ENV_AGENT_PORT}", "--metrics-export-port=47385",
              "--ray-client-server-port=47386"]
ON_THIS_MACHINE = {"head": {"CPU": 2, "replay_node": 2},
                   "cpu_worker": {"CPU": 1, "rollout_node": 2},
                   "gpu_worker": {"CPU": 1, "GPU": 1, "learner_gpu": 1}}
"""deploy/cluster.yaml's node types with their resources scaled to this machine: the same resource names, a
cpu_worker holds 2 rollout workers (16 there), the head 2 replay shards (8 there)."""
OBJECT_STORE_BYTES = 100 * 1024 * 1024
IDLE_TIMEOUT_MINUTES = 0.2
HEAD_ATTEMPTS = 3
BUDGET = 5000
ROLES = ["rollout.num_cpus=0.5", "placement.policy.num_cpus=0.25", "placement.world_model.num_cpus=0.25",
         "imagination.num_cpus=0.5", "rollout.steps_per_call=25"]
"""The roles' CPUs as fractions of the scaled nodes (placement and GPUs come from the `cluster` preset)."""
SLOW_MACHINE = ["placement.timeout_s=600", "run.startup_timeout_s=600"]
"""Ten actors importing torch on 2 shared cores can take minutes to start; the nodes come up in seconds."""


def autoscaling_config(temp_dir: str) -> dict:
    """What AutoscalingCluster writes (Ray's fake_multi_node/example.yaml with our node types), from
    deploy/cluster.yaml."""
    launcher = yaml.safe_load((REPO / "deploy" / "cluster.yaml").read_text())
    types = launcher["available_node_types"]
    assert {name: set(t["resources"]) for name, t in types.items()} == {
        name: set(r) for name, r in ON_THIS_MACHINE.items()}, "deploy/cluster.yaml's node types changed"
    workers = {name: {"resources": {**ON_THIS_MACHINE[name], "object_store_memory": OBJECT_STORE_BYTES},
                      "node_config": {}, "min_workers": t.get("min_workers", 0),
                      "max_workers": min(t["max_workers"], 2)}
               for name, t in types.items() if name != launcher["head_node_type"]}
    head = {"resources": ON_THIS_MACHINE[launcher["head_node_type"]], "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode", "max_workers": sum(w["max_workers"] for w in workers.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{GCS_PORT}"},
        "available_node_types": {"ray.head.default": head, **workers},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster():
    temp_dir = tempfile.mkdtemp(prefix="dras", dir="/tmp")  # short: Ray's socket paths live below it
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    token_path = Path(temp_dir) / "token"
    token_path.write_text(generate_new_authentication_token())
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(autoscaling_config(temp_dir)))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path),
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "PYTHONPATH": str(REPO),
           # a loaded machine: every node's raylet and agents may be slow to start and register
           "RAY_raylet_start_wait_time_s": "120"}
    head = ON_THIS_MACHINE["head"]
    command = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={GCS_PORT}", f"--temp-dir={temp_dir}",
               f"--autoscaling-config={config_path}", f"--num-cpus={head['CPU']}",
               f"--resources={json.dumps({k: v for k, v in head.items() if k != 'CPU'})}",
               f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-dashboard=false", *HEAD_PORTS]
    try:
        # On a heavily loaded machine the head's raylet can die waiting (about 15 s here) for its
        # dashboard agent to start: then the processes of that attempt end and the head starts again.
        # Or `ray start` returns while an agent has failed, and the raylet, which fate-shares with its agents, ends
        # seconds later (seen once: the runtime-env agent): the same.
        for _ in range(HEAD_ATTEMPTS):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            if started.returncode == 0 and head_settled(temp_dir):
                break
            end_processes(cluster_processes(temp_dir))
        assert started.returncode == 0, started.stderr[-3000:]
        yield env, Path(temp_dir)
    finally:
        end_processes(cluster_processes(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def head_settled(temp_dir: str, settle_s: float = 5.0, timeout: float = 60.0) -> bool:
    """Whether the head just started stays up: its runtime-env agent answers on its port and, ``settle_s`` later,
    the raylet still runs and has logged no failed agent."""
    def raylet_alive() -> bool:
        for pid in cluster_processes(temp_dir):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                    return True
            except OSError:
                continue
        return False

    def agent_answers() -> bool:
        with socket.socket() as probe:
            probe.settimeout(1.0)
            return probe.connect_ex(("127.0.0.1", RUNTIME_ENV_AGENT_PORT)) == 0

    deadline = time.monotonic() + timeout
    while not agent_answers():
        if time.monotonic() > deadline or not raylet_alive():
            return False
        time.sleep(0.5)
    time.sleep(settle_s)
    logs = Path(temp_dir) / "session_latest" / "logs"
    failed = any("Ray agent failed" in path.read_text(errors="replace") for path in logs.glob("raylet*.out"))
    return raylet_alive() and not failed


def cluster_nodes(env: dict) -> dict[str, dict]:
    """Node id -> {"alive", "type"} of every node the cluster has had (the type from the node's resources; None
    for a removed node, which lists none)."""
    script = ("import json, ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR', log_to_driver=False); "
              "print('NODES', json.dumps([[n['NodeID'], n['Alive'], n['Resources']] for n in ray.nodes()]))"
              % GCS_PORT)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    listing = next(line for line in out.stdout.splitlines() if line.startswith("NODES "))
    kinds = {"replay_node": "head", "rollout_node": "cpu_worker", "learner_gpu": "gpu_worker"}
    return {node: {"alive": alive, "type": next((kinds[k] for k in kinds if k in resources), None)}
            for node, alive, resources in json.loads(listing.removeprefix("NODES "))}


def autoscaler_events(temp_dir: Path) -> list[tuple[float, str]]:
    """(wall time, text) of each event of the autoscaler's own log (monitor.log's ``:event_summary:`` lines)."""
    events = []
    for line in (temp_dir / "session_latest" / "logs" / "monitor.log").read_text().splitlines():
        if ":event_summary:" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, line.split(":event_summary:", 1)[1]))
    return events


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.5)
    return result


class Train:
    """`dynaray train ... --address` in the background, its output lines with the wall time they came."""

    def __init__(self, env: dict, *items: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "system.cli", "train", *items, f"--address=127.0.0.1:{GCS_PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)  # never let the pipe fill
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip()))

    def first(self, pattern: str) -> tuple[float, re.Match] | None:
        return next(((t, m) for t, line in list(self.lines) if (m := re.search(pattern, line))), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)[-4000:]

    def head(self) -> str:
        return "\n".join(line for _, line in self.lines)[:4000]

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.reader.join(10)


def test_the_autoscaler_adds_the_nodes_roles_ask_for_and_removes_idle_ones(autoscaling_cluster, tmp_path):
    env, temp_dir = autoscaling_cluster
    runs = tmp_path / "runs"
    scale = [sys.executable, "-m", "system.cli", "scale", "--runs-dir", str(runs)]
    started = time.time()
    train = Train(env, "debug", "cluster", "name=auto", f"run.runs_dir={runs}", "run.progress=false",
                  f"run.total_env_steps={BUDGET}", *ROLES, *SLOW_MACHINE)
    try:
        # Only the head at first: the roles' resources make the autoscaler add one node of each worker type.
        wait_until(lambda: train.first("dynaray: placement:") or train.proc.poll() is not None, 900, "placement")
        assert train.proc.poll() is None, train.text()
        placed = json.loads((runs / "auto" / "placement.json").read_text())
        nodes = cluster_nodes(env)
        kind = {role: nodes[where["node_id"]]["type"] for role, where in placed.items()}
        assert kind["rollout-0"] == "cpu_worker"
        assert kind["policy-learner"] == kind["world-model-learner"] == kind["imagination-0"] == "gpu_worker"
        assert kind["replay-shard-0"] == kind["replay-shard-1"] == "head"
        assert sorted(n["type"] for n in nodes.values()) == ["cpu_worker", "gpu_worker", "head"]
        added = [text for _, text in autoscaler_events(temp_dir) if text.startswith("Adding")]
        assert {"Adding 1 node(s) of type cpu_worker.", "Adding 1 node(s) of type gpu_worker."} <= set(added), added

        # Beyond the current nodes: one more cpu_worker, and a new worker lands there.
        up = subprocess.run([*scale, "rollout=3"], env=env, capture_output=True, text=True, timeout=120)
        assert up.returncode == 0 and "run auto: rollout 1 -> 3" in up.stdout, up.stdout + up.stderr
        scaled_up_at = time.time()
        wait_until(lambda: all(train.first(f"scaling: rollout-{i} on node") for i in (1, 2))
                   or train.proc.poll() is not None, 240, "the new rollout workers' first reports")
        assert train.proc.poll() is None, train.text()
        placed = json.loads((runs / "auto" / "placement.json").read_text())
        grown = cluster_nodes(env)
        new_nodes = set(grown) - set(nodes)
        assert [grown[n]["type"] for n in new_nodes] == ["cpu_worker"]
        on_new = [i for i in (1, 2) if placed[f"rollout-{i}"]["node_id"] in new_nodes]
        assert on_new, placed
        first_row_at, _ = train.first(f"scaling: rollout-{on_new[0]} on node")

        # Back to one worker: the new node goes idle and the autoscaler removes it while the run goes on.
        down = subprocess.run([*scale, "rollout=1"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0 and "run auto: rollout 3 -> 1" in down.stdout, down.stdout + down.stderr
        scaled_down_at = time.time()
        removed = wait_until(
            lambda: [(t, e) for t, e in autoscaler_events(temp_dir) if e.startswith("Removing") and t > scaled_down_at]
            or train.proc.poll() is not None, 180, "the autoscaler to remove the idle node")
        assert train.proc.poll() is None, "the run ended before the idle node was removed: raise BUDGET"
        removed_at, removal = removed[0]
        assert removal == "Removing 1 nodes of type cpu_worker (idle).", removal
        after = cluster_nodes(env)
        assert [n for n, node in after.items() if not node["alive"]] == list(new_nodes)

        # Done: Ctrl-C, as a user would (the rest of the budget would only collect more rows).
        train.proc.send_signal(signal.SIGINT)
        code = train.finish(timeout=600)
    finally:
        if train.proc.poll() is None:
            train.proc.kill()
    assert code == 130 and "Traceback" not in train.text(), train.text()
    ended_at = time.time()

    # The interrupted run checkpointed on the cluster; every row it counted persisted, none twice.
    checkpoint = json.loads((runs / "auto" / "checkpoint" / "meta.json").read_text())
    rows = stored_rows(runs / "auto")
    assert len(rows["seq"]) == checkpoint["env_steps"] < BUDGET, (len(rows["seq"]), checkpoint["env_steps"])
    assert_well_formed(rows)

    events = [f"+{t - started:.0f}s {e}" for t, e in autoscaler_events(temp_dir)]
    print(f"\nautoscaling figures: scale-up to first report from a worker on the new node "
          f"{first_row_at - scaled_up_at:.1f} s; scale-down to the idle node's removal "
          f"{removed_at - scaled_down_at:.1f} s; "
          f"run {ended_at - started:.0f} s\nautoscaler events:\n  " + "\n  ".join(events))


def test_a_role_no_node_type_can_host_stops_the_run_with_its_name(autoscaling_cluster, tmp_path):
    env, _ = autoscaling_cluster
    train = Train(env, "debug", "cluster", "name=toobig", f"run.runs_dir={tmp_path}", "run.progress=false",
                  "placement.timeout_s=20", "rollout.resources={rollout_node: 3}", *ROLES)
    assert train.finish(timeout=300) == 1, train.text()
    # Searched in every line: the run's actors, ended with the driver, may print long stack traces after it.
    said = train.first(re.escape("rollout-0 asks {CPU: 0.5, rollout_node: 3}, which no node offers"))
    assert said is not None, f"{train.head()}\n[...]\n{train.text()}"
