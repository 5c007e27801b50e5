"""The deployment artifacts are what their tools accept, and a run configured for them can be placed.

- KubeRay manifests: valid against the KubeRay v1.7.0 CRD schemas (tests/deploy/crds/, strict about unknown fields
  as `kubectl apply --validate=strict`), token auth through ``spec.authOptions``, requests = limits, and every role
  of the run they describe fits the worker groups as Ray's own KubeRay autoscaler sees them; replay shards only on
  pods that mount the runs volume where the run directory is.
- PodMonitors: valid against the Prometheus Operator v0.93.0 CRD schema, selecting the labels and ports KubeRay
  gives Ray pods.
- The cluster launcher YAML: Ray's own validation, the token shipped to every node, the heavy paths left out of
  every sync (checked with rsync itself where it is installed), the image and the pinned versions.
- The Dockerfile: pinned base, a non-root user, dependencies before the code, the constraints file.
"""

import copy
import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = Path(__file__).resolve().parent / "crds"
RUNS_DIR = "/runs"
"""Where the KubeRay manifests mount the runs volume and the run directories go (run.runs_dir)."""


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            if doc]


def _manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "kuberay" / name).read_text())


def _pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert match, f"constraints.txt pins no {package}"
    return match[1]


# ---------------------------------------------------------------------------------------------------------------
# CRD schemas: OpenAPI v3 (structural) -> JSON Schema that refuses unknown fields


def _strict(schema):
    """``schema`` (a CRD's openAPIV3Schema) as JSON Schema that refuses unknown fields, as the API server does with
    strict field validation: an object with ``properties`` admits no other key unless it declares
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``; ``nullable`` admits null. (Its
    ``x-kubernetes-validations`` CEL rules are not evaluated.)"""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = _strict(schema[key])
    if "properties" in schema:
        out["properties"] = {name: _strict(s) for name, s in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        out["type"] = [schema["type"], "null"]
    return out


OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
"""What these manifests may carry in ``metadata`` (the API server checks ObjectMeta itself, not the CRD)."""


@functools.cache
def _validator(crd_file: str, version: str = "v1") -> jsonschema.Draft4Validator:
    (crd,) = _load_all(CRDS / crd_file)
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"enum": [f"{crd['spec']['group']}/{version}"]}
    schema["properties"]["kind"] = {"enum": [crd["spec"]["names"]["kind"]]}
    return jsonschema.Draft4Validator(schema)


def _schema_errors(document: dict, crd_file: str) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in _validator(crd_file).iter_errors(document))


@pytest.mark.parametrize("name, crd", [("raycluster.yaml", "ray.io_rayclusters.yaml"),
                                       ("rayjob.yaml", "ray.io_rayjobs.yaml")])
def test_kuberay_manifests_match_the_crd_schema(name, crd):
    assert _schema_errors(_manifest(name), crd) == []


def test_podmonitors_match_the_prometheus_operator_crd_schema():
    monitors = _load_all(DEPLOY / "kuberay" / "podmonitor.yaml")
    assert len(monitors) == 2
    for monitor in monitors:
        assert _schema_errors(monitor, "monitoring.coreos.com_podmonitors.yaml") == []


def test_the_schema_check_refuses_unknown_fields_and_wrong_types():
    manifest = _manifest("raycluster.yaml")
    bad = copy.deepcopy(manifest)
    bad["spec"]["headGroupSpec"]["rayStartParam"] = {}  # a typo of rayStartParams
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "32"
    bad["spec"]["authOptions"]["mode"] = "tokens"
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "8 cores"
    errors = _schema_errors(bad, "ray.io_rayclusters.yaml")
    assert any(e.startswith("spec.headGroupSpec: Additional properties are not allowed ('rayStartParam'")
               for e in errors), errors
    assert "spec.workerGroupSpecs.0.maxReplicas: '32' is not of type 'integer'" in errors
    assert any(e.startswith("spec.authOptions.mode: 'tokens' is not one of") for e in errors), errors
    assert any(e.startswith("spec.workerGroupSpecs.1.template.spec.containers.0.resources.limits.cpu:")
               for e in errors), errors
    assert len(errors) == 4, errors


