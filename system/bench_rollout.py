"""``dynaray bench rollout``: env steps/s a rollout worker collects, against the raw simulator in the same run.

    dynaray bench rollout [--envs HalfCheetah-v5,Hopper-v5] [--envs-per-worker 1,8,32] [--workers 1,2]
                          [--seconds S] [--rounds R] [--publish-interval S] [--vector-mode sync] [--ray]
                          [--json OUT]

One configuration is an env id, a number of envs per worker ``N`` and a number of workers. For each it measures,
in ``--rounds`` turns of ``seconds / rounds`` each (raw, then collection, then raw again, ...), so that both see
the same load on a shared machine:

- raw: a vector env of ``N`` copies made by :func:`actors.envs.make_vector_env` (the worker's own kind:
  gymnasium's ``SyncVectorEnv``, same-step autoreset) stepping uniform random actions: no policy, no replay.
- collection: a :class:`actors.rollout.RolloutWorker` with ``N`` envs and the default rollout settings (chunks of
  50 vector steps, a weights poll every 10 vector steps), warm-up over, acting with a SAC
  :class:`learners.sac.Policy` of hidden sizes (256, 256) whose weights come from the weights store, writing
  its chunks through a :class:`replay.client.ReplayClient` to real replay shards (``ReplayConfig().num_shards``
  of them, table ``real`` without persistence or rate limiting). The time of each turn includes the flush that
  waits until replay has acknowledged every row of the turn.

Both report env steps per second of wall time and per CPU second of the process that steps the envs (what the
worker would collect with a core of its own, robust to other processes taking turns on the CPUs), and their
ratio. Torch runs one intra-op thread in every worker (``torch.set_num_threads(1)``), as in a run.

Backends:

- in process (always): one worker; the shards are :class:`replay.shard.ReplayShard` objects in this process
  behind :class:`replay.handles.LocalHandle`, so their insert cost is counted in the worker's CPU time.
- ``--ray``: for every count in ``--workers``, that many worker actors (one CPU each) on a local Ray started here
  and shut down at the end, writing to shard actors; raw and collection turns run in all workers at once. Adds the
  2-vs-1 scaling of the total rate, next to the scaling of the raw simulators themselves (what the machine allows).

Policy staleness: a publisher thread in this process publishes new policy weights (a fresh copy of a 256x256
actor's state, one ``put`` each, as a learner does) every ``--publish-interval`` seconds, by default
``PolicyConfig().publish_every`` SAC updates at the speed measured here before the runs (``SACLearner.update``,
hidden (256, 256), batch 256, one thread). For every row the worker writes, staleness is the newest published
version at the moment its action was chosen minus the version that chose it ("act"), and also at the moment the
row's chunk was handed to replay ("insert", which adds the chunk's own age). Medians and p90s are over rows.
Publication and act times are ``time.monotonic()`` in different processes with Ray: comparable on one machine.

torch, gymnasium and Ray are imported when a benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from system.bench import env_ids, load_averages, machine, positive_float, positive_int, progress, write_report

__all__ = [
    "DEFAULT_ENVS",
    "DEFAULT_ENVS_PER_WORKER",
    "HIDDEN_SIZES",
    "CollectorProbe",
    "Measurement",
    "Report",
    "add_parser",
    "run_rollout",
    "sac_update_seconds",
    "staleness",
]

DEFAULT_ENVS = ("HalfCheetah-v5", "Hopper-v5")
DEFAULT_ENVS_PER_WORKER = (1, 8, 32)
DEFAULT_WORKERS = (1, 2)
HIDDEN_SIZES = (256, 256)
"""The policy MLP's hidden sizes."""
TABLE_CAPACITY = 200_000
"""Rows of table ``real`` per shard (a ring: older rows are evicted)."""
SAC_BATCH = 256
"""Batch size of the SAC updates timed for the default publication interval."""
WARMUP_TIMEOUT_S = 60.0
"""How long a worker may take to receive its first published weights."""

TARGET_RATIO = 0.8
"""Collection rate over raw simulator rate, per worker, at ``TARGET_ENVS_PER_WORKER`` envs."""
TARGET_ENVS_PER_WORKER = 32
TARGET_SCALING = 1.8
"""Total rate of 2 workers over that of 1."""
TARGET_STALENESS_P50 = 1.0
"""Median policy staleness in versions (at act time)."""


