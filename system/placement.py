"""Where each actor of a run landed, and why one cannot land: checked once, right after the roles are made.

Usage (the CLI, before the driver starts the roles)::

    placement = wait_for_placement(system, timeout_s=config.placement.timeout_s)   # PlacementError if stuck
    print(describe(placement))                                                     # roles grouped by node

An actor that is not placed within the timeout is diagnosed from the cluster's nodes: either no node offers what
it asks for (a resource nobody has, or more of one than any node has: it can never run, unless an autoscaler adds
such a node), or the resources exist but other actors hold them.

:func:`planned_demands` says what every actor of a config will ask Ray for, before anything starts: the deploy
tests check it against the node types of ``deploy/`` (every role fits some node type, the whole run fits the
cluster's bounds).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["PlacementError", "describe", "diagnose", "locate", "planned_demands", "shortfall", "wait_for_placement"]


class PlacementError(RuntimeError):
    """Some roles could not be placed on the cluster within the timeout; the message says which and why."""


def _demand(num_cpus: float, num_gpus: float = 0.0, resources: Mapping[str, float] | None = None,
            memory: int = 0) -> dict[str, float]:
    return {"CPU": num_cpus, "GPU": num_gpus, **dict(resources or {}), **({"memory": memory} if memory else {})}


def planned_demands(config: Any) -> dict[str, dict[str, float]]:
    """Actor name -> the resources it asks Ray for (``CPU``, ``GPU``, custom resources, ``memory`` in bytes when
    reserved), for every actor ``system.wiring.build_system(config, ...)`` makes at the start of a run: the same
    as the built system's ``demands`` (tests/system/test_placement.py holds them equal). Workers that
    ``dynaray scale`` adds ask what their pool's first workers ask."""
    from system.control import CONTROL_ACTOR

    demands = {f"replay-shard-{i}": _demand(config.replay.num_cpus, resources=config.placement.replay_resources)
               for i in range(config.replay.num_shards)}
    demands["weights-store"] = _demand(0)
    for name, role in (("policy-learner", config.placement.policy), ("world-model-learner",
                                                                     config.placement.world_model)):
        if name == "policy-learner" or config.world_model.enabled:
            options = role.ray_options()
            demands[name] = _demand(options["num_cpus"], options["num_gpus"], options["resources"],
                                    options.get("memory", 0))
    rollout = config.rollout
    demands.update({f"rollout-{i}": _demand(rollout.num_cpus, rollout.num_gpus, rollout.resources)
                    for i in range(rollout.num_workers)})
    if config.imagination_enabled:
        imagination = config.imagination
        demands.update({f"imagination-{i}": _demand(imagination.num_cpus, imagination.num_gpus,
                                                     imagination.resources)
                        for i in range(imagination.num_workers)})
    if config.gateway.enabled:
        demands["gateway"] = _demand(config.gateway.num_cpus)
    demands[CONTROL_ACTOR] = _demand(0)
    demands.update({f"evaluator-{i}": _demand(config.eval.num_cpus) for i in range(config.eval.num_workers)})
    return demands


def _where(_actor: Any) -> dict[str, str]:
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "ip": ray.util.get_node_ip_address()}


def locate(handle: Any) -> Any:
    """A ref to ``{"node_id", "ip"}`` of the actor behind ``handle``, answered once the actor is made (before any
    call submitted after this one)."""
    return handle.__ray_call__.remote(_where)


def wait_for_placement(system: Any, timeout_s: float) -> dict[str, dict[str, str]]:
    """Role name -> ``{"node_id", "ip"}`` once every actor of ``system`` runs (its constructor finished).

    Raises:
        PlacementError: actors still not placed after ``timeout_s``, named with the reason (see :func:`diagnose`).
        Any error of an actor's constructor (e.g. a bad env id), as Ray raises it.
    """
    import ray

    refs = {name: locate(handle) for name, handle in system.named_actors()}
    by_ref = {ref: name for name, ref in refs.items()}
    ready, pending = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s)
    if pending:
        stuck = sorted(by_ref[ref] for ref in pending)
        raise PlacementError(diagnose({name: system.demands[name] for name in stuck}, ray.nodes(), timeout_s))
    return {by_ref[ref]: ray.get(ref) for ref in ready}


def _fits(demand: Mapping[str, float], offered: Mapping[str, float]) -> bool:
    return all(offered.get(resource, 0.0) >= amount for resource, amount in demand.items() if amount > 0)


def diagnose(stuck: Mapping[str, Mapping[str, float]], nodes: list[dict], timeout_s: float) -> str:
    """One message for the roles in ``stuck`` (role -> resource demand) given ``ray.nodes()``: first the roles no
    node can ever host, then those whose resources exist (busy, or their constructors are slow)."""
    alive = [n for n in nodes if n.get("Alive")]
    offered = ", ".join(f"{n.get('NodeManagerAddress', '?')} {_short(n.get('Resources', {}))}" for n in alive)
    never = {name: d for name, d in stuck.items() if not any(_fits(d, n.get("Resources", {})) for n in alive)}
    waiting = sorted(set(stuck) - set(never))
    parts = [f"{name} asks {_short(demand)}, which no node offers" for name, demand in never.items()]
    if waiting:
        parts.append(f"{', '.join(waiting)} still starting (their resources exist: held by other actors, or slow "
                     f"constructors)")
    advice = ("change the role's resources in config, or add a node that offers them" if never
              else "raise placement.timeout_s, or free resources")
    return (f"{len(stuck)} role(s) not running after {timeout_s:g} s: " + "; ".join(parts)
            + f". Nodes: {offered or 'no live nodes'}. To fix: {advice}.")


def shortfall(demand: Mapping[str, float], count: int, available: Mapping[str, float]) -> dict[str, float]:
    """What ``count`` more actors asking ``demand`` each would lack of ``available`` (``ray.available_resources()``,
    the cluster's free resources): resource -> amount missing; empty when they fit in the cluster's total (a lower
    bound of what is missing: one actor must also fit on one node)."""
    return {resource: count * amount - available.get(resource, 0.0) for resource, amount in demand.items()
            if amount > 0 and count * amount > available.get(resource, 0.0) + 1e-9}


def fitting(demand: Mapping[str, float], count: int, available: Mapping[str, float]) -> int:
    """How many of ``count`` more actors asking ``demand`` each fit in ``available`` (an upper bound, as
    :func:`shortfall`'s is a lower one: each actor must also fit on one node)."""
    fits = [int((available.get(resource, 0.0) + 1e-9) // amount) for resource, amount in demand.items() if amount > 0]
    return min([count, *fits])


def _short(resources: Mapping[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if v and not k.startswith(("node:", "object_store_memory"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def describe(placement: Mapping[str, Mapping[str, str]]) -> str:
    """Roles grouped by node, one line per node."""
    nodes: dict[tuple[str, str], list[str]] = {}
    for role, where in placement.items():
        nodes.setdefault((where["ip"], where["node_id"][:8]), []).append(role)
    return "\n".join(f"  node {ip} ({node}): {', '.join(sorted(roles))}" for (ip, node), roles in sorted(nodes.items()))