# ---------------------------------------------------------------------------------------------------------------
# KubeRay: what the manifests say beyond the schema


def _cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": _manifest("raycluster.yaml")["spec"],
            "rayjob.yaml": _manifest("rayjob.yaml")["spec"]["rayClusterSpec"]}


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_token_auth_is_kuberays_own(name):
    spec = _cluster_specs()[name]
    assert spec["authOptions"] == {"mode": "token", "secretName": "ray-token"}
    for group in _groups(spec):
        for container in group["template"]["spec"]["containers"]:
            assert not [e for e in container.get("env", []) if e["name"].startswith("RAY_AUTH")], container["name"]
    # KubeRay reads the Secret's key auth_token: the documented command creates that key.
    documented = (DEPLOY / "kuberay" / name).read_text()
    assert "kubectl create secret generic ray-token --from-literal=auth_token=" in documented
    assert spec["rayVersion"] == _pinned("ray")


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_pods_set_requests_equal_to_limits(name):
    """Memory and CPU limits, so KubeRay passes --memory and --num-cpus to Ray; GPUs as the nvidia.com/gpu limit."""
    for group in _groups(_cluster_specs()[name]):
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"] == resources["limits"], group.get("groupName", "head")
        assert {"cpu", "memory"} <= set(resources["limits"])
        assert "num-cpus" not in group["rayStartParams"] and "memory" not in group["rayStartParams"]


