"""``dynaray status``: a table of a running system's roles, from the terminal of any node of its cluster.

    dynaray status [--run NAME] [--address ADDR] [--runs-dir DIR]

The run is found as ``dynaray scale`` finds it (``system/attach.py``). What the table shows comes from two places:

- the driver's newest status snapshot, posted to the run's control actor after every report: worker pools (workers
  not placed yet too), budget, restarts per role (counted by the driver), actors that stalled, and the metrics row
  (rates, versions, losses, env errors);
- each actor's state from Ray: alive or not, restarts, and the node it runs on. Ray's state API answers only when
  the cluster runs the dashboard (``ray.include_dashboard=true``); without it the GCS actor table is read, and where
  that fails too only the names of the run's live actors are known (no restarts or nodes).

A role is an actor name without its index (``rollout-0`` and ``rollout-1`` are role ``rollout``). Bad input (no
running system, a wrong run name, a cluster that cannot be reached) ends in one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from system.liveness import role_of as metrics_role

EXIT_FAILED = 1
STATUS_TIMEOUT_S = 30.0
"""Longest wait for the control actor's answer."""
STATE_API_TIMEOUT_S = 5
"""Longest wait for Ray's state API (the dashboard's)."""
STALE_AFTER_S = 60.0
"""A snapshot older than this is flagged: the driver may be stuck or gone."""
ROLE_ORDER = ("replay-shard", "weights-store", "policy-learner", "world-model-learner", "rollout", "imagination",
              "evaluator", "gateway", "control")
"""Rows in this order; roles not listed (added later) come after, by name."""
POOLS = ("rollout", "imagination")
"""Roles whose workers the driver adds and retires (``dynaray scale``)."""


@dataclass
class ActorInfo:
    """One actor of the run as Ray sees it; None where the source does not say."""

    name: str
    state: str  # ALIVE, RESTARTING, PENDING_CREATION, DEAD, ...
    restarts: int | None = None
    node_ip: str | None = None


def role_of(actor_name: str) -> str:
    """``rollout-3`` -> ``rollout``; ``policy-learner`` -> ``policy-learner``."""
    return re.sub(r"-\d+$", "", actor_name)


# ---------------------------------------------------------------------------------------------------------------
# actor states from Ray


