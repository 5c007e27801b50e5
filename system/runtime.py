"""Starting and ending Ray for a run: an embedded local Ray by default, an existing cluster by address."""

from __future__ import annotations

import logging
import math
import os
import socket

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


def _drop_token_enabled_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def start_ray(config: SystemConfig, namespace: str) -> str:
    """Join ``ray.address`` (or RAY_ADDRESS), else start an embedded local Ray sized for the roles.

    Returns a short description of where the run lives.
    """
    import ray

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    common = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": True}
    if env_vars := runtime_env_vars(config.run.metrics):  # run.metrics=false reaches every process of the run
        common["runtime_env"] = {"env_vars": env_vars}
    if address:
        check_reachable(address)
        ray.init(address=address, **common)
        return f"Ray cluster at {address}"
    # Ray turns token authentication on for a new local cluster and says so in a warning at every start: it stays on
    # (`dynaray status|scale` use the token Ray saves in ~/.ray/auth_token), and the warning goes.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_drop_token_enabled_notice)
    num_cpus = config.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus(config)))
    kwargs = {"num_cpus": num_cpus, "include_dashboard": config.ray.include_dashboard}
    if config.ray.object_store_memory_mb:
        kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
    ray.init(**kwargs, **common)
    return f"embedded local Ray ({num_cpus} logical CPUs)"


def stop_ray() -> None:
    """Disconnect (cluster) or end the embedded local Ray and every process it started."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
