"""Starting and ending Ray for a run: an embedded local Ray by default, an existing cluster by address."""

from __future__ import annotations

import logging
import math
import os
import re
import socket

from system import heap
from system.config import SystemConfig
from system.metrics import runtime_env_vars


def needed_cpus(config: SystemConfig) -> float:
    """Logical CPUs that every role of ``config`` asks Ray for."""
    total = config.replay.num_shards * config.replay.num_cpus
    total += config.rollout.num_workers * config.rollout.num_cpus
    total += config.placement.policy.num_cpus
    if config.world_model.enabled:
        total += config.placement.world_model.num_cpus
    if config.imagination_enabled:
        total += config.imagination.num_workers * config.imagination.num_cpus
    total += config.eval.num_workers * config.eval.num_cpus
    if config.gateway.enabled:
        total += config.gateway.num_cpus
    return total


CONNECT_TIMEOUT_S = 10.0
"""How long the first TCP connection to a cluster address may take before the run gives up with a clear error."""


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast when nothing listens at a cluster ``address`` (``host:port``, ``ray://host:port`` or
    ``http(s)://host:port``): Ray itself would retry for minutes.

    Raises:
        ConnectionError: the address cannot be parsed, or no TCP connection to it within ``timeout_s``.
    """
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(
            f"nothing answers at {address} within {timeout_s:g} s ({exc.strerror or type(exc).__name__}): is the "
            f"Ray head running, and is that its GCS port?"
        ) from None


class ClusterVersionError(RuntimeError):
    """The Ray of this process and of the cluster's nodes differ; the message names each version."""


_MISMATCH = re.compile(r"started with:\s+Ray: (\S+)\s+Python: (\S+).*?started with:\s+Ray: (\S+)\s+Python: (\S+)",
                       re.DOTALL)


def version_mismatch_line(error: BaseException, address: str) -> str | None:
    """One line for Ray's multi-line "Version mismatch" error of ``ray.init(address)``; None for another error."""
    match = _MISMATCH.search(str(error)) if str(error).startswith("Version mismatch") else None
    if match is None:
        return None
    cluster_ray, cluster_py, here_ray, here_py = match.groups()
    return (f"the cluster at {address} runs Ray {cluster_ray} on Python {cluster_py}, this process Ray {here_ray} on "
            f"Python {here_py}: install the cluster's versions here (constraints.txt pins the tested ones)")


def _ray_version() -> str:
    import ray

    return ray.__version__


def differing_versions(here: str, nodes: dict[str, str]) -> str | None:
    """One line naming the nodes (``"ip (node id)" -> Ray version``) whose Ray is not ``here``; None if all match."""
    other = {node: version for node, version in sorted(nodes.items()) if version != here}
    if not other:
        return None
    shown = ", ".join(f"{node} Ray {version}" for node, version in other.items())
    return (f"Ray versions differ: this process Ray {here}, {shown}: install the same versions on every node "
            f"(pip install -c constraints.txt; deploy/README.md)")


def check_node_versions(timeout_s: float = 60.0) -> None:
    """Ask every alive node of the connected cluster which Ray its worker processes import (a zero-CPU task pinned
    to each node) and compare with this process's.

    Raises:
        ClusterVersionError: some node's Ray differs (nodes that do not answer within ``timeout_s`` are not judged).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_ray_version)
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote():
            f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in ray.nodes() if node["Alive"]}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    if line := differing_versions(ray.__version__, {refs[ref]: ray.get(ref) for ref in ready}):
        raise ClusterVersionError(line)


def _drop_token_enabled_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


PROFILE_EVENTS_PER_TASK = 8
"""Profile events (the timeline's spans) the embedded local Ray keeps per task attempt; Ray's default is 1,000, and
every actor call a role's long call makes adds one (``submit_task``): 300-460 per policy-learner ``run`` call, 16 KB
of the GCS each (docs/architecture.md, Ray's task events)."""


def start_ray(config: SystemConfig, namespace: str) -> str:
    """Join ``ray.address`` (or RAY_ADDRESS), else start an embedded local Ray sized for the roles.

    Returns a short description of where the run lives.

    Raises:
        ClusterVersionError: joining a cluster whose head or nodes run another Ray than this process.
    """
    import ray

    # this process's heap, and (the environment) every process of an embedded Ray; actors do their own at creation
    heap.start(config.ray.malloc_arena_max, config.ray.heap_trim_every_s)
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    common = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": True}
    if env_vars := runtime_env_vars(config.run.metrics):  # run.metrics=false reaches every process of the run
        common["runtime_env"] = {"env_vars": env_vars}
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **common)
        except RuntimeError as exc:
            if line := version_mismatch_line(exc, address):  # the head's Ray is not ours
                raise ClusterVersionError(line) from None
            raise
        check_node_versions()
        return f"Ray cluster at {address}"
    # Ray turns token authentication on for a new local cluster and says so in a warning at every start: it stays on
    # (`dynaray status|scale` use the token Ray saves in ~/.ray/auth_token), and the warning goes.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_drop_token_enabled_notice)
    num_cpus = config.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus(config)))
    kwargs = {"num_cpus": num_cpus, "include_dashboard": config.ray.include_dashboard}
    if config.ray.object_store_memory_mb:
        kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
    # the GCS keeps task events for ray.task_events_max task attempts (the roles' long calls: the high-frequency
    # methods record none, system/wiring.py QUIET_METHODS), so that its memory stays bounded in a run of days; and
    # PROFILE_EVENTS_PER_TASK profile events of each (a learner's `run` call records one per replay call it makes)
    kwargs["_system_config"] = {"task_events_max_num_task_in_gcs": config.ray.task_events_max,
                                "task_events_max_num_profile_events_per_task": PROFILE_EVENTS_PER_TASK}
    ray.init(**kwargs, **common)
    return f"embedded local Ray ({num_cpus} logical CPUs)"


WATCHDOG_GRACE_S = 5.0
"""How long the watchdog lets Ray's own processes end after the driver died before it ends the ones left."""


def watch_embedded_ray() -> None:
    """Start a watchdog that ends what the embedded Ray leaves behind if this driver dies (SIGKILL included).

    With the driver gone, Ray's head processes and the actors end by themselves; its dashboard agent and runtime-env
    agent do not (seen with Ray 2.60: still running minutes later). The watchdog, a small process of its own session,
    knows the processes below the driver now (every role made) by pid and start time, waits for the driver to end,
    gives Ray :data:`WATCHDOG_GRACE_S`, then SIGKILLs those still there. Linux only (/proc); elsewhere it does
    nothing."""
    import subprocess
    import sys

    from system.watchdog import descendants, start_time

    me = os.getpid()
    if start_time(me) is None:
        return
    watched = [f"{pid}:{start}" for pid in descendants(me) if (start := start_time(pid)) is not None]
    subprocess.Popen([sys.executable, "-m", "system.watchdog", f"{me}:{start_time(me)}", str(WATCHDOG_GRACE_S),
                      *watched],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def stop_ray() -> None:
    """Disconnect (cluster) or end the embedded local Ray and every process it started."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