def _from_state_api(control: Any, namespace: str) -> list[ActorInfo]:
    """Ray's state API (served by the dashboard; raises when the cluster runs none). Only the actors of the control
    actor's job: an earlier run of the same name on the same cluster had the same namespace."""
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address
    actors = list_actors(address=gcs, filters=[("ray_namespace", "=", namespace)], detail=True, limit=10_000,
                         timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
    job = next(a.job_id for a in actors if a.actor_id == control._actor_id.hex())
    node_ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return [ActorInfo(a.name, a.state, a.num_restarts, node_ips.get(a.node_id))
            for a in actors if a.name and a.job_id == job]


def _from_gcs_table(control: Any) -> list[ActorInfo]:
    """The GCS actor table (Ray's developer API ``ray._private.state.actors``; no dashboard needed). It does not
    say namespaces: the run's actors are those of the control actor's job (the driver made them all)."""
    from ray._private import state

    table = state.actors()
    job = table[control._actor_id.hex()]["JobID"]
    return [ActorInfo(a["Name"], a["State"], a["NumRestarts"], a["Address"]["IPAddress"] or None)
            for a in table.values() if a["JobID"] == job and a["Name"]]


def _from_named_actors(namespace: str) -> list[ActorInfo]:
    """Names of the run's actors that are not dead (public, GCS only; no restarts or nodes)."""
    import ray

    return [ActorInfo(a["name"], "ALIVE") for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == namespace]


def actor_states(control: Any, namespace: str) -> tuple[list[ActorInfo], str]:
    """Every named actor of the run, and a note saying where the states come from."""
    sources: list[tuple[Callable[[], list[ActorInfo]], str]] = [
        (lambda: _from_state_api(control, namespace), "Ray's state API"),
        (lambda: _from_gcs_table(control), "the GCS actor table (Ray's state API, served by the dashboard, did not "
                                           "answer)"),
        (lambda: _from_named_actors(namespace),
         "the names of live actors only (no dashboard, GCS actor table unreadable): restarts and nodes unknown"),
    ]
    for read, note in sources:
        try:
            return read(), note
        except Exception:  # the next source; the last one is the public named-actor list
            continue
    return [], "nowhere (Ray answered no actor query): only the driver's snapshot is shown"


# ---------------------------------------------------------------------------------------------------------------
# the table


def _number(value: Any, spec: str = ",.0f") -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return format(value, spec)


def _join(*parts: str | None) -> str:
    return ", ".join(p for p in parts if p) or "-"


def _role_figures(role: str, row: dict[str, Any]) -> tuple[str, str, str]:
    """(rate, version, notes) of ``role`` from the newest metrics row."""
    def after(key: str, label: str, spec: str = ",.0f") -> str | None:  # "412 env steps/s"
        value = _number(row.get(key), spec)
        return None if value is None else f"{value} {label}"

    def before(label: str, key: str, spec: str = ",.0f") -> str | None:  # "v12", "staleness 1.5"
        value = _number(row.get(key), spec)
        return None if value is None else f"{label}{value}"

    if role == "rollout":
        return (_join(after("env_steps_per_s", "env steps/s")), _join(before("acts v", "policy_version_acting")),
                _join(after("rollout_env_errors", "env errors"),
                      before("staleness ", "rollout_policy_staleness", ".1f"), after("episodes", "episodes")))
    if role == "policy-learner":
        return (_join(after("policy_updates_per_s", "updates/s")), _join(before("v", "policy_version")),
                _join(after("policy_total_updates", "updates"), before("critic loss ", "policy_critic_loss", ".3f"),
                      before("waits for data ", "policy_sample_wait_fraction", ".0%")))
    if role == "world-model-learner":
        return (_join(after("world_model_updates_per_s", "updates/s")), _join(before("v", "world_model_version")),
                _join(after("world_model_total_updates", "updates"), before("val mse ", "world_model_val_mse", ".4f"),
                      before("val nll ", "world_model_val_nll", ".3f")))
    if role == "imagination":
        return ("-", _join(before("model v", "imagination_model_version")),
                _join(after("imagination_transitions", "transitions"), before("horizon ", "imagination_horizon")))
    if role == "evaluator":
        last = _number(row.get("eval_return_mean"), ".1f")
        if "eval_policy_updates" in row:  # an offline run: evaluations at policy-update marks
            at, unit = _number(row.get("eval_policy_updates")), "policy updates"
        else:
            at, unit = _number(row.get("eval_env_steps")), "env steps"
        return "-", "-", f"last return {last} at {at} {unit}" if last and at else "-"
    if role == "gateway":
        requests = sum(v for k, v in row.items() if k.startswith("gateway_requests_") and isinstance(v, int))
        return ("-", "-", _join(after("gateway_episodes", "episodes"), after("gateway_rows", "rows"),
                                f"{requests:,} requests" if requests else None))
    return "-", "-", "-"


def _nodes(actors: list[ActorInfo]) -> str:
    counts = Counter(a.node_ip for a in actors if a.node_ip)
    return ", ".join(ip if n == 1 else f"{ip} x{n}" for ip, n in sorted(counts.items())) or "-"


def role_rows(actors: list[ActorInfo], snapshot: dict[str, Any]) -> list[list[str]]:
    """One table row per role: role, actors, alive, restarts, rate, version, notes, nodes."""
    pools = snapshot.get("pools", {})
    row = snapshot.get("row", {})
    by_role: dict[str, list[ActorInfo]] = {}
    for actor in actors:
        by_role.setdefault(role_of(actor.name), []).append(actor)
    for pool, workers in pools.items():  # the roster is the driver's: retired workers' dead actors are left out
        roster = {f"{pool}-{i}" for i in [*workers.get("active", []), *workers.get("retiring", [])]}
        known = {a.name: a for a in by_role.get(pool, [])}
        by_role[pool] = [known.get(name, ActorInfo(name, "?")) for name in sorted(roster, key=_index)]
        if not roster:
            by_role.pop(pool)
    order = {role: i for i, role in enumerate(ROLE_ORDER)}
    table = []
    for role in sorted(by_role, key=lambda r: (order.get(r, len(order)), r)):
        members = sorted(by_role[role], key=lambda a: _index(a.name))
        known = [a for a in members if a.state != "?"]
        alive = sum(a.state == "ALIVE" for a in members)
        down = [f"{a.name} {a.state}" for a in known if a.state != "ALIVE"]
        retiring = pools.get(role, {}).get("retiring", [])
        unplaced = [f"{role}-{i} not placed" for i in pools.get(role, {}).get("unplaced", [])]
        stalled = [f"{name} stalled" for name in snapshot.get("stalled", []) if role_of(name) == role]
        if role in pools:
            restarts = str(pools[role].get("restarts", 0))
        elif metrics_role(role) in snapshot.get("restarts", {}):  # counted by the driver
            restarts = str(snapshot["restarts"][metrics_role(role)])
        elif known and all(a.restarts is not None for a in known):
            restarts = str(sum(a.restarts for a in known))
        else:
            restarts = "-"
        rate, version, notes = _role_figures(role, row)
        extra = [*down, *unplaced, *stalled, f"{len(retiring)} retiring" if retiring else None]
        table.append([role, str(len(members)), f"{alive}/{len(members)}" if known else "?", restarts, rate, version,
                      _join(*extra, notes if notes != "-" else None), _nodes(members)])
    return table


def _index(name: str) -> int:
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else -1


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def render(status: dict[str, Any], actors: list[ActorInfo], source: str, address: str) -> str:
    """The whole report: a header with the run's progress, the role table, and where the figures come from."""
    snapshot, run, age = status.get("status") or {}, status["run"], status.get("age_s")
    lines = [f"run {run} on the Ray cluster at {address}"]
    if not snapshot:
        lines.append("the driver has posted no status yet (it does after its first report)")
    else:
        row, budget = snapshot.get("row", {}), snapshot.get("budget")
        counter = {"key": "env_steps", "label": "env steps", "rate": "env_steps_per_s", **snapshot.get("counter", {})}
        steps, label = row.get(counter["key"]) or 0, counter["label"]  # offline runs: policy updates
        progress = f"{label} {steps:,} / {budget:,} ({steps / budget:.0%})" if budget else f"{label} {steps:,}"
        rate = _number(row.get(counter["rate"])) or "-"
        last_eval = _number(row.get("eval_return_mean"), ".1f") or "-"
        lines.append(f"{progress}, {rate} {label}/s, {row.get('wall_time_s', 0):,.0f} s running; "
                     f"last eval return {last_eval}")
        if age is not None and age > STALE_AFTER_S:
            lines.append(f"warning: the driver's newest status is {age:,.0f} s old (is the driver stuck?)")
    header = ["ROLE", "ACTORS", "ALIVE", "RESTARTS", "RATE", "VERSION", "NOTES", "NODES"]
    report = "the driver's newest report" + (f" ({age:.1f} s old)" if age is not None else "")
    lines += ["", format_table(header, role_rows(actors, snapshot)), "",
              f"alive, restarts, nodes: from {source}; rates, versions, rollout and imagination restarts: {report}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# the verb


def status(args: argparse.Namespace) -> int:
    from system.attach import AttachError, attach, locate
    from system.control import namespace

    try:
        run, address = locate(args.runs_dir, args.run, args.address)
        control = attach(address, run)
    except AttachError as exc:
        print(f"dynaray: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    import ray

    try:
        answer = ray.get(control.status.remote(), timeout=STATUS_TIMEOUT_S)
        actors, source = actor_states(control, namespace(run))
    except (ray.exceptions.RayError, TimeoutError) as exc:
        print(f"dynaray: error: run {run}: its control actor did not answer within {STATUS_TIMEOUT_S:g} s "
              f"({type(exc).__name__}); is the driver still running?", file=sys.stderr)
        return EXIT_FAILED
    finally:
        ray.shutdown()
    print(render(answer, actors, source, address))
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("status", help="print a table of a running system's roles (alive, restarts, rates)")
    p.add_argument("--run", default=None, help="the run's name (default: the one running system found)")
    p.add_argument("--address", default=None, help="its Ray cluster (default: from runs/<run>/ray.json, RAY_ADDRESS)")
    p.add_argument("--runs-dir", default="runs", help="where run directories are (default: runs)")
    p.set_defaults(func=status)
