"""Every role and every edge of the system, in one place.

``build_system(config, spec, local)`` makes each role either as a Ray actor (``local=False``) or as an in-process
object behind a :class:`~replay.handles.LocalHandle` (``local=True``, for tests and debugging); the role classes
are the same plain classes either way. It is made of sub-graph factories (``build_replay``, ``build_store``,
``build_rollout``) that the benchmarks (``system/bench/``) call to build the part of a run they measure.

Prometheus recorders: each role below ``system/`` takes its recorder's class (``metrics=``, from ``system.metrics``)
and makes the recorder in its own ``__init__``, so in the role's process (a class travels to a Ray actor by name;
Ray metric objects never travel). Without Ray in the process every recorder records nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from actors.envs import EnvSpec
from actors.evaluator import Evaluator
from actors.gateway import IngestGateway
from actors.imagination import ImaginationWorker
from actors.config import ModelEvalConfig
from actors.rollout import RolloutWorker
from learners.sac import Policy, SACLearner
from learners.termination import resolve_termination_fn
from learners.world_model import WorldModel, WorldModelLearner
from replay.client import ReplayClient
from replay.handles import LocalHandle
from replay.schema import transition_columns
from replay.shard import ReplayShard
from replay.table import TableConfig
from replay.writers import INDEX_BITS, ROLE_BITS, ROLES
from system.config import SystemConfig
from system.control import CONTROL_ACTOR, Control
from system.loops import BatchPart, LearnerLoop, policy_batch_parts
from system.metrics import (ControlMetrics, EvaluatorMetrics, GatewayMetrics, ImaginationMetrics, ReplayMetrics,
                            RolloutMetrics, StoreMetrics)
from system.remote import ActorName, InActor, built, remote_class
from system.weights import WeightsClient, WeightsPublisher, WeightsStore

# Seed offsets per role, so that roles never share a random stream.
SEED_ROLLOUT, SEED_IMAGINATION, SEED_EVAL, SEED_POLICY, SEED_MODEL, SEED_REPLAY = 0, 1000, 2000, 3000, 4000, 5000
SEED_GATEWAY = 6000


class PolicyLoop(LearnerLoop):
    """The SAC learner fed with mixed real/imagined batches; publishes ``policy`` weights."""

    def __init__(self, config: SystemConfig, spec: EnvSpec, replay: ReplayClient, store: Any, local: bool,
                 restore_from: str | None = None):
        learner = SACLearner(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy,
                             seed=config.seed + SEED_POLICY)
        # prioritized replay: the real rows come with importance weights and get their |TD error| back as priorities
        parts = policy_batch_parts(replay, config.policy.batch_size, config.policy.real_ratio,
                                   config.imagination_enabled,
                                   config.policy.priority_eps if config.policy.prioritized else None)
        super().__init__("policy", learner, replay, WeightsPublisher(store, "policy"), parts,
                         config.policy.publish_every, learner.policy_state, local=local, restore_from=restore_from,
                         init_from=config.run.init_from or None)


class OfflinePolicyLoop(PolicyLoop):
    """Offline mode's policy learner: its first ``policy.bc_init_updates`` batches come from ``real`` (the dataset)
    for behaviour cloning, every later one only from ``imagined`` for SAC (the first
    ``offline.critic_warmup_updates`` of them train only the critics); or it starts from ``offline.init_from``'s
    actor. The actor it refines from is the anchor of ``policy.anchor_weight``'s trust region. Every SAC update
    reports ``refine_real_rows``: rows of its batch that no imagination worker wrote (0)."""

    def __init__(self, config: SystemConfig, spec: EnvSpec, replay: ReplayClient, store: Any, local: bool,
                 restore_from: str | None = None):
        super().__init__(config, spec, replay, store, local, restore_from)
        self._bc_updates = config.policy.bc_init_updates
        self._warmup = config.offline.critic_warmup_updates
        batch_size, requested = config.policy.batch_size, [self.learner.num_updates]  # restored: cloning goes on

        # dataset rows for cloning, then imagined rows only (waiting for imagination's first rows)
        def parts() -> list[BatchPart]:
            requested[0] += 1
            if requested[0] <= self._bc_updates:
                return [BatchPart("real", batch_size, "policy")]
            return [BatchPart("imagined", batch_size, None)]

        self._parts = parts
        if config.offline.init_from and self.restored_version is None:  # restored: the run's own actor
            from system.run_dir import RunDir

            self.learner.actor.load_state_dict(RunDir(config.offline.init_from).load_state("actor"))
            self.publish_now()

    def _update(self, batch: dict, parts: list[BatchPart]) -> dict:
        if parts[0].table == "real":
            return self.learner.bc_update(batch)
        refined = self.learner.num_updates - self._bc_updates
        if self.learner.anchor is None and self.learner.config.anchor_weight > 0:  # the cloned (or init) actor
            self.learner.set_anchor()
        metrics = self.learner.update(batch, update_actor=refined >= self._warmup)
        roles = (batch["writer_id"] >> INDEX_BITS) & ((1 << ROLE_BITS) - 1)
        metrics["refine_real_rows"] = float((roles != ROLES["imagination"]).sum())
        return metrics


class WorldModelLoop(LearnerLoop):
    """The ensemble world-model learner fed from ``real``; publishes ``world_model`` weights."""

    def __init__(self, config: SystemConfig, spec: EnvSpec, replay: ReplayClient, store: Any, local: bool,
                 restore_from: str | None = None):
        learner = WorldModelLearner(spec.obs_dim, spec.action_dim, config.world_model, seed=config.seed + SEED_MODEL)
        part = BatchPart("real", config.world_model.batch_size, "world_model")
        super().__init__("world_model", learner, replay, WeightsPublisher(store, "world_model"), lambda: [part],
                         config.world_model.publish_every, learner.model_state, local=local,
                         restore_from=restore_from, init_from=config.run.init_from or None)


@dataclass
class System:
    """Handles of every role of one run.

    The worker pools (``rollout``, ``imagination``) map worker index -> handle and can change while the run goes
    on: ``add_worker(pool, index)`` makes a worker with every edge of its pool, ``remove_worker`` ends one.
    """

    local: bool
    shards: list = field(default_factory=list)
    store: Any = None
    control: Any = None
    gateway: Any = None
    rollout: dict = field(default_factory=dict)
    imagination: dict = field(default_factory=dict)
    evaluators: list = field(default_factory=list)
    policy: Any = None
    world_model: Any = None
    worker_factories: dict = field(default_factory=dict)
    by_name: dict = field(default_factory=dict)
    """Actor name -> handle of every actor made (workers leave it when removed)."""
    demands: dict = field(default_factory=dict)
    """Actor name -> the resources it asked Ray for."""

    def named_actors(self) -> list[tuple[str, Any]]:
        return list(self.by_name.items())

    def name_of(self, handle: Any) -> str:
        """The actor name of ``handle`` (in process, where roles have no actor names: its role's class name)."""
        for name, made in self.by_name.items():
            if made is handle:
                return name
        return type(handle.wrapped).__name__ if isinstance(handle, LocalHandle) else repr(handle)

    def actors(self) -> list:
        singles = [self.policy, self.world_model, self.gateway, self.store, self.control]
        return [*self.rollout.values(), *self.imagination.values(), *self.evaluators, *self.shards,
                *(h for h in singles if h is not None)]

    def add_worker(self, pool: str, index: int) -> Any:
        """Make worker ``index`` of ``pool`` (``"rollout"`` or ``"imagination"``) and return its handle."""
        handle = getattr(self, pool)[index] = self.worker_factories[pool](index)
        return handle

    def remove_worker(self, pool: str, index: int) -> None:
        """End worker ``index`` of ``pool`` (after the driver has flushed what it wrote)."""
        handle = getattr(self, pool).pop(index)
        self.by_name = {name: h for name, h in self.by_name.items() if h is not handle}
        _kill([handle])


# ---------------------------------------------------------------------------------------------------------------
# replay tables and their rate limiters


def _policy_real_rows(config: SystemConfig) -> int:
    if not config.imagination_enabled:
        return config.policy.batch_size
    return max(1, round(config.policy.batch_size * config.policy.real_ratio))


def real_table_limiters(config: SystemConfig) -> dict[str, tuple[float, int]]:
    """Consumer -> (samples per inserted row, min rows), for the whole ``real`` table (none offline: the dataset is
    all there is, and every consumer samples it freely)."""
    if config.offline.enabled:
        return {}
    limiters = {"policy": (config.policy.updates_per_step * _policy_real_rows(config), config.policy.learning_starts)}
    if config.world_model.enabled:
        wm = config.world_model
        limiters["world_model"] = (wm.updates_per_step * wm.batch_size, wm.learning_starts)
    if config.imagination_enabled:
        limiters["imagination"] = (config.imagination.starts_per_step, config.world_model.learning_starts)
    return limiters


def table_configs(config: SystemConfig, spec: EnvSpec) -> list[TableConfig]:
    """The tables every shard holds, with one rate limiter per consumer of ``real``."""
    replay = config.replay
    columns = transition_columns(spec.obs_shape, spec.action_shape)
    limiters = tuple(
        (consumer, replay.limiter(spi, min_rows)) for consumer, (spi, min_rows) in real_table_limiters(config).items()
    )
    snapshot_every = replay.shard_capacity(replay.snapshot_every_rows)
    # policy.prioritized: `real` samples by priority (for every consumer of it); `imagined` stays uniform: its rows
    # are short-lived model rollouts, mostly evicted before a learnt priority is used, and new rows entering at the
    # maximum priority would only bias batches toward the newest ones
    policy = config.policy
    sampler = {"sampler": "prioritized", "priority_exponent": policy.priority_alpha,
               "importance_exponent": policy.priority_beta} if policy.prioritized else {}
    tables = [
        TableConfig("real", replay.shard_capacity(replay.real_capacity), columns, limiters,
                    persist=replay.persist_real, snapshot_every_inserts=snapshot_every,
                    disk_capacity=replay.shard_capacity(replay.real_disk_capacity), non_finite=replay.non_finite,
                    **sampler)
    ]
    if config.imagination_enabled:
        tables.append(TableConfig("imagined", replay.shard_capacity(replay.imagined_capacity), columns,
                                  persist=replay.persist_imagined, snapshot_every_inserts=snapshot_every,
                                  non_finite=replay.non_finite))
    return tables


# ---------------------------------------------------------------------------------------------------------------
# making roles: Ray actors or in-process objects


def _named(system: System, handle: Any) -> Any:
    """``handle`` as it travels to a role's constructor: by name on Ray (see :class:`ActorName`), as is in
    process."""
    if system.local or isinstance(handle, LocalHandle):
        return handle
    return ActorName(next(name for name, h in system.by_name.items() if h is handle))


QUIET_METHODS: dict[type, tuple[str, ...]] = {
    ReplayShard: ("insert", "sample", "sample_sequences", "update_priorities", "size", "sizes", "stats"),
    WeightsStore: ("publish", "latest", "versions"),
    Control: ("desired", "post_status", "status"),
    IngestGateway: ("stats",),
}
"""Role -> its high-frequency methods (hundreds of calls per second, or a poll every report), made without Ray's
task events: each call would otherwise be recorded in the GCS (up to ``RAY_task_events_max_num_task_in_gcs`` task
attempts, some hundreds of MB) and flood the dashboard's task list. The roles' long calls (``run``, ``flush``,
``evaluate``, ``state_dict``, ``snapshot``, ``request``, ...) keep theirs. A subclass of a role (a bench's) has its
role's entry. docs/architecture.md (Metrics and observability) says what the dashboard loses."""

TASK_EVENTS_ENV = "DYNARAY_TASK_EVENTS"
"""``DYNARAY_TASK_EVENTS=all`` in the driver's environment keeps task events for every method (debugging)."""


def all_task_events() -> bool:
    """Whether ``$DYNARAY_TASK_EVENTS`` asks for task events of every method.

    Raises:
        ValueError: ``$DYNARAY_TASK_EVENTS`` is set to something else than ``all`` or empty.
    """
    setting = os.environ.get(TASK_EVENTS_ENV, "")
    if setting not in ("", "all"):
        raise ValueError(f"{TASK_EVENTS_ENV}={setting!r}: expected 'all' (task events for every method) or unset")
    return setting == "all"


def quiet_methods(cls: type) -> tuple[str, ...]:
    """The methods of role ``cls`` made without task events: its :data:`QUIET_METHODS` entry (or its nearest base
    class's); none when ``$DYNARAY_TASK_EVENTS`` is ``all`` (:func:`all_task_events`)."""
    if all_task_events():
        return ()
    return next((QUIET_METHODS[base] for base in cls.__mro__ if base in QUIET_METHODS), ())


def _remote_class(cls: type, torch_threads: int, heap: tuple[int, float]):
    """``cls`` as the Ray actor class of its role (:func:`system.remote.remote_class`), with its
    :func:`quiet_methods`."""
    return remote_class(cls, torch_threads, heap, quiet_methods(cls), quiet_incarnation=not all_task_events())


class _Maker:
    def __init__(self, config: SystemConfig, local: bool, system: System):
        self.config, self.local, self.system = config, local, system

    def __call__(self, cls: type, name: str, num_cpus: float, *args, max_concurrency: int = 1, max_restarts: int = 0,
                 num_gpus: float = 0, resources: dict | None = None, ray_options: dict | None = None, **kwargs):
        """Make role ``cls`` as actor ``name`` asking for ``num_cpus`` / ``num_gpus`` / custom ``resources``
        (``ray_options`` adds or overrides any other ``actor.options``), or in process."""
        if self.local:
            args, kwargs = built(args, kwargs)
            return LocalHandle(cls(*args, **kwargs))
        heap = (self.config.ray.malloc_arena_max, self.config.ray.heap_trim_every_s)
        actor = _remote_class(cls, self.config.run.torch_threads, heap)
        options = {"name": name, "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": dict(resources or {}),
                   "max_concurrency": max_concurrency, "max_restarts": max_restarts, **(ray_options or {})}
        handle = actor.options(**options).remote(*args, **kwargs)
        self.system.by_name[name] = handle
        self.system.demands[name] = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"],
                                     **({"memory": options["memory"]} if options.get("memory") else {})}
        return handle