def _autoscaler_node_types(spec: dict) -> dict:
    """The node types Ray's KubeRay autoscaler derives from a RayCluster spec (its own code)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "dynaray", "namespace": "default"},
                                                     "spec": copy.deepcopy(spec)})
    return config["available_node_types"], config["head_node_type"]


def pack(demands: dict[str, dict[str, float]], node_types: dict, head_type: str) -> dict[str, str]:
    """Role -> node type, first-fit decreasing of every actor's demand into the head and each worker type's
    ``max_workers`` nodes. Fails naming the first role that fits no node left."""
    nodes = [(head_type, dict(node_types[head_type]["resources"]))]
    nodes += [(name, dict(t["resources"])) for name, t in node_types.items() if name != head_type
              for _ in range(t.get("max_workers", 0))]

    def size(role: str) -> tuple:
        demand = demands[role]
        custom = sum(v for k, v in demand.items() if k not in ("CPU", "GPU", "memory"))
        return -demand.get("GPU", 0), -custom, -demand.get("CPU", 0), role

    placed = {}
    for role in sorted(demands, key=size):
        need = {k: v for k, v in demands[role].items() if v > 0}
        for name, free in nodes:
            if all(free.get(k, 0) >= v - 1e-9 for k, v in need.items()):
                free.update({k: free[k] - v for k, v in need.items()})
                placed[role] = name
                break
        else:
            raise AssertionError(f"{role} asks {need}: it fits no node left of the types "
                                 f"{ {n: t['resources'] for n, t in node_types.items()} }")
    return placed


def _rayjob_config():
    from system.config import load_config

    words = shlex.split(_manifest("rayjob.yaml")["spec"]["entrypoint"])
    assert words[:2] == ["dynaray", "train"]
    return words[2:], load_config([w for w in words[2:] if "=" not in w], [w for w in words[2:] if "=" in w])


def test_rayjob_runs_the_shipped_hopper_preset_with_the_cluster_placement():
    words, config = _rayjob_config()
    assert [w for w in words if "=" not in w] == ["hopper", "cluster"]
    assert {w.split("=")[0] for w in words if "=" in w} <= {"name", "run.runs_dir", "run.progress"}
    assert config.env.id == "Hopper-v5" and config.run.runs_dir == RUNS_DIR


def _cluster_runs():
    from system.config import load_config

    _, job = _rayjob_config()
    # The RayCluster's documented submit command runs the same presets.
    assert "-- dynaray train hopper cluster run.runs_dir=/runs" in (DEPLOY / "kuberay" / "raycluster.yaml").read_text()
    return {"raycluster.yaml": load_config(["hopper", "cluster"], [f"run.runs_dir={RUNS_DIR}"]), "rayjob.yaml": job}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_every_role_of_the_run_fits_the_groups_as_the_autoscaler_sees_them(name):
    from system.placement import planned_demands

    config = _cluster_runs()[name]
    node_types, head = _autoscaler_node_types(_cluster_specs()[name])
    placed = pack(planned_demands(config), node_types, head)
    assert placed["policy-learner"] == placed["world-model-learner"] == placed["imagination-0"] == "learner-gpu"
    assert placed["rollout-0"] == "rollout"
    assert node_types["learner-gpu"]["resources"]["GPU"] == 1 and node_types["headgroup"]["resources"]["memory"] > 0


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_replay_shards_only_fit_pods_that_mount_the_runs_volume_at_the_run_directory(name):
    config = _cluster_runs()[name]
    spec = _cluster_specs()[name]
    node_types, head = _autoscaler_node_types(spec)
    wanted = config.placement.replay_resources
    assert wanted, "placement.replay_resources must pin the shards"
    by_type = {head: spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
    hosts = [n for n, t in node_types.items() if all(t["resources"].get(k, 0) >= v for k, v in wanted.items())]
    assert hosts == [head]  # the driver (a job's entrypoint) writes the run directory on the head too
    for host in hosts:
        pod = by_type[host]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[config.run.runs_dir])
        assert "persistentVolumeClaim" in volume and pod["securityContext"]["fsGroup"] == 1000


def test_podmonitors_select_the_labels_and_ports_kuberay_gives_ray_pods():
    monitors = {m["spec"]["selector"]["matchLabels"]["ray.io/node-type"]: m
                for m in _load_all(DEPLOY / "kuberay" / "podmonitor.yaml")}
    assert set(monitors) == {"head", "worker"}
    for spec in _cluster_specs().values():
        for node_type, groups in (("head", [spec["headGroupSpec"]]), ("worker", spec["workerGroupSpecs"])):
            selector = {k: v for k, v in monitors[node_type]["spec"]["selector"]["matchLabels"].items()
                        if not k.startswith("ray.io/")}
            for group in groups:
                assert selector.items() <= group["template"]["metadata"]["labels"].items()
                ports = {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}
                assert {e["port"] for e in monitors[node_type]["spec"]["podMetricsEndpoints"]} <= ports
                assert group["rayStartParams"]["metrics-export-port"] == "8080"


# ---------------------------------------------------------------------------------------------------------------
# the cluster launcher


def _launcher() -> dict:
    return yaml.safe_load((DEPLOY / "cluster.yaml").read_text())


def _task_event_caps() -> dict[str, str]:
    """The GCS's task-event caps a cluster's head must set: those of the embedded local Ray."""
    from system.config import RayConfig
    from system.runtime import PROFILE_EVENTS_PER_TASK

    return {"RAY_task_events_max_num_task_in_gcs": str(RayConfig().task_events_max),
            "RAY_task_events_max_num_profile_events_per_task": str(PROFILE_EVENTS_PER_TASK)}


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_heads_cap_the_gcs_task_events_as_the_embedded_ray_does(name):
    head = _cluster_specs()[name]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head.get("env", [])}
    assert {k: env.get(k) for k in _task_event_caps()} == _task_event_caps()


def test_the_launchers_head_caps_the_gcs_task_events_as_the_embedded_ray_does():
    head = " ".join(_launcher()["head_start_ray_commands"])
    for key, value in _task_event_caps().items():
        assert f"{key}={value} " in head


def test_cluster_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _launcher()
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types) and config["head_node_type"] == "head"
    assert types["cpu_worker"]["resources"]["rollout_node"] > 0 and types["gpu_worker"]["resources"]["GPU"] == 1


def test_every_role_of_a_cluster_run_fits_the_launchers_node_types():
    from system.config import load_config
    from system.placement import planned_demands

    config = _launcher()
    types = {name: {**t, "max_workers": t.get("max_workers", 0)} for name, t in config["available_node_types"].items()}
    placed = pack(planned_demands(load_config(["hopper", "cluster"])), types, config["head_node_type"])
    assert placed["replay-shard-0"] == "head" and placed["rollout-0"] == "cpu_worker"
    assert placed["policy-learner"] == placed["world-model-learner"] == "gpu_worker"


def test_the_launcher_ships_the_token_to_every_node_and_uses_it():
    config = _launcher()
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in options and "--env RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in options
    assert "ray get-auth-token --generate" in (DEPLOY / "cluster.yaml").read_text()


def test_the_launcher_runs_the_pinned_image_and_versions_with_the_documented_ports():
    config = _launcher()
    assert config["docker"]["image"].startswith("ghcr.io/")
    assert "--ulimit nofile=65536:65536" in config["docker"]["run_options"]
    assert config["available_node_types"]["gpu_worker"]["docker"]["worker_image"].endswith("-cuda")
    assert config["setup_commands"] == ["pip install -q -c ~/dynaray/constraints.txt -e ~/dynaray"]
    head = " ".join(config["head_start_ray_commands"])
    for flag in ("ulimit -n 65536;", "--port=6379", "--dashboard-port=8265", "--ray-client-server-port=10001",
                 "--metrics-export-port=8080", "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head
    assert "ulimit -n 65536;" in " ".join(config["worker_start_ray_commands"])


HEAVY = (".venv", "runs", ".git")


def _sync_args(config: dict) -> list[str]:
    """The exclude and filter arguments Ray's updater gives rsync for every file mount."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    options = {"rsync_exclude": config.get("rsync_exclude"), "rsync_filter": config.get("rsync_filter")}
    return SSHCommandRunner._create_rsync_filter_args(None, options)


