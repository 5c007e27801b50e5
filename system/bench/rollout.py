"""``dynaray bench rollout``: env steps/s a rollout worker collects, against the raw simulator in the same run.

    dynaray bench rollout [PRESET ...] [key=value ...] [--envs HalfCheetah-v5,Hopper-v5] [--envs-per-worker 1,8,32]
                          [--workers 1,2] [--seconds S] [--rounds R] [--publish-interval S] [--vector-mode sync]
                          [--ray] [--json OUT]

The system measured is the one ``dynaray train`` runs with the same presets and overrides (``default`` alone when
none are given): the replay shards, the weights store and the rollout workers are made by the wiring's factories
(``system.wiring.build_replay``, ``build_store``, ``build_rollout``) from that config, in which each configuration
sets ``env.id`` (``--envs``), ``rollout.envs_per_worker`` (``--envs-per-worker``), ``rollout.vector_mode``
(``--vector-mode``) and ``rollout.num_workers`` (``--workers``; 1 in process). Two things differ from a run, and
only these: the shards hold table ``real`` alone, without its rate limiters (nothing samples here: the learners'
limiters would stop collection), and a thread of this process publishes the policy in the learner's place.

One configuration is an env id, a number of envs per worker ``N`` and a number of workers. For each it measures,
in ``--rounds`` turns of ``seconds / rounds`` each (raw, then collection, then raw again, ...), so that both see
the same load on a shared machine:

- raw: a vector env of ``N`` copies made by :func:`actors.envs.make_vector_env` (the worker's own kind:
  gymnasium's ``SyncVectorEnv``, same-step autoreset) stepping uniform random actions: no policy, no replay.
- collection: the :class:`actors.rollout.RolloutWorker` of the config (chunk length, weights polls, exploration
  noise, ``call_steps`` env steps per ``run`` call as the driver asks), warm-up over, acting with the config's
  SAC :class:`learners.sac.Policy` whose weights come from the weights store, writing its chunks through its
  :class:`replay.client.ReplayClient` to the config's replay shards (``replay.num_shards``; table ``real`` persisted
  to a temporary directory when ``replay.persist_real``, with the config's fsync, as a run persists it to its run
  directory). The time of each turn includes the flush that waits until replay has acknowledged every row of the
  turn. With ``rollout.planner.enabled`` the worker has its planner's edges, but no world model is published here,
  so it acts with the policy (the planner's own cost: ``dynaray bench planner``).

Both report env steps per second of wall time and per CPU second of the process that steps the envs (what the
worker would collect with a core of its own, robust to other processes taking turns on the CPUs), and their
ratio. Torch runs ``run.torch_threads`` intra-op threads in every worker (1 by default), as in a run.

Backends:

- in process (always): one worker; the roles are objects in this process behind :class:`replay.handles.LocalHandle`
  (``build_system(local=True)``'s kind), so the shards' insert cost is counted in the worker's CPU time.
- ``--ray``: for every count in ``--workers``, that many worker actors (``rollout.num_cpus`` each) and the shard and
  store actors, on a Ray started (or joined: ``ray.address``) as ``dynaray train`` does and shut down at the end;
  raw and collection turns run in all workers at once. Adds the 2-vs-1 scaling of the total rate, next to the
  scaling of the raw simulators themselves (what the machine allows).

Policy staleness: a publisher thread in this process publishes new policy weights (a fresh copy of the learner's
``policy_state()``, one ``put`` each, as the policy learner does) every ``--publish-interval`` seconds, by default
``policy.publish_every`` SAC updates at the speed measured here before the runs (``SACLearner.update`` of the
config's ``policy`` section, on ``run.torch_threads`` threads). For every row the worker writes, staleness is the
newest published version at the moment its action was chosen minus the version that chose it ("act"), and also at
the moment the row's chunk was handed to replay ("insert", which adds the chunk's own age). Medians and p90s are
over rows. Publication and act times are ``time.monotonic()`` in different processes with Ray: comparable on one
machine.

torch, gymnasium and Ray are imported when a benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from system.bench.harness import (
    Span, add_config_items, add_json_option, check, end_actors, env_ids, fail, finish, load_averages, load_bench_config,
    machine, positive_float, positive_int, positive_ints, progress, random_transitions, targets_table, torch_threads,
    write_report,
)
from replay.handles import get

__all__ = [
    "DEFAULT_ENVS",
    "DEFAULT_ENVS_PER_WORKER",
    "CollectorProbe",
    "Measurement",
    "Report",
    "add_arguments",
    "bench_system",
    "run",
    "sac_update_seconds",
    "staleness",
]

DEFAULT_ENVS = ("HalfCheetah-v5", "Hopper-v5")
DEFAULT_ENVS_PER_WORKER = (1, 8, 32)
DEFAULT_WORKERS = (1, 2)
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

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
    """A run's rollout worker and a raw vector env of the same size, stepped in turns.

    ``system.wiring.build_rollout(..., role=CollectorProbe)`` makes it in the worker's place, with the worker's
    arguments and edges, in this process or as a Ray actor: it builds the :class:`actors.rollout.RolloutWorker`
    from them, with its replay client, weights client and policy wrapped to log what staleness needs.
    """

    def __init__(self, env_config: Any, config: Any, replay: Any, weights: Any, make_policy: Any, index: int = 0,
                 seed: int = 0, **planner: Any):
        from actors.envs import make_vector_env
        from actors.rollout import RolloutWorker

        self.log = _ActLog()
        self.config, self.num_envs = config, config.envs_per_worker
        self.raw_env = make_vector_env(env_config, self.num_envs, config.vector_mode)
        self.raw_env.action_space.seed(seed + 1)
        self.raw_env.reset(seed=seed + 1)
        self.worker = RolloutWorker(
            env_config, config, _LoggedReplay(replay, self.log), _LoggedWeights(weights, self.log),
            lambda: _LoggedPolicy(make_policy(), self.log), index=index, seed=seed, **planner,
        )

    def warm_up(self) -> int:
        """Run (no random warm-up: the driver hands none out here) until the worker acts with published weights,
        then one more chunk; clear the logs. Returns the acting version."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        steps = self.config.chunk_length * self.num_envs
        version = -1
        while version < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rollout worker saw no published policy in {WARMUP_TIMEOUT_S:.0f} s")
            version = self.worker.run(steps, random_steps=0).policy_version
        self.worker.run(steps, random_steps=0)
        self.worker.flush()
        for _ in range(3):
            self.raw_env.step(self.raw_env.action_space.sample())
        self.log.clear()
        return version

    def raw(self, seconds: float) -> Turns:
        """Step the raw vector env with uniform random actions for ``seconds``."""
        env, steps = self.raw_env, 0
        span = Span()
        while steps == 0 or time.perf_counter() - span.wall < seconds:
            env.step(env.action_space.sample())
            steps += self.num_envs
        return Turns(steps, *span.end())

    def collect(self, seconds: float) -> Turns:
        """Collect with the rollout worker for ``seconds`` (``call_steps`` env steps a call, as the driver asks),
        then flush."""
        steps = 0
        span = Span()
        while steps == 0 or time.perf_counter() - span.wall < seconds:
            steps += self.worker.run(self.config.call_steps, random_steps=0).env_steps
        self.worker.flush()
        return Turns(steps, *span.end())

    def logs(self) -> dict[str, np.ndarray]:
        return self.log.arrays()

    def close(self) -> None:
        self.worker.close()
        self.raw_env.close()