def build_system(config: SystemConfig, spec: EnvSpec, local: bool = False, replay_dir: str | None = None,
                 gateway_tokens: tuple = (), run_path: str | None = None) -> System:
    """Create every role of a run and connect every edge.

    ``replay_dir``: where the shards persist their tables (an absolute path every shard's node can write; see
    ``ReplayConfig.directory``); None persists nothing. ``gateway_tokens``: ``actors.gateway_tokens.Token``s the
    ingest gateway accepts besides those of ``gateway.token_file`` (secrets travel as arguments, never in the config).
    ``run_path``: the run directory (absolute) whose newest complete checkpoint the learners restore themselves from
    when they are made, by ``--resume`` or by Ray restarting them (system/checkpoint.py); None: they start fresh.
    """
    # world_model.termination_fn "auto": the env's known termination function or the learned head, decided here
    # once for every role that makes a WorldModel (imagination workers, planning rollout workers).
    termination_fn = resolve_termination_fn(config.world_model.termination_fn, config.env.id, config.env.kwargs)
    config = replace(config, world_model=replace(config.world_model, termination_fn=termination_fn))
    system = System(local=local)
    make = _Maker(config, local, system)

    # Replay shards (build_replay): every table of the run, one rate limiter per consumer of "real".
    build_replay(config, table_configs(config, spec), system, replay_dir)
    replay_client = partial(_replay_client, config, system)

    # Weights store (build_store): learners publish to it; every acting role polls it.
    build_store(config, system)
    weights_client = partial(_weights_client, system)
    policy_factory = _policy_factory(config, spec)

    # Policy learner: samples real (+ imagined) batches from the shards, publishes "policy" to the store; restores
    # itself from the run's checkpoint (run_path) when there is one, else from the offline run it continues
    # (run.init_from; the world-model learner too). Offline mode (offline.enabled): the policy
    # learner clones the dataset in "real", then samples only "imagined".
    policy_loop = OfflinePolicyLoop if config.offline.enabled else PolicyLoop
    system.policy = make(policy_loop, "policy-learner", 0, config, spec, replay_client(config.seed + SEED_POLICY),
                         _named(system, system.store), local, run_path,
                         ray_options=config.placement.policy.ray_options())

    # World-model learner: samples real batches from the shards, publishes "world_model" to the store; restores
    # itself from the run's checkpoint (run_path) when there is one.
    if config.world_model.enabled:
        system.world_model = make(WorldModelLoop, "world-model-learner", 0, config, spec,
                                  replay_client(config.seed + SEED_MODEL), _named(system, system.store), local,
                                  run_path,
                                  ray_options=config.placement.world_model.ray_options())

    # Rollout workers (build_rollout; a pool that `dynaray scale` resizes): shards and store -> workers. Offline
    # mode has none (rollout.num_workers=0): its "real" table is the dataset the shards recovered from replay_dir.
    build_rollout(config, spec, system)

    # Imagination workers (a pool too): sample start states from "real", write model rollouts to "imagined";
    # poll "policy" and "world_model" from the store.
    if config.imagination_enabled:
        device = config.imagination.device  # resolved by Policy and WorldModel in the worker's process

        def imagination_worker(i: int) -> Any:
            seed = config.seed + SEED_IMAGINATION + 100 * i
            return make(ImaginationWorker, f"imagination-{i}", config.imagination.num_cpus, config.imagination,
                        replay_client(seed), weights_client("policy"), weights_client("world_model"),
                        partial(policy_factory, seed=seed, device=device),
                        partial(WorldModel, spec.obs_dim, spec.action_dim, config.world_model, seed=seed,
                                device=device),
                        index=i, local=local, metrics=ImaginationMetrics,
                        max_restarts=config.imagination.max_restarts, num_gpus=config.imagination.num_gpus,
                        resources=config.imagination.resources)

        system.worker_factories["imagination"] = imagination_worker
        for i in range(config.imagination.num_workers):
            system.add_worker("imagination", i)

    # Ingest gateway (optional): external agents download "policy" from the store and post episodes, which it
    # validates and writes to "real" on the shards (the system config checks that its inserts fit the shards' rate
    # limiters). Its tokens travel as arguments, never in the config. Ray restarts it when its process dies
    # (gateway.max_restarts).
    if config.gateway.enabled:
        system.gateway = make(IngestGateway, "gateway", config.gateway.num_cpus, config.gateway,
                              replay_client(config.seed + SEED_GATEWAY), weights_client("policy"),
                              partial(policy_factory, seed=config.seed + SEED_GATEWAY, device="cpu"), spec,
                              tokens=gateway_tokens, metrics=GatewayMetrics, max_restarts=config.gateway.max_restarts)

    # Control: `dynaray scale` writes desired pool sizes here, the driver polls them; `dynaray status` reads the
    # status the driver posts.
    # Ray restarts it (run.control_max_restarts) with the pool sizes of the start; the driver posts its status again
    # at its next report. Each pool's worker demand lets `dynaray scale` say at once what the cluster lacks.
    pools = {"rollout": config.rollout.num_workers, "imagination": len(system.imagination)}
    worker_demands = {pool: system.demands.get(f"{pool}-0", {}) for pool in system.worker_factories}
    system.control = make(Control, CONTROL_ACTOR, 0, config.name, pools, frozenset(system.worker_factories),
                          worker_demands=worker_demands, metrics=ControlMetrics,
                          max_restarts=config.run.control_max_restarts)

    # Evaluators: receive the policy weights to evaluate from the driver (taken from the store at each mark); Ray
    # restarts one that dies (eval.max_restarts) and the driver sends it the lost evaluation again. With
    # eval.in_model they also poll "world_model" from the store and estimate the policy's return in it, with the
    # imagination's penalty and truncation.
    for i in range(config.eval.num_workers):
        seed = config.seed + SEED_EVAL + 100 * i
        in_model = {}
        if config.eval.in_model:
            in_model = dict(model_weights=weights_client("world_model"),
                            make_model=partial(WorldModel, spec.obs_dim, spec.action_dim, config.world_model,
                                               seed=seed),
                            model_eval=ModelEvalConfig(starts=config.eval.model_starts,
                                                       horizon=config.eval.model_horizon,
                                                       penalty_scale=config.imagination.penalty_scale,
                                                       max_disagreement=config.imagination.max_disagreement))
        system.evaluators.append(
            make(Evaluator, f"evaluator-{i}", config.eval.num_cpus, config.env, partial(policy_factory, seed=seed),
                 seed=seed, index=i, metrics=EvaluatorMetrics, max_restarts=config.eval.max_restarts, **in_model)
        )
    return system