# ------------------------------------------------------------------------------------------- in the worker


class _ActLog:
    """Per policy forward: when it ran, the acting version, how many rows; per chunk inserted: when, versions."""

    def __init__(self) -> None:
        self.acting_version = -1
        self.clear()

    def clear(self) -> None:
        self.act_times: list[float] = []
        self.act_versions: list[int] = []
        self.act_rows: list[int] = []
        self.insert_times: list[float] = []
        self.insert_versions: list[np.ndarray] = []

    def arrays(self) -> dict[str, np.ndarray]:
        versions = np.concatenate(self.insert_versions) if self.insert_versions else np.zeros(0, np.int64)
        counts = [len(v) for v in self.insert_versions]
        return {
            "act_times": np.asarray(self.act_times, dtype=np.float64),
            "act_versions": np.asarray(self.act_versions, dtype=np.int64),
            "act_rows": np.asarray(self.act_rows, dtype=np.int64),
            "insert_times": np.repeat(np.asarray(self.insert_times, dtype=np.float64), counts),
            "insert_versions": versions.astype(np.int64),
        }


class _LoggedPolicy:
    """A policy that logs each forward (time, acting version, rows) before it runs."""

    def __init__(self, policy: Any, log: _ActLog):
        self._policy, self._log = policy, log

    def load_state(self, state: Any) -> None:
        self._policy.load_state(state)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        log = self._log
        log.act_times.append(time.monotonic())
        log.act_versions.append(log.acting_version)
        log.act_rows.append(len(obs))
        return self._policy.act(obs, deterministic)