def test_the_launchers_file_mounts_leave_out_the_heavy_paths():
    config = _launcher()
    args = _sync_args(config)
    for path in HEAVY:
        assert ["--exclude", path] == args[args.index(path) - 1:args.index(path) + 1]
    assert ["--filter", "dir-merge,- .gitignore"] == args[-2:]
    mounted = [source for source in config["file_mounts"].values() if not source.startswith("~")]
    assert mounted == ["."]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_with_the_launchers_arguments_copies_the_code_and_none_of_the_heavy_paths(tmp_path):
    source = tmp_path / "checkout"
    for path in ("system/cli.py", "constraints.txt", ".venv/lib/big.so", "runs/r1/replay/log.arrow", ".git/HEAD",
                 "system/__pycache__/cli.pyc", "deep/runs/x", "deep/.venv/y"):
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text("x")
    (source / ".gitignore").write_text((REPO / ".gitignore").read_text())
    listing = subprocess.run(["rsync", "-a", "--dry-run", "--out-format=%n", *_sync_args(_launcher()),
                              f"{source}/", str(tmp_path / "node")], capture_output=True, text=True, check=True)
    copied = {line.rstrip("/") for line in listing.stdout.split()}
    assert {"system/cli.py", "constraints.txt"} <= copied
    assert not [p for p in copied if set(Path(p).parts) & {*HEAVY, "__pycache__"}], sorted(copied)


# ---------------------------------------------------------------------------------------------------------------
# the image


def test_the_dockerfile_pins_its_base_runs_as_a_user_and_installs_the_dependencies_before_the_code():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    user = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert lines[user] == "USER ray" and "useradd --create-home --uid 1000" in text
    deps = next(i for i, line in enumerate(lines) if "-c constraints.txt -r /tmp/requirements.txt" in line)
    code = next(i for i, line in enumerate(lines) if line.startswith("COPY --chown=ray:ray system"))
    assert user < deps < code
    assert "-c constraints.txt --extra-index-url ${TORCH_INDEX} torch==2.13.0" in text
    assert f"torch=={_pinned('torch')}" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "tests"} <= set(ignored)


def test_the_dockerfile_sets_the_heap_environment_of_the_embedded_local_ray():
    from system import heap
    from system.config import RayConfig

    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(
        line.strip(" \\") for line in re.search(r"^ENV (.*?)(?:\n\n|\nRUN)", (DEPLOY / "Dockerfile").read_text(),
                                                 re.MULTILINE | re.DOTALL)[1].splitlines())))
    assert {k: env.get(k) for k in (heap.ARENA_ENV, *heap.ARROW_ENV)} == {
        heap.ARENA_ENV: str(RayConfig().malloc_arena_max), **heap.ARROW_ENV}