# ---------------------------------------------------------------------------------------------------------------
# sub-graphs: build_system is made of these; a benchmark builds the part it measures with the same calls


def build_replay(config: SystemConfig, tables: list[TableConfig], system: System,
                 replay_dir: str | None = None) -> list:
    """Make ``config.replay.num_shards`` replay shards holding ``tables`` (a run's: :func:`table_configs`) into
    ``system.shards`` and return them. ``replay_dir``: where they persist (see :func:`build_system`)."""
    make = _Maker(config, system.local, system)

    # Replay shards: K actors, each holding its slice of every table; threaded so inserts and samples interleave.
    # Ray restarts a shard that dies, and the restarted shard recovers its persisted tables from replay_dir.
    system.shards = [
        make(ReplayShard, f"replay-shard-{i}", config.replay.num_cpus, tables, seed=config.seed + SEED_REPLAY + i,
             index=i, directory=replay_dir, fsync=config.replay.fsync,
             fsync_interval_ms=config.replay.fsync_interval_ms, metrics=ReplayMetrics, max_concurrency=16,
             max_restarts=config.replay.max_restarts, resources=config.placement.replay_resources,
             ray_options={"scheduling_strategy": config.placement.replay_strategy})
        for i in range(config.replay.num_shards)
    ]
    return system.shards