class _LoggedWeights:
    """A weights client that notes the version of the weights it last handed out."""

    def __init__(self, client: Any, log: _ActLog):
        self._client, self._log = client, log

    @property
    def version(self) -> int:
        return self._client.version

    def poll(self) -> Any | None:
        state = self._client.poll()
        if state is not None:
            self._log.acting_version = self._client.version
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _LoggedReplay:
    """A replay client that notes when each chunk was handed over and its rows' policy versions."""

    def __init__(self, client: Any, log: _ActLog):
        self._client, self._log = client, log

    def insert(self, table: str, chunk: dict[str, np.ndarray], writer_id: int) -> None:
        self._log.insert_times.append(time.monotonic())
        self._log.insert_versions.append(chunk["policy_version"].copy())
        self._client.insert(table, chunk, writer_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@dataclass
class Turns:
    """Env steps and the wall and CPU seconds they took, summed over turns."""

    steps: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def add(self, other: Turns) -> None:
        self.steps += other.steps
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s

    @property
    def rate(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.steps / self.cpu_s if self.cpu_s > 0 else 0.0


class CollectorProbe:
    """One rollout worker and one raw vector env of the same size, stepped in turns. Runs in this process or as
    a Ray actor (the same class): ``shards`` and ``store`` are :class:`LocalHandle` objects or actor handles."""

    def __init__(
        self,
        env_id: str,
        envs_per_worker: int,
        vector_mode: str,
        shards: Sequence[Any],
        store: Any,
        local: bool,
        index: int = 0,
        seed: int = 0,
        hidden_sizes: Sequence[int] = HIDDEN_SIZES,
    ):
        import torch

        from actors.envs import EnvConfig, make_vector_env, probe_env
        from actors.rollout import RolloutConfig, RolloutWorker
        from learners.sac import Policy
        from replay.client import ReplayClient
        from replay.config import ReplayConfig
        from system.weights import WeightsClient

        torch.set_num_threads(1)
        env_config = EnvConfig(env_id)
        self.num_envs = envs_per_worker
        self.log = _ActLog()
        self.raw_env = make_vector_env(env_config, envs_per_worker, vector_mode)
        self.raw_env.action_space.seed(seed + 1)
        self.raw_env.reset(seed=seed + 1)
        spec = probe_env(env_config)

        def make_policy() -> _LoggedPolicy:
            policy = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, tuple(hidden_sizes),
                            seed=seed)
            return _LoggedPolicy(policy, self.log)

        self.config = RolloutConfig(envs_per_worker=envs_per_worker, vector_mode=vector_mode, warmup_steps=0)
        self.replay = ReplayClient(shards, ReplayConfig(), local=local, seed=seed)
        self.worker = RolloutWorker(
            env_config, self.config, _LoggedReplay(self.replay, self.log),
            _LoggedWeights(WeightsClient(store, "policy"), self.log), make_policy, index=index, seed=seed,
        )

    def warm_up(self) -> int:
        """Run until the worker acts with published weights, then one more chunk; clear the logs. Returns the
        acting version."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        steps = self.config.chunk_length * self.num_envs
        version = -1
        while version < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rollout worker saw no published policy in {WARMUP_TIMEOUT_S:.0f} s")
            version = self.worker.run(steps).policy_version
        self.worker.run(steps)
        self.worker.flush()
        for _ in range(3):
            self.raw_env.step(self.raw_env.action_space.sample())
        self.log.clear()
        return version

    def raw(self, seconds: float) -> Turns:
        """Step the raw vector env with uniform random actions for ``seconds``."""
        env, steps = self.raw_env, 0
        wall, cpu = time.perf_counter(), time.process_time()
        while steps == 0 or time.perf_counter() - wall < seconds:
            env.step(env.action_space.sample())
            steps += self.num_envs
        return Turns(steps, time.perf_counter() - wall, time.process_time() - cpu)

    def collect(self, seconds: float) -> Turns:
        """Collect with the rollout worker for ``seconds`` (a chunk at a time), then flush."""
        per_call = self.config.chunk_length * self.num_envs
        steps = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while steps == 0 or time.perf_counter() - wall < seconds:
            steps += self.worker.run(per_call).env_steps
        self.worker.flush()
        return Turns(steps, time.perf_counter() - wall, time.process_time() - cpu)

    def logs(self) -> dict[str, np.ndarray]:
        return self.log.arrays()

    def close(self) -> None:
        self.worker.close()
        self.raw_env.close()


# ---------------------------------------------------------------------------------------------- in the driver


class _Publisher:
    """Publishes a fresh copy of one policy state every ``interval`` seconds from a thread; notes the times."""

    def __init__(self, store: Any, local: bool, state: dict, interval: float):
        from system.weights import WeightsPublisher

        self._publisher = WeightsPublisher(store, "policy", local)
        self._state, self.interval = state, interval
        self.times: list[float] = []
        """``times[k]``: when version ``k + 1`` was published."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-publisher", daemon=True)

    def publish(self) -> int:
        version = self._publisher.publish({k: v.clone() for k, v in self._state.items()})
        self.times.append(time.monotonic())
        return version

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.publish()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def staleness(times: np.ndarray, versions: np.ndarray, rows: np.ndarray | None,
              publish_times: Sequence[float]) -> np.ndarray:
    """Per row: the newest version published at ``times`` (version ``k`` at ``publish_times[k - 1]``) minus the
    row's version. ``rows`` repeats each entry that many times (None: once)."""
    newest = np.searchsorted(np.asarray(publish_times, dtype=np.float64), times, side="right")
    lag = newest - versions
    return lag if rows is None else np.repeat(lag, rows)


