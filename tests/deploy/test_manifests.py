"""The deployment artifacts parse and carry what their tools require."""

import copy
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_cluster_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types) and config["head_node_type"] == "head"
    assert types["cpu_worker"]["resources"]["rollout_node"] > 0 and types["gpu_worker"]["resources"]["GPU"] == 1


def _group_spec_checks(spec: dict) -> None:
    assert spec["rayVersion"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["template"]["spec"]["containers"][0]["image"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert "rayStartParams" in group
    rollout = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "rollout")
    assert rollout["maxReplicas"] > rollout["minReplicas"]  # autoscaling bounds for the rollout group


def test_kuberay_raycluster_has_the_required_fields():
    manifest = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    _group_spec_checks(manifest["spec"])


def test_kuberay_rayjob_has_the_required_fields():
    manifest = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["entrypoint"].startswith("dynaray train")
    _group_spec_checks(spec["rayClusterSpec"])


def test_rayjob_entrypoint_overrides_are_valid_config():
    import shlex

    from system.config import load_config

    manifest = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    words = shlex.split(manifest["spec"]["entrypoint"])[2:]
    load_config([w for w in words if "=" not in w], [w for w in words if "=" in w])