def _replay_client(config: SystemConfig, system: System, seed: int) -> InActor:
    """A ReplayClient over ``system.shards`` (by name), built where the role that uses it lives."""
    return InActor(ReplayClient, [_named(system, shard) for shard in system.shards], config.replay,
                   local=system.local, seed=seed)


def _weights_client(system: System, name: str) -> InActor:
    """A WeightsClient of weights ``name`` on ``system.store`` (by name), built where the role that uses it lives."""
    return InActor(WeightsClient, _named(system, system.store), name)


def _policy_factory(config: SystemConfig, spec: EnvSpec) -> partial:
    """``Policy`` of the run's sizes; the caller adds ``seed`` (and ``device``)."""
    return partial(Policy, spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high,
                   config.policy.hidden_sizes)


def build_store(config: SystemConfig, system: System) -> Any:
    """Make the weights store into ``system.store`` and return it."""
    make = _Maker(config, system.local, system)

    # Weights store: learners publish (version, ref) here; every acting role polls it. Ray restarts it
    # (run.store_max_restarts) empty: the learners publish their newest weights again (WeightsPublisher.check).
    system.store = make(WeightsStore, "weights-store", 0, metrics=StoreMetrics, max_concurrency=8,
                        max_restarts=config.run.store_max_restarts)
    return system.store