# ---------------------------------------------------------------------------------------------- in the driver


class _Publisher:
    """Publishes a fresh copy of one policy state every ``interval`` seconds from a thread; notes the times."""

    def __init__(self, store: Any, state: dict, interval: float):
        from system.weights import WeightsPublisher

        self._publisher = WeightsPublisher(store, "policy")
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


def sac_update_seconds(config: Any, spec: Any, updates: int = 15) -> float:
    """Median seconds of one ``SACLearner.update`` of ``config.policy`` (a ``SystemConfig``) on a batch of
    ``policy.batch_size`` random rows of ``spec``'s sizes, on ``run.torch_threads`` threads, in this process."""
    import torch

    from learners.sac import SACLearner

    torch.set_num_threads(config.run.torch_threads)
    learner = SACLearner(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy)
    batch = random_transitions(config.policy.batch_size, spec.obs_dim, spec.action_dim, np.random.default_rng(0))
    times = []
    for i in range(updates + 3):
        span = Span()
        learner.update(batch)
        if i >= 3:
            times.append(span.end()[0])
    return float(np.median(times))


def _policy_state(config: Any, spec: Any) -> dict:
    """What the policy learner of ``config`` publishes: ``SACLearner.policy_state()``, at its initial weights."""
    from learners.sac import SACLearner

    learner = SACLearner(spec.obs_dim, spec.action_dim, spec.action_low, spec.action_high, config.policy, seed=1)
    return {k: v.clone() for k, v in learner.policy_state().items()}


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