def sac_update_seconds(obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = HIDDEN_SIZES,
                       updates: int = 15) -> float:
    """Median seconds of one ``SACLearner.update`` (batch 256) on one torch thread in this process."""
    import torch

    from learners.sac import PolicyConfig, SACLearner

    torch.set_num_threads(1)
    learner = SACLearner(obs_dim, act_dim, -1.0, 1.0, PolicyConfig(hidden_sizes=tuple(hidden_sizes), device="cpu"))
    rng = np.random.default_rng(0)
    batch = {
        "obs": rng.normal(size=(SAC_BATCH, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (SAC_BATCH, act_dim)).astype(np.float32),
        "reward": rng.normal(size=SAC_BATCH).astype(np.float32),
        "next_obs": rng.normal(size=(SAC_BATCH, obs_dim)).astype(np.float32),
        "terminated": np.zeros(SAC_BATCH, dtype=bool),
        "truncated": np.zeros(SAC_BATCH, dtype=bool),
    }
    times = []
    for i in range(updates + 3):
        start = time.perf_counter()
        learner.update(batch)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


@dataclass
class Measurement:
    """One configuration's results; rates per worker are means over its workers."""

    env: str
    envs_per_worker: int
    workers: int
    backend: str
    """``process`` (one worker, shards in this process) or ``ray`` (worker and shard actors)."""
    vector_mode: str
    raw: list[Turns] = field(default_factory=list)
    """Per worker, the raw turns."""
    collected: list[Turns] = field(default_factory=list)
    """Per worker, the collection turns."""
    publish_interval_s: float = 0.0
    publishes: int = 0
    """Versions published during the timed turns."""
    staleness_act: dict[str, float] = field(default_factory=dict)
    staleness_insert: dict[str, float] = field(default_factory=dict)

    def _mean(self, turns: list[Turns], what: str) -> float:
        return float(np.mean([getattr(t, what) for t in turns])) if turns else 0.0

    @property
    def raw_rate(self) -> float:
        return self._mean(self.raw, "rate")

    @property
    def rate(self) -> float:
        return self._mean(self.collected, "rate")

    @property
    def raw_cpu_rate(self) -> float:
        return self._mean(self.raw, "cpu_rate")

    @property
    def cpu_rate(self) -> float:
        return self._mean(self.collected, "cpu_rate")

    @property
    def ratio(self) -> float:
        return self.rate / self.raw_rate if self.raw_rate else 0.0

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_rate / self.raw_cpu_rate if self.raw_cpu_rate else 0.0

    @property
    def total_rate(self) -> float:
        return sum(t.rate for t in self.collected)

    @property
    def total_raw_rate(self) -> float:
        return sum(t.rate for t in self.raw)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("raw_rate", "rate", "raw_cpu_rate", "cpu_rate", "ratio", "cpu_ratio", "total_rate",
                     "total_raw_rate"):
            out[name] = getattr(self, name)
        return out


def _summary(lag: np.ndarray) -> dict[str, float]:
    if len(lag) == 0:
        return {"rows": 0, "p50": float("nan"), "p90": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"rows": int(len(lag)), "p50": float(np.percentile(lag, 50)), "p90": float(np.percentile(lag, 90)),
            "mean": float(lag.mean()), "max": float(lag.max())}


def _measure(
    probes: Sequence[Any], call: Callable[..., Any], get: Callable[[list], list],
    result: Measurement, seconds: float, rounds: int, publisher: _Publisher,
) -> None:
    """Warm the probes up, then alternate raw and collection turns in all of them at once; fill ``result``.

    ``call(probe, method, *args)`` starts a probe's method (returning a result or a ref), ``get`` resolves a list.
    """
    get([call(p, "warm_up") for p in probes])
    result.raw = [Turns() for _ in probes]
    result.collected = [Turns() for _ in probes]
    first = len(publisher.times)
    publisher.start()
    try:
        for _ in range(rounds):
            for turns, name in ((result.raw, "raw"), (result.collected, "collect")):
                for total, turn in zip(turns, get([call(p, name, seconds / rounds) for p in probes])):
                    total.add(turn)
    finally:
        publisher.stop()
    logs = get([call(p, "logs") for p in probes])
    result.publishes = len(publisher.times) - first
    result.staleness_act = _summary(np.concatenate([
        staleness(log["act_times"], log["act_versions"], log["act_rows"], publisher.times) for log in logs
    ]))
    result.staleness_insert = _summary(np.concatenate([
        staleness(log["insert_times"], log["insert_versions"], None, publisher.times) for log in logs
    ]))


def _table_configs(env_id: str) -> tuple[list, Any]:
    from actors.envs import EnvConfig, probe_env
    from replay.schema import transition_columns
    from replay.table import TableConfig

    spec = probe_env(EnvConfig(env_id))
    return [TableConfig("real", TABLE_CAPACITY, transition_columns(spec.obs_shape, spec.action_shape))], spec


def _policy_state(spec: Any, hidden_sizes: Sequence[int]) -> dict:
    from learners.sac import Policy

    policy = Policy(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, tuple(hidden_sizes), seed=1)
    return {k: v.clone() for k, v in policy.actor.state_dict().items()}


def bench_in_process(env_id: str, envs_per_worker: int, vector_mode: str, seconds: float, rounds: int,
                     publish_interval: float, hidden_sizes: Sequence[int] = HIDDEN_SIZES) -> Measurement:
    """One worker in this process, writing to shards in this process."""
    from replay.config import ReplayConfig
    from replay.shard import ReplayShard
    from replay.handles import LocalHandle
    from system.weights import WeightsStore

    tables, spec = _table_configs(env_id)
    shards = [LocalHandle(ReplayShard(tables, seed=0, index=i)) for i in range(ReplayConfig().num_shards)]
    store = LocalHandle(WeightsStore())
    publisher = _Publisher(store, True, _policy_state(spec, hidden_sizes), publish_interval)
    publisher.publish()
    probe = CollectorProbe(env_id, envs_per_worker, vector_mode, shards, store, local=True,
                           hidden_sizes=hidden_sizes)
    result = Measurement(env_id, envs_per_worker, 1, "process", vector_mode, publish_interval_s=publish_interval)
    try:
        _measure([probe], lambda p, name, *a: getattr(p, name)(*a), list, result, seconds, rounds, publisher)
    finally:
        probe.close()
    return result


def bench_ray(env_id: str, envs_per_worker: int, workers: int, vector_mode: str, seconds: float, rounds: int,
              publish_interval: float, hidden_sizes: Sequence[int] = HIDDEN_SIZES) -> Measurement:
    """``workers`` worker actors writing to shard actors (Ray must be initialised)."""
    import ray

    from replay.config import ReplayConfig
    from replay.shard import ReplayShard
    from system.weights import WeightsStore

    tables, spec = _table_configs(env_id)
    shard_actor = ray.remote(ReplayShard).options(num_cpus=0, max_concurrency=16)
    shards = [shard_actor.remote(tables, seed=0, index=i) for i in range(ReplayConfig().num_shards)]
    store = ray.remote(WeightsStore).options(num_cpus=0, max_concurrency=8).remote()
    probe_actor = ray.remote(CollectorProbe).options(num_cpus=1)
    probes = [
        probe_actor.remote(env_id, envs_per_worker, vector_mode, shards, store, False, index=i, seed=100 * i,
                           hidden_sizes=hidden_sizes)
        for i in range(workers)
    ]
    publisher = _Publisher(store, False, _policy_state(spec, hidden_sizes), publish_interval)
    publisher.publish()
    result = Measurement(env_id, envs_per_worker, workers, "ray", vector_mode, publish_interval_s=publish_interval)

    try:
        _measure(probes, lambda p, name, *a: getattr(p, name).remote(*a), ray.get, result, seconds, rounds,
                 publisher)
        ray.get([p.close.remote() for p in probes])
    finally:
        for actor in [*probes, *shards, store]:
            ray.kill(actor)
    return result


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """Everything one ``dynaray bench rollout`` run measured."""

    settings: dict
    machine: dict
    sac_update_s: dict[str, float] = field(default_factory=dict)
    """Per env id: the measured SAC update time behind the default publication interval."""
    results: list[Measurement] = field(default_factory=list)

    def scaling(self) -> list[dict]:
        """Per env and envs per worker on Ray: total rate of every worker count over that of one worker."""
        out = []
        for one in (r for r in self.results if r.backend == "ray" and r.workers == 1):
            for more in self.results:
                if (more.backend, more.env, more.envs_per_worker, more.vector_mode) == (
                        "ray", one.env, one.envs_per_worker, one.vector_mode) and more.workers > 1:
                    out.append({
                        "env": one.env, "envs_per_worker": one.envs_per_worker, "vector_mode": one.vector_mode,
                        "workers": more.workers,
                        "total_rate": more.total_rate, "one_worker_rate": one.total_rate,
                        "speedup": more.total_rate / one.total_rate if one.total_rate else 0.0,
                        "raw_speedup": more.total_raw_rate / one.total_raw_rate if one.total_raw_rate else 0.0,
                    })
        return out

    def targets(self) -> list[dict]:
        checks: list[dict] = []

        def check(name: str, value: float, goal: float, higher_is_better: bool = True) -> None:
            met = value >= goal if higher_is_better else value <= goal
            checks.append({"target": name, "measured": value, "goal": goal, "met": bool(met)})

        for r in self.results:
            mode = "" if r.vector_mode == "sync" else f", {r.vector_mode}"
            where = f"{r.env}, {r.backend}{mode}, {r.workers} worker(s)"
            if r.envs_per_worker == TARGET_ENVS_PER_WORKER:
                check(f"collected / raw, wall ({where}, {r.envs_per_worker} envs)", r.ratio, TARGET_RATIO)
                if r.vector_mode == "sync":
                    check(f"collected / raw, CPU ({where}, {r.envs_per_worker} envs)", r.cpu_ratio, TARGET_RATIO)
            check(f"staleness p50, versions ({where}, {r.envs_per_worker} envs)", r.staleness_act["p50"],
                  TARGET_STALENESS_P50, higher_is_better=False)
        for s in self.scaling():
            if s["workers"] == 2:
                mode = "" if s["vector_mode"] == "sync" else f", {s['vector_mode']}"
                check(f"2 workers / 1 ({s['env']}{mode}, {s['envs_per_worker']} envs)", s["speedup"], TARGET_SCALING)
        return checks

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "sac_update_s": self.sac_update_s,
            "results": [r.to_json() for r in self.results],
            "scaling": self.scaling(),
            "targets": self.targets(),
        }

    def markdown(self) -> str:
        lines = [
            "| env | envs/worker | workers | backend | raw steps/s | collected steps/s | ratio | raw steps/CPU-s "
            "| collected steps/CPU-s | CPU ratio | staleness p50 / p90 (act) | staleness p50 / p90 (insert) "
            "| publishes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.results:
            act, insert = r.staleness_act, r.staleness_insert
            backend = r.backend if r.vector_mode == "sync" else f"{r.backend}, {r.vector_mode}"
            # an async vector env steps in subprocesses, whose CPU time the worker's process does not see
            cpu = (f"{r.raw_cpu_rate:,.0f} | {r.cpu_rate:,.0f} | {r.cpu_ratio:.2f}" if r.vector_mode == "sync"
                   else "- | - | -")
            lines.append(
                f"| {r.env} | {r.envs_per_worker} | {r.workers} | {backend} | {r.raw_rate:,.0f} | {r.rate:,.0f} | "
                f"{r.ratio:.2f} | {cpu} | {act['p50']:g} / {act['p90']:g} | {insert['p50']:g} / {insert['p90']:g} | "
                f"{r.publishes} |"
            )
        scaling = self.scaling()
        if scaling:
            lines += [
                "",
                "| scaling | envs/worker | workers | total steps/s | 1 worker steps/s | x | raw simulators x |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for s in scaling:
                mode = "" if s["vector_mode"] == "sync" else f" ({s['vector_mode']})"
                lines.append(
                    f"| {s['env']}{mode} | {s['envs_per_worker']} | {s['workers']} | {s['total_rate']:,.0f} | "
                    f"{s['one_worker_rate']:,.0f} | {s['speedup']:.2f} | {s['raw_speedup']:.2f} |"
                )
        checks = self.targets()
        if checks:
            lines += ["", "| target | measured | goal | met |", "| --- | --- | --- | --- |"]
            for c in checks:
                goal = f"<= {c['goal']:g}" if "staleness" in c["target"] else f">= {c['goal']:g}"
                lines.append(f"| {c['target']} | {c['measured']:.2f} | {goal} | {'yes' if c['met'] else 'NO'} |")
        return "\n".join(lines)


def _machine() -> dict:
    import gymnasium
    import mujoco
    import torch

    return {
        **machine(),
        "torch": torch.__version__,
        "torch_threads_per_worker": 1,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------------------ CLI


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def _vector_modes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("sync", "async") for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of 'sync' and 'async', got {text!r}")
    return list(dict.fromkeys(values))


def run_rollout(args: argparse.Namespace) -> int:
    """``dynaray bench rollout``: measure every configuration, print Markdown tables, optionally write JSON."""
    import torch

    from actors.envs import EnvConfig, EnvError, probe_env

    specs = {}
    for env_id in args.envs:
        try:
            specs[env_id] = probe_env(EnvConfig(env_id))
        except EnvError as exc:
            print(f"dynaray: error: --envs: {exc}", file=sys.stderr)
            return 2
    torch.set_num_threads(1)
    hidden = HIDDEN_SIZES
    settings = {
        "envs": args.envs,
        "envs_per_worker": args.envs_per_worker,
        "workers": args.workers if args.ray else [1],
        "vector_modes": args.vector_mode,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "hidden_sizes": list(hidden),
        "publish_interval_s": args.publish_interval,
        "ray": args.ray,
    }
    report = Report(settings, _machine())

    intervals = {}
    for env_id, spec in specs.items():
        if args.publish_interval is None:
            from learners.sac import PolicyConfig

            update = sac_update_seconds(spec.obs_dim, spec.action_dim, hidden)
            report.sac_update_s[env_id] = update
            intervals[env_id] = PolicyConfig().publish_every * update
            progress(f"{env_id}: SAC update {update * 1e3:.1f} ms, so a policy is published every "
                     f"{intervals[env_id]:.3f} s")
        else:
            intervals[env_id] = args.publish_interval
    configurations = [(env_id, n, mode) for env_id in args.envs for n in args.envs_per_worker
                      for mode in args.vector_mode]
    for env_id, n, mode in configurations:
        progress(f"in process: {env_id}, {n} envs ({mode})")
        report.results.append(bench_in_process(env_id, n, mode, args.seconds, args.rounds, intervals[env_id],
                                               hidden))
    if args.ray:
        import ray

        ray.init(num_cpus=max(os.cpu_count() or 1, max(args.workers)), include_dashboard=False,
                 log_to_driver=False)
        try:
            for env_id, n, mode in configurations:
                for workers in args.workers:
                    progress(f"Ray: {env_id}, {n} envs ({mode}), {workers} worker(s)")
                    report.results.append(bench_ray(env_id, n, workers, mode, args.seconds, args.rounds,
                                                    intervals[env_id], hidden))
        finally:
            ray.shutdown()
    report.machine["load_average_at_end"] = list(os.getloadavg())
    return write_report(report, (
        f"{report.machine['cpus']} CPUs, one torch thread per worker; {load_averages(report.machine)}"
    ), args.json)


def add_parser(components: argparse._SubParsersAction) -> None:
    """Add ``rollout`` to ``dynaray bench``'s components."""
    p = components.add_parser(
        "rollout",
        help="env steps/s a rollout worker collects against the raw simulator (optionally 1 and 2 workers on Ray)",
        description="Env steps/s collected by a rollout worker (SAC policy 256x256, real replay shards, weights "
        "published while it runs) against the same vector env stepping random actions, in turns in the same run; "
        "with --ray, 1 and 2 worker actors and their scaling; policy staleness per row. See "
        "system/bench_rollout.py for what each number means.",
    )
    p.add_argument("--envs", type=env_ids, default=list(DEFAULT_ENVS),
                   help=f"env ids (default {','.join(DEFAULT_ENVS)})")
    p.add_argument("--envs-per-worker", type=_positive_ints, default=list(DEFAULT_ENVS_PER_WORKER),
                   help="vector env sizes (default 1,8,32)")
    p.add_argument("--workers", type=_positive_ints, default=list(DEFAULT_WORKERS),
                   help="worker counts with --ray (default 1,2); in process there is one worker")
    p.add_argument("--seconds", type=positive_float, default=6.0,
                   help="timed seconds per configuration for raw and again for collection (default 6)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="turns the seconds are split into, raw and collection alternating (default 3)")
    p.add_argument("--publish-interval", type=positive_float, default=None, metavar="S",
                   help="seconds between policy publications (default: 10 SAC updates at the speed measured here)")
    p.add_argument("--vector-mode", type=_vector_modes, default=["sync"],
                   help="sync, async or both (default sync)")
    p.add_argument("--ray", action="store_true", help="also measure worker actors on a local Ray")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON to OUT")
    p.set_defaults(func=run_rollout)