def build_rollout(config: SystemConfig, spec: EnvSpec, system: System, role: type = RolloutWorker) -> dict:
    """Make the rollout pool's ``config.rollout.num_workers`` workers into ``system.rollout`` (needs the shards and
    the store in ``system``), register its worker factory, and return the pool. ``role``: ``RolloutWorker`` or a
    subclass taking the same arguments (``dynaray bench rollout`` measures with one)."""
    make = _Maker(config, system.local, system)
    replay_client = partial(_replay_client, config, system)
    policy_factory = _policy_factory(config, spec)
    rollout_cpus = config.rollout.num_cpus

    # Rollout workers (a pool that `dynaray scale` resizes): write chunks to "real" on the shards; poll "policy"
    # from the store.
    def rollout_worker(i: int) -> Any:
        seed = config.seed + SEED_ROLLOUT + 100 * i
        # Planner (rollout.planner.enabled only): the worker also polls "world_model" from the store and builds
        # its own WorldModel (CPU, in the worker's process) to score candidate actions with.
        planner = {}
        if config.rollout.planner.enabled:
            planner = {"model_weights": _weights_client(system, "world_model"),
                       "make_model": partial(WorldModel, spec.obs_dim, spec.action_dim, config.world_model,
                                             seed=seed, device="cpu")}
        return make(role, f"rollout-{i}", rollout_cpus, config.env, config.rollout,
                    replay_client(seed), _weights_client(system, "policy"), partial(policy_factory, seed=seed),
                    index=i, seed=seed, metrics=RolloutMetrics, max_restarts=config.rollout.max_restarts,
                    num_gpus=config.rollout.num_gpus, resources=config.rollout.resources, **planner)

    system.worker_factories["rollout"] = rollout_worker
    for i in range(config.rollout.num_workers):
        system.add_worker("rollout", i)
    return system.rollout


def kill_system(system: System) -> None:
    """End every actor of the run (Ray) or close every in-process role."""
    if system.local:
        if system.gateway is not None:
            system.gateway.wrapped.close()
        return
    _kill(system.actors())


def _kill(handles: list) -> None:
    """``ray.kill`` each Ray actor handle (no restart); in-process handles need nothing."""
    handles = [h for h in handles if h is not None and not isinstance(h, LocalHandle)]
    if not handles:
        return
    import ray

    for handle in handles:
        try:
            ray.kill(handle)
        except Exception:  # already dead
            pass