def _measure(probes: Sequence[Any], result: Measurement, seconds: float, rounds: int, publisher: _Publisher) -> None:
    """Warm the probes (handles: in-process or Ray) up, then alternate raw and collection turns in all of them at
    once; fill ``result``."""

    def call(probe: Any, name: str, *args: Any) -> Any:
        return getattr(probe, name).remote(*args)

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


def _tables(config: Any, spec: Any) -> list:
    """Table ``real`` of the run's tables, without its rate limiters (nothing samples in this bench)."""
    from system.wiring import table_configs

    return [dataclasses.replace(t, limiters=()) for t in table_configs(config, spec) if t.name == "real"]


def bench_system(config: Any, spec: Any, local: bool, seconds: float, rounds: int,
                 publish_interval: float) -> Measurement:
    """Shards, store and ``rollout.num_workers`` probes of ``config`` made by the wiring's factories, in this process
    (``local``) or as Ray actors (Ray must be initialised); measured in turns."""
    from system.wiring import System, build_replay, build_rollout, build_store

    rollout = config.rollout
    result = Measurement(config.env.id, rollout.envs_per_worker, rollout.num_workers,
                         "process" if local else "ray", rollout.vector_mode, publish_interval_s=publish_interval)
    replay_dir = tempfile.mkdtemp(prefix="dynaray-bench-rollout-") if config.replay.persist_real else None
    system = System(local=local)
    try:
        build_replay(config, _tables(config, spec), system, replay_dir)
        build_store(config, system)
        probes = list(build_rollout(config, spec, system, role=CollectorProbe).values())
        publisher = _Publisher(system.store, _policy_state(config, spec), publish_interval)
        publisher.publish()
        _measure(probes, result, seconds, rounds, publisher)
        get([p.close.remote() for p in probes])
    finally:
        if local:
            for shard in system.shards:
                shard.wrapped.close()
        end_actors(system)
        if replay_dir is not None:
            shutil.rmtree(replay_dir, ignore_errors=True)
    return result


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
        for r in self.results:
            mode = "" if r.vector_mode == "sync" else f", {r.vector_mode}"
            where = f"{r.env}, {r.backend}{mode}, {r.workers} worker(s)"
            if r.envs_per_worker == TARGET_ENVS_PER_WORKER:
                check(checks, f"collected / raw, wall ({where}, {r.envs_per_worker} envs)", r.ratio, TARGET_RATIO)
                if r.vector_mode == "sync":
                    check(checks, f"collected / raw, CPU ({where}, {r.envs_per_worker} envs)", r.cpu_ratio,
                          TARGET_RATIO)
            check(checks, f"staleness p50, versions ({where}, {r.envs_per_worker} envs)", r.staleness_act["p50"],
                  TARGET_STALENESS_P50, higher_is_better=False)
        for s in self.scaling():
            if s["workers"] == 2:
                mode = "" if s["vector_mode"] == "sync" else f", {s['vector_mode']}"
                check(checks, f"2 workers / 1 ({s['env']}{mode}, {s['envs_per_worker']} envs)", s["speedup"],
                      TARGET_SCALING)
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
        lines += targets_table(
            self.targets(), lambda c: f"{c['measured']:.2f}",
            lambda c: f"<= {c['goal']:g}" if "staleness" in c["target"] else f">= {c['goal']:g}",
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI


def _vector_modes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("sync", "async") for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of 'sync' and 'async', got {text!r}")
    return list(dict.fromkeys(values))


HELP = "env steps/s a rollout worker collects against the raw simulator (optionally 1 and 2 workers on Ray)"
DESCRIPTION = (
    "Env steps/s collected by the rollout worker of a run (the roles made by the wiring from the presets and "
    "overrides given, as 'dynaray train' takes them; real replay shards, weights published while it runs) against "
    "the same vector env stepping random actions, in turns in the same run; with --ray, 1 and 2 worker actors and "
    "their scaling; policy staleness per row. See system/bench/rollout.py for what each number means."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_items(p)
    p.add_argument("--envs", type=env_ids, default=list(DEFAULT_ENVS),
                   help=f"env ids, each measured as env.id (default {','.join(DEFAULT_ENVS)})")
    p.add_argument("--envs-per-worker", type=positive_ints, default=list(DEFAULT_ENVS_PER_WORKER),
                   help="vector env sizes, rollout.envs_per_worker (default 1,8,32)")
    p.add_argument("--workers", type=positive_ints, default=list(DEFAULT_WORKERS),
                   help="worker counts (rollout.num_workers) with --ray (default 1,2); in process there is one worker")
    p.add_argument("--seconds", type=positive_float, default=6.0,
                   help="timed seconds per configuration for raw and again for collection (default 6)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="turns the seconds are split into, raw and collection alternating (default 3)")
    p.add_argument("--publish-interval", type=positive_float, default=None, metavar="S",
                   help="seconds between policy publications (default: policy.publish_every SAC updates at the "
                   "speed measured here)")
    p.add_argument("--vector-mode", type=_vector_modes, default=["sync"],
                   help="sync, async or both: rollout.vector_mode (default sync)")
    p.add_argument("--ray", action="store_true", help="also measure worker actors on Ray")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench rollout``: measure every configuration, print Markdown tables, optionally write JSON."""
    from actors.envs import EnvError, probe_env
    from system.config import ConfigError, to_dict

    def config_of(env_id: str, envs: int = 1, mode: str = "sync", workers: int = 1) -> Any:
        # Nothing samples here (no learner rate limiters), so the error buffer only has to admit a whole chunk of
        # the larger vector envs, which a run would be told to raise it for.
        chunk_rows = base.rollout.chunk_length * envs
        error_buffer = max(base.replay.error_buffer_steps, -(-chunk_rows * base.replay.num_shards // 2))
        return load_bench_config(args, [f"env.id={env_id}", f"rollout.envs_per_worker={envs}",
                                        f"rollout.vector_mode={mode}", f"rollout.num_workers={workers}",
                                        f"replay.error_buffer_steps={error_buffer}"])

    workers = args.workers if args.ray else [1]
    configurations = [(env_id, n, mode) for env_id in args.envs for n in args.envs_per_worker
                      for mode in args.vector_mode]
    try:
        base = load_bench_config(args)
        configs = {(env_id, n, mode, count): config_of(env_id, n, mode, count)
                   for env_id, n, mode in configurations for count in {1, *workers}}
        specs = {}
        for (env_id, *_), config in configs.items():
            specs[env_id] = specs.get(env_id) or probe_env(config.env)
    except ConfigError as exc:
        return fail(str(exc))
    except EnvError as exc:
        return fail(f"--envs: {exc}")
    import torch

    torch.set_num_threads(base.run.torch_threads)
    settings = {
        "envs": args.envs,
        "envs_per_worker": args.envs_per_worker,
        "workers": workers,
        "vector_modes": args.vector_mode,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "hidden_sizes": list(base.policy.hidden_sizes),
        "publish_interval_s": args.publish_interval,
        "ray": args.ray,
        "config_items": args.items,
        "config": to_dict(base),
    }
    report = Report(settings, machine("torch", "gymnasium", "mujoco", torch_threads_per_worker=base.run.torch_threads))

    intervals = {}
    for env_id, spec in specs.items():
        if args.publish_interval is None:
            update = sac_update_seconds(base, spec)
            report.sac_update_s[env_id] = update
            intervals[env_id] = base.policy.publish_every * update
            progress(f"{env_id}: SAC update {update * 1e3:.1f} ms, so a policy is published every "
                     f"{intervals[env_id]:.3f} s")
        else:
            intervals[env_id] = args.publish_interval
    for env_id, n, mode in configurations:
        progress(f"in process: {env_id}, {n} envs ({mode})")
        report.results.append(bench_system(configs[env_id, n, mode, 1], specs[env_id], True, args.seconds,
                                           args.rounds, intervals[env_id]))
    if args.ray:
        from system.runtime import start_ray, stop_ray

        start_ray(max(configs.values(), key=lambda c: c.rollout.num_workers),
                  namespace=f"dynaray-bench-{os.getpid()}")
        try:
            for env_id, n, mode in configurations:
                for count in workers:
                    progress(f"Ray: {env_id}, {n} envs ({mode}), {count} worker(s)")
                    report.results.append(bench_system(configs[env_id, n, mode, count], specs[env_id], False,
                                                       args.seconds, args.rounds, intervals[env_id]))
        finally:
            stop_ray()
    finish(report.machine)
    return write_report(report, (
        f"{report.machine['cpus']} CPUs, {torch_threads(base.run.torch_threads)} per worker; "
        f"{load_averages(report.machine)}"
    ), args.json)


