"""``dynaray bench replay``: replay throughput, sample latency and memory per stored row, next to RLlib's buffers.

    dynaray bench replay [PRESET ...] [key=value ...] [--shards 1,2,4] [--samplers uniform,prioritized]
                         [--seconds S] [--insert-batch N] [--log on,off] [--capacity ROWS] [--ray]
                         [--sample-modes split,one_shard] [--writers W] [--rllib] [--torchrl] [--json OUT]

Rows are HalfCheetah-sized transitions (obs 17 float32, action 6 float32, the columns of
:func:`replay.schema.transition_columns`: 206 bytes of fields), written as episodes of 1000 steps.

What one configuration measures:

- insert: rows/s of inserts of ``--insert-batch`` rows into a table that is already full, so every insert evicts as
  many rows as it writes (the steady state of a long run; the fill before it is not timed). With the write-ahead
  log on, the table has ``persist=True`` and the shard a directory in a temp dir (``fsync="none"``: every record is
  handed to the OS before the insert returns, what survives a killed process); with the log off, no directory.
- sample: rows/s of batch-256 samples from that full table; a prioritized table samples with keys and sends new
  priorities for every batch, as a learner does (included in the rows/s, logged when the log is on); p50/p99 of the
  sample call's latency.

The system config (presets and ``key=value`` overrides, as ``dynaray train`` takes them; ``default`` alone when none
are given) sets what a run's shards and clients are made with: ``replay.fsync`` and ``replay.fsync_interval_ms`` of
the log, and with ``--ray`` everything ``system.wiring.build_replay`` reads (CPUs per shard, concurrency, restarts,
placement) and the client's settings (``replay.max_inflight_inserts``, timeouts); ``--shards`` sets
``replay.num_shards``. The tables are the benchmark's (above), not the config's.

Backends:

- ``shard`` (always): one :class:`replay.shard.ReplayShard` object called directly in this process: the per-shard
  cost, without RPC. Chunk preparation is outside the timed calls. Besides rows per wall-clock second it reports rows
  per CPU second of this process, which other processes taking turns on the CPUs do not lower.
- ``ray`` (``--ray``): one :class:`replay.client.ReplayClient` in this process over K shard actors, made by
  ``system.wiring.build_replay`` as in a run, on a Ray started (or joined: ``ray.address``) as ``dynaray train``
  does and shut down at the end, for every K of ``--shards``, each shard holding ``--capacity`` rows: the
  service's throughput with K shards, wall clock. Inserts keep the client's default number of calls in flight.
  Samples are measured on the same shards in each of ``--sample-modes``: ``split`` (``ReplayClient.submit_sample``:
  every batch split over all K shards in proportion to their sizes, one call per shard, :data:`SAMPLE_PREFETCH`
  batches in flight; latency from submit to result) and ``one_shard`` (``ReplayClient.stream``, what the learners
  use: whole batches from one shard chosen in proportion to its size, ``replay.sample_batches_per_call`` batches per
  call, ``replay.sample_calls_in_flight`` calls in flight; latency of one shard call from submit to its answer).
  Both report ``wait p99``: how long the consumer blocked for each batch, which is the latency target's measure
  for ``one_shard`` (one of its calls carries many batches; ``split``'s target is its call's latency). With
  ``--writers W`` (default 2) inserts are also measured from W writer actors at once, each with its own client, as
  rollout workers insert.
- ``rllib`` (``--rllib``): RLlib's ``EpisodeReplayBuffer`` / ``PrioritizedEpisodeReplayBuffer`` with the same
  capacity (in timesteps), fed the same data as numpy'ized ``SingleAgentEpisode`` chunks of ``--insert-batch``
  steps (``buffer.add(episodes)``) and sampled as RLlib's SAC/DQN training step does
  (``buffer.sample(num_items=256, n_step=1, sample_episodes=True)``; prioritized: ``update_priorities`` after every
  sample, alpha 0.6, beta 0.4 as ours). Only the buffer calls are timed, not building the episodes; rows per CPU
  second as for ``shard``.

- ``torchrl`` (``--torchrl``): TorchRL's ``TensorDictReplayBuffer`` over ``LazyTensorStorage`` and over
  ``LazyMemmapStorage`` (files in a temp dir), and ``TensorDictPrioritizedReplayBuffer`` (alpha 0.6, beta 0.4,
  ``update_tensordict_priority`` after every sample), same capacity, fed the same chunks as TensorDicts
  (``extend``) and sampled 256 rows at a time (``sample()``); only the buffer calls are timed. A buffer that cannot
  be made here (the prioritized one needs TorchRL's C++ extension, built for one torch version) is listed as not
  measured, with why. With ``--ray`` as well, TorchRL's Ray-remote buffer (``RayReplayBuffer``: a
  ``ReplayBuffer`` over ``LazyTensorStorage`` in one actor of ``replay.num_cpus`` CPUs, on the same Ray, after ours
  are ended) is measured the way its client works: ``extend`` and ``sample()`` each a blocking call, the same
  chunks and batch size; against our client over one shard (uniform, log off) in each sample mode.

Memory: every numpy array reachable from a full :class:`replay.table.Table` (columns, sampler structures, anything
else it keeps), divided by its capacity, against the raw bytes of one row's fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import tempfile
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from replay.config import ReplayConfig
from replay.schema import ColumnSpec, transition_columns
from replay.shard import ReplayShard
from replay.table import Table, TableConfig
from system.bench.harness import (
    Span, add_config_items, add_json_option, check, choices, end_actors, fail, finish, load_averages,
    load_bench_config, machine, per_second, percentile_ms, positive_float, positive_int, positive_ints, progress,
    targets_table, timed_loop, write_report,
)

__all__ = [
    "ACTION_DIM",
    "EPISODE_LENGTH",
    "InsertWriter",
    "OBS_DIM",
    "SAMPLE_BATCH",
    "SAMPLE_PREFETCH",
    "MemoryReport",
    "Measurement",
    "Report",
    "bench_ray",
    "bench_rllib",
    "bench_shard",
    "add_arguments",
    "chunk_source",
    "columns",
    "raw_row_bytes",
    "reachable_numpy_bytes",
    "rllib_import_error",
    "torchrl_import_error",
    "bench_torchrl",
    "bench_torchrl_ray",
    "run",
    "table_config",
    "table_memory",
]

OBS_DIM, ACTION_DIM = 17, 6
"""HalfCheetah's observation and action sizes."""
EPISODE_LENGTH = 1000
"""Steps per generated episode (HalfCheetah's time limit)."""
SAMPLE_BATCH = 256
"""Rows per sample call."""
SAMPLE_PREFETCH = 2
"""Samples a Ray client keeps in flight (the learner loops' prefetch depth)."""
ALPHA, BETA = 0.6, 0.4
"""Priority and importance exponents, ours and RLlib's alike."""
TABLE = "real"
SAMPLERS = ("uniform", "prioritized")
SAMPLE_MODES = ("split", "one_shard")
"""How a Ray client samples: ``ReplayClient.submit_sample`` (split) or ``ReplayClient.stream`` (one_shard)."""

# the issue's targets, per shard; memory overhead as a fraction of the raw field bytes
TARGET_INSERT_ROWS_S = 1_000_000
TARGET_UNIFORM_ROWS_S = 1_000_000
TARGET_PRIORITIZED_ROWS_S = 300_000
TARGET_P99_MS = 5.0
TARGET_RAY_SAMPLE_ROWS_S = 1_000_000
"""Issue 16: rows/s sampled into one client process through Ray (the learners' one_shard path)."""
TARGET_RLLIB_RATIO = 10.0
TARGET_MEMORY_OVERHEAD = 0.10


# ---------------------------------------------------------------------------------------------------- data


def columns() -> tuple[ColumnSpec, ...]:
    """The benchmark's row schema."""
    return transition_columns((OBS_DIM,), (ACTION_DIM,))


def raw_row_bytes(specs: Sequence[ColumnSpec]) -> int:
    """Bytes of one row's fields: the sum over columns of itemsize times values per row."""
    return sum(spec.np_dtype.itemsize * spec.row_size for spec in specs)


def chunk_source(rows: int, seed: int = 0, pool: int = 16, writer_id: int = 0) -> Callable[[], dict[str, np.ndarray]]:
    """A function returning the next chunk of ``rows`` transitions of one writer (``writer_id``) on every call.

    Values come from a pool of ``pool`` random chunks; ``seq``, ``episode_id`` and ``step`` are stamped per call, so
    every chunk has a new dedup key and episodes of :data:`EPISODE_LENGTH` steps run across chunks.
    """
    rng = np.random.default_rng(seed)
    templates = []
    for _ in range(pool):
        templates.append(
            {
                "obs": rng.normal(size=(rows, OBS_DIM)).astype(np.float32),
                "action": rng.uniform(-1, 1, (rows, ACTION_DIM)).astype(np.float32),
                "reward": rng.normal(size=rows).astype(np.float32),
                "next_obs": rng.normal(size=(rows, OBS_DIM)).astype(np.float32),
                "terminated": np.zeros(rows, dtype=bool),
                "policy_version": np.zeros(rows, dtype=np.int64),
                "writer_id": np.full(rows, writer_id, dtype=np.int64),
            }
        )
    written = 0

    def next_chunk() -> dict[str, np.ndarray]:
        nonlocal written
        seq = np.arange(written, written + rows, dtype=np.int64)
        chunk = dict(templates[(written // rows) % pool])
        chunk["seq"] = seq
        chunk["episode_id"] = seq // EPISODE_LENGTH
        chunk["step"] = seq % EPISODE_LENGTH
        chunk["truncated"] = chunk["step"] == EPISODE_LENGTH - 1
        written += rows
        return chunk

    return next_chunk


def table_config(sampler: str, capacity: int, persist: bool) -> TableConfig:
    """The benchmark's table: :data:`TABLE` with the benchmark's columns, sampler and exponents."""
    return TableConfig(
        TABLE,
        capacity,
        columns(),
        sampler=sampler,
        priority_exponent=ALPHA,
        importance_exponent=BETA,
        persist=persist,
    )


# -------------------------------------------------------------------------------------------------- memory


_NOT_FOLLOWED = (str, bytes, int, float, bool, type(None), type, types.ModuleType, np.generic, np.dtype,
                 np.random.Generator)
"""Objects whose attributes :func:`reachable_numpy_bytes` does not walk: scalars, classes, modules, generators."""


def reachable_numpy_bytes(obj: Any) -> int:
    """Bytes of every numpy array reachable from ``obj`` through attributes (``__dict__`` and ``__slots__``),
    dicts, lists, tuples, sets and deques, each memory block counted once (a view counts as its base)."""
    seen_objects: set[int] = set()
    seen_blocks: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen_objects:
            continue
        seen_objects.add(id(item))
        if isinstance(item, np.ndarray):
            base = item
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in seen_blocks:
                seen_blocks.add(id(base))
                total += base.nbytes
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)) or type(item).__name__ == "deque":
            stack.extend(item)
        elif not isinstance(item, _NOT_FOLLOWED):
            stack.extend(vars(item).values() if hasattr(item, "__dict__") else ())
            for klass in type(item).__mro__:
                for name in getattr(klass, "__slots__", ()):
                    if hasattr(item, name):
                        stack.append(getattr(item, name))
    return total


@dataclass(frozen=True)
class MemoryReport:
    """Memory of one full table per stored row."""

    sampler: str
    capacity: int
    bytes_per_row: float
    """Bytes of every numpy array the table keeps, divided by its capacity."""
    raw_bytes_per_row: int
    """Bytes of one row's fields (:func:`raw_row_bytes`)."""

    @property
    def overhead(self) -> float:
        """``bytes_per_row / raw_bytes_per_row - 1``."""
        return self.bytes_per_row / self.raw_bytes_per_row - 1


def table_memory(sampler: str, capacity: int, insert_batch: int = 1024) -> MemoryReport:
    """Fill a table of ``capacity`` HalfCheetah-sized rows once over and report its memory per row."""
    table = Table(table_config(sampler, capacity, persist=False))
    next_chunk = chunk_source(min(insert_batch, capacity))
    while table.inserted < capacity:
        table.insert(next_chunk())
    return MemoryReport(sampler, capacity, reachable_numpy_bytes(table) / capacity, raw_row_bytes(columns()))


# --------------------------------------------------------------------------------------------- measurements


@dataclass
class Measurement:
    """One benchmark configuration's results."""

    backend: str
    """``shard`` (one shard object in process), ``ray`` (client over shard actors), ``rllib``, ``torchrl`` or
    ``torchrl_ray`` (TorchRL's Ray-remote buffer)."""
    shards: int | None
    sampler: str
    log: bool | None
    """Write-ahead log on (None for RLlib, which has none)."""
    insert_rows_s: float = 0.0
    sample_rows_s: float = 0.0
    insert_rows_cpu_s: float | None = None
    """Rows inserted per CPU second of this process (in process only): what a core of its own would give, robust to
    other processes taking turns on the CPUs."""
    sample_rows_cpu_s: float | None = None
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    stored: int = 0
    """Rows in the table(s) while sampling."""
    mode: str | None = None
    """Ray: how the client samples, ``split`` (every batch split over all shards) or ``one_shard`` (whole batches
    from one shard, several per call, as the learners do); the two share one insert measurement. TorchRL: the
    buffer (:data:`TORCHRL_BUFFERS`)."""
    batches_per_call: int | None = None
    """Ray only: batches of :data:`SAMPLE_BATCH` rows one shard call asks for (1 with ``split``)."""
    wait_p99_ms: float | None = None
    """Ray only: p99 of how long the consumer blocked for each batch (with calls prefetched, often 0)."""
    writers: int | None = None
    """Ray only: writer actors of ``writers_insert_rows_s`` (``--writers``)."""
    writers_insert_rows_s: float | None = None
    """Ray only: rows/s inserted by ``writers`` actors at once, each with its own client (rollout workers' inserts);
    ``insert_rows_s`` is one client in the bench's process."""

    def record_sampling(self, calls: int, wall: float, cpu: float, latencies: Sequence[float]) -> None:
        """Sample rows/s (wall and CPU) and p50/p99 latency of ``calls`` timed batches of :data:`SAMPLE_BATCH` rows."""
        self.sample_rows_s = per_second(calls * SAMPLE_BATCH, wall)
        self.sample_rows_cpu_s = per_second(calls * SAMPLE_BATCH, cpu)
        self.p50_ms, self.p99_ms = percentile_ms(latencies, 50), percentile_ms(latencies, 99)


def bench_shard(replay: ReplayConfig, sampler: str, log: bool, seconds: float, insert_batch: int, capacity: int,
                root: str) -> Measurement:
    """One ReplayShard object in this process, logging as ``replay`` says (see the module docstring)."""
    directory = tempfile.mkdtemp(prefix=f"shard-{sampler}-", dir=root) if log else None
    shard = ReplayShard([table_config(sampler, capacity, persist=log)], directory=directory, fsync=replay.fsync,
                        fsync_interval_ms=replay.fsync_interval_ms)
    result = Measurement("shard", 1, sampler, log)
    try:
        next_chunk = chunk_source(insert_batch)
        while shard.size(TABLE) < capacity:
            shard.insert(TABLE, next_chunk(), 0)

        def insert() -> tuple[float, float]:
            chunk = next_chunk()
            span = Span()
            shard.insert(TABLE, chunk, 0)
            return span.end()

        calls, wall, cpu = timed_loop(seconds, insert)
        result.insert_rows_s = per_second(calls * insert_batch, wall)
        result.insert_rows_cpu_s = per_second(calls * insert_batch, cpu)
        result.stored = shard.size(TABLE)

        prioritized = sampler == "prioritized"
        rng = np.random.default_rng(1)
        latencies: list[float] = []

        def sample() -> tuple[float, float]:
            priorities = rng.random(SAMPLE_BATCH)
            span = Span()
            batch = shard.sample(TABLE, SAMPLE_BATCH, with_keys=prioritized)
            latencies.append(time.perf_counter() - span.wall)
            if prioritized:
                shard.update_priorities(TABLE, batch["key"], priorities)
            return span.end()

        calls, wall, cpu = timed_loop(seconds, sample, latencies)
        result.record_sampling(calls, wall, cpu, latencies)
    finally:
        shard.close()
        del shard
        gc.collect()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return result


def bench_ray(
    config: Any, sampler: str, log: bool, seconds: float, insert_batch: int, capacity: int, root: str,
    modes: Sequence[str] = SAMPLE_MODES, writers: int = 0,
) -> list[Measurement]:
    """A ReplayClient in this process over the ``config.replay.num_shards`` shard actors that
    ``system.wiring.build_replay`` makes of ``config`` (a ``SystemConfig``; Ray must be initialised): inserts once,
    then (``writers`` > 0) inserts from that many writer actors at once, then sampling in each of ``modes`` on the
    same shards, one :class:`Measurement` per mode."""
    import ray

    from replay.client import ReplayClient
    from system.wiring import System, build_replay

    num_shards = config.replay.num_shards
    directory = tempfile.mkdtemp(prefix=f"ray-{num_shards}-{sampler}-", dir=root) if log else None
    system = System(local=False)
    shards = build_replay(config, [table_config(sampler, capacity, persist=log)], system, directory)
    results = []
    try:
        ray.get([s.size.remote(TABLE) for s in shards])  # wait for the actors to start
        client = ReplayClient(shards, config.replay, local=False)
        next_chunk = chunk_source(insert_batch)
        for _ in range(-(-num_shards * capacity // insert_batch)):
            client.insert(TABLE, next_chunk(), 0)
        client.flush()

        start = time.perf_counter()
        rows = 0
        while rows == 0 or time.perf_counter() - start < seconds:
            client.insert(TABLE, next_chunk(), 0)
            rows += insert_batch
        client.flush()
        insert_rows_s = rows / (time.perf_counter() - start)
        writers_rows_s = (_insert_from_writers(shards, config.replay, writers, seconds, insert_batch) if writers
                          else None)
        stored = sum(ray.get([s.size.remote(TABLE) for s in shards]))
        for mode in modes:
            result = Measurement("ray", num_shards, sampler, log, insert_rows_s=insert_rows_s, stored=stored,
                                 mode=mode, writers_insert_rows_s=writers_rows_s, writers=writers or None)
            sample = _sample_split if mode == "split" else _sample_one_shard
            sample(client, sampler == "prioritized", seconds, result)
            result.batches_per_call = 1 if mode == "split" else config.replay.sample_batches_per_call
            results.append(result)
    finally:
        end_actors(system)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return results


class InsertWriter:
    """A rollout worker's replay edge alone: a ``ReplayClient`` inserting chunks of one writer as fast as the shards
    acknowledge them (``--writers``; run as a Ray actor, each in its own process)."""

    def __init__(self, shards: Sequence[Any], replay: ReplayConfig, writer_id: int, insert_batch: int):
        from replay.client import ReplayClient

        self._client = ReplayClient(shards, replay, local=False, seed=writer_id)
        self._writer_id = writer_id
        self._next_chunk = chunk_source(insert_batch, seed=writer_id, writer_id=writer_id)
        self._rows = insert_batch

    def run(self, seconds: float) -> tuple[int, float]:
        """Insert for ``seconds`` (then flush); return the rows inserted and the seconds it took."""
        start = time.perf_counter()
        rows = 0
        while rows == 0 or time.perf_counter() - start < seconds:
            self._client.insert(TABLE, self._next_chunk(), self._writer_id)
            rows += self._rows
        self._client.flush()
        return rows, time.perf_counter() - start


def _insert_from_writers(shards: Sequence[Any], replay: ReplayConfig, writers: int, seconds: float,
                         insert_batch: int) -> float:
    """Rows/s inserted by ``writers`` :class:`InsertWriter` actors at once (rows over the slowest one's time)."""
    import ray

    actor = ray.remote(InsertWriter).options(num_cpus=0)
    handles = [actor.remote(shards, replay, 1 + i, insert_batch) for i in range(writers)]
    try:
        ray.get([h.run.remote(0.0) for h in handles])  # untimed: process start, imports, one insert each
        done = ray.get([h.run.remote(seconds) for h in handles])
    finally:
        for handle in handles:
            ray.kill(handle)
    return sum(rows for rows, _ in done) / max(elapsed for _, elapsed in done)


def _sample_split(client: Any, prioritized: bool, seconds: float, result: Measurement) -> None:
    """Batches split over every shard (``ReplayClient.submit_sample``), :data:`SAMPLE_PREFETCH` in flight; latency
    from submit to result, wait: how long each ``result()`` blocked."""
    client.sample(TABLE, SAMPLE_BATCH, with_keys=prioritized)  # untimed: one-time costs, shard sizes
    rng = np.random.default_rng(1)
    latencies: list[float] = []
    waits: list[float] = []
    pending: list[tuple[float, Any]] = []
    start = time.perf_counter()
    samples = 0
    while samples == 0 or time.perf_counter() - start < seconds:
        while len(pending) < SAMPLE_PREFETCH:
            pending.append((time.perf_counter(), client.submit_sample(TABLE, SAMPLE_BATCH, with_keys=prioritized)))
        submitted, oldest = pending.pop(0)
        asked = time.perf_counter()
        batch = oldest.result()
        now = time.perf_counter()
        latencies.append(now - submitted)
        waits.append(now - asked)
        if prioritized:
            client.update_priorities(TABLE, batch["key"], rng.random(SAMPLE_BATCH))
        samples += 1
    for _, rest in pending:
        rest.result()
    client.flush_priorities()
    result.sample_rows_s = samples * SAMPLE_BATCH / (time.perf_counter() - start)
    result.p50_ms, result.p99_ms = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    result.wait_p99_ms = percentile_ms(waits, 99)


def _sample_one_shard(client: Any, prioritized: bool, seconds: float, result: Measurement) -> None:
    """Whole batches from one shard per call, ``replay.sample_batches_per_call`` per call,
    ``replay.sample_calls_in_flight`` calls in flight (``ReplayClient.stream``, what the learners use); latency: one
    shard call from submit to its answer, wait: how long taking each batch blocked."""
    stream = client.stream(TABLE, SAMPLE_BATCH, with_keys=prioritized)
    stream.take()  # untimed: one-time costs, shard sizes
    stream.call_latencies.clear()
    rng = np.random.default_rng(1)
    waits: list[float] = []
    start = time.perf_counter()
    samples = 0
    # (at least one shard call answered in the window: on a slow machine a short one can be served by the batches
    # already received)
    while samples == 0 or not stream.call_latencies or time.perf_counter() - start < seconds:
        asked = time.perf_counter()
        batch = stream.take()
        waits.append(time.perf_counter() - asked)
        if prioritized:
            client.update_priorities(TABLE, batch["key"], rng.random(SAMPLE_BATCH))
        samples += 1
    client.flush_priorities()
    result.sample_rows_s = samples * SAMPLE_BATCH / (time.perf_counter() - start)
    latencies = list(stream.call_latencies)
    result.p50_ms, result.p99_ms = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    result.wait_p99_ms = percentile_ms(waits, 99)


def rllib_import_error() -> str | None:
    """Why RLlib's replay buffers cannot be imported here, or None when they can."""
    try:
        import ray.rllib.env.single_agent_episode  # noqa: F401
        import ray.rllib.utils.replay_buffers  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _measure_inserts(result: "Measurement", seconds: float, insert_batch: int, pieces: Any,
                     add: Callable[[Any], Any]) -> None:
    """An anchor's inserts: ``add(next(pieces))`` (``insert_batch`` rows each) for ``seconds``, timed without
    making the pieces; rows/s of wall and CPU time into ``result``."""
    def insert() -> tuple[float, float]:
        piece = next(pieces)
        span = Span()
        add(piece)
        return span.end()

    calls, wall, cpu = timed_loop(seconds, insert)
    result.insert_rows_s = per_second(calls * insert_batch, wall)
    result.insert_rows_cpu_s = per_second(calls * insert_batch, cpu)


def _rllib_episodes(insert_batch: int, seed: int = 0) -> Iterator[list]:
    """Numpy'ized SingleAgentEpisode chunks of ``insert_batch`` steps in all, per ``next()``: episodes of
    :data:`EPISODE_LENGTH` steps arriving in pieces, as RLlib's env runners hand them over."""
    import gymnasium as gym
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
    episode, t = 0, 0
    last_obs = rng.normal(size=OBS_DIM).astype(np.float32)
    while True:
        pieces, left = [], insert_batch
        while left > 0:
            k = min(left, EPISODE_LENGTH - t)
            obs = rng.normal(size=(k + 1, OBS_DIM)).astype(np.float32)
            obs[0] = last_obs
            piece = SingleAgentEpisode(
                id_=f"episode-{episode}",
                observations=list(obs),
                actions=list(rng.uniform(-1, 1, (k, ACTION_DIM)).astype(np.float32)),
                rewards=list(rng.normal(size=k).astype(np.float32)),
                infos=[{}] * (k + 1),
                observation_space=obs_space,
                action_space=act_space,
                terminated=False,
                truncated=t + k == EPISODE_LENGTH,
                t_started=t,
                len_lookback_buffer=0,
            )
            piece.to_numpy()
            pieces.append(piece)
            t, left, last_obs = t + k, left - k, obs[-1]
            if t == EPISODE_LENGTH:
                episode, t = episode + 1, 0
                last_obs = rng.normal(size=OBS_DIM).astype(np.float32)
        yield pieces


def bench_rllib(sampler: str, seconds: float, insert_batch: int, capacity: int) -> Measurement:
    """RLlib's EpisodeReplayBuffer (uniform) or PrioritizedEpisodeReplayBuffer, same rows and capacity."""
    from ray.rllib.utils.replay_buffers import EpisodeReplayBuffer, PrioritizedEpisodeReplayBuffer

    prioritized = sampler == "prioritized"
    if prioritized:
        buffer = PrioritizedEpisodeReplayBuffer(capacity=capacity, alpha=ALPHA)
    else:
        buffer = EpisodeReplayBuffer(capacity=capacity)
    buffer.rng = np.random.default_rng(0)
    result = Measurement("rllib", None, sampler, None)
    episodes = _rllib_episodes(insert_batch)
    while len(buffer) < capacity - EPISODE_LENGTH:
        buffer.add(next(episodes))

    _measure_inserts(result, seconds, insert_batch, episodes, buffer.add)
    result.stored = len(buffer)

    rng = np.random.default_rng(1)
    latencies: list[float] = []

    def sample() -> tuple[float, float]:
        priorities = rng.random(SAMPLE_BATCH)
        span = Span()
        buffer.sample(num_items=SAMPLE_BATCH, n_step=1, gamma=0.99, beta=BETA, sample_episodes=True)
        latencies.append(time.perf_counter() - span.wall)
        if prioritized:
            buffer.update_priorities(priorities[: len(buffer._last_sampled_indices)])
        return span.end()

    calls, wall, cpu = timed_loop(seconds, sample, latencies)
    result.record_sampling(calls, wall, cpu, latencies)
    del buffer
    gc.collect()
    return result


TORCHRL_BUFFERS = ("LazyTensorStorage", "LazyMemmapStorage", "TensorDictPrioritizedReplayBuffer")
"""TorchRL anchors (``--torchrl``): ``TensorDictReplayBuffer`` over ``LazyTensorStorage`` (memory) and
``LazyMemmapStorage`` (memory-mapped files, for larger than memory), both uniform, and
``TensorDictPrioritizedReplayBuffer`` over ``LazyTensorStorage``."""


def torchrl_import_error() -> str | None:
    """Why TorchRL's replay buffers cannot be imported here, or None when they can."""
    try:
        import tensordict  # noqa: F401
        import torchrl.data  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def torchrl_buffer_error(kind: str) -> str | None:
    """Why TorchRL's buffer ``kind`` cannot be made here (its prioritized sampler needs TorchRL's C++ extension,
    built against one torch version), or None when it can."""
    if kind != "TensorDictPrioritizedReplayBuffer":
        return None
    try:
        import torchrl._torchrl  # noqa: F401
    except ImportError as exc:
        why = str(exc).split(": ")[-1][:60]
        return f"TorchRL's C++ extension (its sum trees) does not load with this torch ({why})"
    return None


def bench_torchrl_ray(seconds: float, insert_batch: int, capacity: int, num_cpus: float) -> Measurement:
    """TorchRL's Ray-remote buffer (``RayReplayBuffer`` over ``LazyTensorStorage``, one actor of ``num_cpus`` CPUs;
    Ray must be initialised): ``extend`` of ``--insert-batch`` rows into a full buffer and ``sample()`` of
    :data:`SAMPLE_BATCH` rows, each call blocking as its client does; latency of one sample call."""
    from functools import partial

    from torchrl.data import LazyTensorStorage, RayReplayBuffer

    buffer = RayReplayBuffer(storage=partial(LazyTensorStorage, capacity), batch_size=SAMPLE_BATCH,
                             remote_config={"num_cpus": num_cpus})
    result = Measurement("torchrl_ray", 1, "uniform", None, mode="RayReplayBuffer", batches_per_call=1)
    try:
        _torchrl_inserts(result, buffer, seconds, insert_batch, capacity)
        buffer.sample()  # untimed: one-time costs
        latencies: list[float] = []

        def sample() -> tuple[float, float]:
            span = Span()
            buffer.sample()
            latencies.append(time.perf_counter() - span.wall)
            return span.end()

        calls, wall, cpu = timed_loop(seconds, sample, latencies)
        result.record_sampling(calls, wall, cpu, latencies)
        result.sample_rows_cpu_s = result.insert_rows_cpu_s = None  # the work is in the actor's process
    finally:
        buffer.close()
    return result


def _torchrl_inserts(result: Measurement, buffer: Any, seconds: float, insert_batch: int, capacity: int) -> None:
    """Fill a TorchRL buffer to ``capacity`` with the bench's chunks (untimed), then time its ``extend`` for
    ``seconds`` into ``result``."""
    chunks = _torchrl_chunks(insert_batch)
    while len(buffer) < capacity:
        buffer.extend(next(chunks))
    _measure_inserts(result, seconds, insert_batch, chunks, buffer.extend)
    result.stored = len(buffer)


def _torchrl_chunks(insert_batch: int) -> Iterator[Any]:
    """The bench's chunks (:func:`chunk_source`) as TensorDicts of ``insert_batch`` rows, per ``next()``."""
    import torch
    from tensordict import TensorDict

    next_chunk = chunk_source(insert_batch)
    while True:
        chunk = next_chunk()
        yield TensorDict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in chunk.items()},
                         batch_size=[insert_batch])


def bench_torchrl(kind: str, seconds: float, insert_batch: int, capacity: int, root: str) -> Measurement:
    """TorchRL's buffer ``kind`` (:data:`TORCHRL_BUFFERS`), same rows, capacity and batch sizes: ``extend`` with
    TensorDicts of ``--insert-batch`` rows into a full buffer, ``sample()`` of :data:`SAMPLE_BATCH` rows
    (prioritized: ``update_tensordict_priority`` after every sample, alpha 0.6, beta 0.4 as ours). Only the buffer
    calls are timed, not building the TensorDicts; rows per CPU second as for ``shard``."""
    import torch
    from torchrl.data import (
        LazyMemmapStorage, LazyTensorStorage, TensorDictPrioritizedReplayBuffer, TensorDictReplayBuffer,
    )

    prioritized = kind == "TensorDictPrioritizedReplayBuffer"
    directory = tempfile.mkdtemp(prefix="torchrl-", dir=root) if kind == "LazyMemmapStorage" else None
    storage = LazyMemmapStorage(capacity, scratch_dir=directory) if directory else LazyTensorStorage(capacity)
    if prioritized:
        buffer = TensorDictPrioritizedReplayBuffer(alpha=ALPHA, beta=BETA, storage=storage, batch_size=SAMPLE_BATCH,
                                                   priority_key="td_error")
    else:
        buffer = TensorDictReplayBuffer(storage=storage, batch_size=SAMPLE_BATCH)
    result = Measurement("torchrl", None, "prioritized" if prioritized else "uniform", None, mode=kind)
    try:
        _torchrl_inserts(result, buffer, seconds, insert_batch, capacity)

        generator = torch.Generator().manual_seed(1)
        latencies: list[float] = []

        def sample() -> tuple[float, float]:
            priorities = torch.rand(SAMPLE_BATCH, generator=generator)
            span = Span()
            batch = buffer.sample()
            latencies.append(time.perf_counter() - span.wall)
            if prioritized:
                batch.set("td_error", priorities)
                buffer.update_tensordict_priority(batch)
            return span.end()

        calls, wall, cpu = timed_loop(seconds, sample, latencies)
        result.record_sampling(calls, wall, cpu, latencies)
    finally:
        del buffer, storage
        gc.collect()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """Everything one ``dynaray bench replay`` run measured."""

    settings: dict
    machine: dict
    memory: list[MemoryReport] = field(default_factory=list)
    results: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Anchors asked for and not measured, each with why."""

    def find(self, backend: str, sampler: str, log: bool | None = None) -> Measurement | None:
        for r in self.results:
            if r.backend == backend and r.sampler == sampler and (log is None or r.log == log):
                return r
        return None

    def rllib_ratios(self) -> list[dict]:
        """Per sampler and log setting: our in-process shard against RLlib's buffer (which has no log)."""
        out = []
        for sampler in SAMPLERS:
            theirs = self.find("rllib", sampler)
            if theirs is None:
                continue
            for ours in (r for r in self.results if r.backend == "shard" and r.sampler == sampler):
                out.append(
                    {
                        "sampler": sampler,
                        "log": ours.log,
                        "insert": ours.insert_rows_s / theirs.insert_rows_s,
                        "sample": ours.sample_rows_s / theirs.sample_rows_s,
                        "p99": theirs.p99_ms / ours.p99_ms,
                    }
                )
        return out

    def torchrl_ratios(self) -> list[dict]:
        """Per TorchRL buffer and our log setting: our in-process shard (same sampler) against it."""
        out = []
        for theirs in (r for r in self.results if r.backend == "torchrl"):
            for ours in (r for r in self.results if r.backend == "shard" and r.sampler == theirs.sampler):
                out.append(
                    {
                        "buffer": theirs.mode,
                        "sampler": theirs.sampler,
                        "log": ours.log,
                        "insert": ours.insert_rows_s / theirs.insert_rows_s,
                        "sample": ours.sample_rows_s / theirs.sample_rows_s,
                        "p99": theirs.p99_ms / ours.p99_ms,
                    }
                )
        return out

    def torchrl_ray_ratios(self) -> list[dict]:
        """Per sample mode: our client over one shard actor (uniform, log off) against TorchRL's Ray-remote buffer."""
        theirs = next((r for r in self.results if r.backend == "torchrl_ray"), None)
        if theirs is None:
            return []
        return [
            {
                "mode": ours.mode,
                "insert": ours.insert_rows_s / theirs.insert_rows_s,
                "sample": ours.sample_rows_s / theirs.sample_rows_s,
                "p99": theirs.p99_ms / ours.p99_ms,
            }
            for ours in self.results
            if ours.backend == "ray" and ours.shards == 1 and ours.sampler == "uniform" and not ours.log
        ]

    def targets(self) -> list[dict]:
        """The issue's per-shard targets against the in-process shard measurements, and the RLlib ratios."""
        checks: list[dict] = []
        for r in self.results:
            if r.backend != "shard":
                continue
            where = f"{r.sampler}, log {'on' if r.log else 'off'}"
            if r.log:
                check(checks, f"insert rows/s per shard, log on ({r.sampler})", r.insert_rows_s, TARGET_INSERT_ROWS_S)
            goal = TARGET_UNIFORM_ROWS_S if r.sampler == "uniform" else TARGET_PRIORITIZED_ROWS_S
            check(checks, f"sample rows/s per shard ({where})", r.sample_rows_s, goal)
            check(checks, f"p99 sample latency ms ({where})", r.p99_ms, TARGET_P99_MS, higher_is_better=False,
                  strict=True)
        for r in self.results:
            if r.backend == "ray":
                where = f"Ray, {r.shards} shard(s), {r.mode} ({r.sampler}, log {'on' if r.log else 'off'})"
                if r.mode == "one_shard":  # a call carries many batches: the latency is the consumer's per batch
                    check(checks, f"sample rows/s into one client, {where}", r.sample_rows_s,
                          TARGET_RAY_SAMPLE_ROWS_S)
                    check(checks, f"p99 wait per batch ms, {where}", r.wait_p99_ms, TARGET_P99_MS,
                          higher_is_better=False, strict=True)
                else:
                    check(checks, f"p99 sample latency ms, {where}", r.p99_ms, TARGET_P99_MS,
                          higher_is_better=False, strict=True)
        for ratio in self.rllib_ratios():
            where = f"{ratio['sampler']}, our log {'on' if ratio['log'] else 'off'}"
            check(checks, f"insert x RLlib ({where})", ratio["insert"], TARGET_RLLIB_RATIO)
            check(checks, f"sample x RLlib ({where})", ratio["sample"], TARGET_RLLIB_RATIO)
        for ratio in self.torchrl_ratios():
            where = f"{ratio['buffer']}, our log {'on' if ratio['log'] else 'off'}"
            check(checks, f"insert x TorchRL ({where})", ratio["insert"], 1.0)
            check(checks, f"sample x TorchRL ({where})", ratio["sample"], 1.0)
        for ratio in self.torchrl_ray_ratios():
            check(checks, f"insert x TorchRL RayReplayBuffer (through Ray, {ratio['mode']})", ratio["insert"], 1.0)
            check(checks, f"sample x TorchRL RayReplayBuffer (through Ray, {ratio['mode']})", ratio["sample"], 1.0)
        for m in self.memory:
            check(checks, f"memory overhead per row ({m.sampler})", m.overhead, TARGET_MEMORY_OVERHEAD,
                  higher_is_better=False, strict=True)
        return checks

    def to_json(self) -> dict:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "memory": [{**dataclasses.asdict(m), "overhead": m.overhead} for m in self.memory],
            "results": [dataclasses.asdict(r) for r in self.results],
            "rllib_ratios": self.rllib_ratios(),
            "torchrl_ratios": self.torchrl_ratios(),
            "torchrl_ray_ratios": self.torchrl_ray_ratios(),
            "skipped": self.skipped,
            "targets": self.targets(),
        }

    def markdown(self) -> str:
        lines = [
            "| backend | mode | shards | sampler | log | insert rows/s | sample rows/s | p50 ms | p99 ms | wait p99 ms "
            "| rows stored | insert rows/CPU-s | sample rows/CPU-s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.results:
            shards = "-" if r.shards is None else str(r.shards)
            log = "-" if r.log is None else ("on" if r.log else "off")
            cpu = ["-" if v is None else f"{v:,.0f}" for v in (r.insert_rows_cpu_s, r.sample_rows_cpu_s)]
            mode = "-" if r.mode is None else (f"{r.mode} x{r.batches_per_call}" if r.mode == "one_shard" else r.mode)
            wait = "-" if r.wait_p99_ms is None else f"{r.wait_p99_ms:.3f}"
            lines.append(
                f"| {r.backend} | {mode} | {shards} | {r.sampler} | {log} | {r.insert_rows_s:,.0f} | "
                f"{r.sample_rows_s:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {wait} | {r.stored:,} | {cpu[0]} | "
                f"{cpu[1]} |"
            )
        writers = [r for r in self.results if r.writers_insert_rows_s is not None and r.mode in (None, "split")]
        if writers:
            lines += [
                "",
                "| inserts through Ray | shards | sampler | log | one client rows/s | writers | writers rows/s |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for r in writers:
                lines.append(
                    f"| ray | {r.shards} | {r.sampler} | {'on' if r.log else 'off'} | {r.insert_rows_s:,.0f} | "
                    f"{r.writers} | {r.writers_insert_rows_s:,.0f} |"
                )
        ratios = self.rllib_ratios()
        if ratios:
            lines += [
                "",
                "| vs RLlib | our log | insert x | sample x | p99 latency x |",
                "| --- | --- | --- | --- | --- |",
            ]
            for ratio in ratios:
                lines.append(
                    f"| {ratio['sampler']} | {'on' if ratio['log'] else 'off'} | {ratio['insert']:,.1f} | "
                    f"{ratio['sample']:,.1f} | {ratio['p99']:,.1f} |"
                )
        torchrl = self.torchrl_ratios()
        if torchrl:
            lines += [
                "",
                "| vs TorchRL | sampler | our log | insert x | sample x | p99 latency x |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for ratio in torchrl:
                lines.append(
                    f"| {ratio['buffer']} | {ratio['sampler']} | {'on' if ratio['log'] else 'off'} | "
                    f"{ratio['insert']:,.1f} | {ratio['sample']:,.1f} | {ratio['p99']:,.1f} |"
                )
        torchrl_ray = self.torchrl_ray_ratios()
        if torchrl_ray:
            lines += [
                "",
                "| vs TorchRL RayReplayBuffer (through Ray, 1 shard, uniform, log off) | insert x | sample x | "
                "p99 latency x |",
                "| --- | --- | --- | --- |",
            ]
            for ratio in torchrl_ray:
                lines.append(f"| ours, {ratio['mode']} | {ratio['insert']:,.1f} | {ratio['sample']:,.1f} | "
                             f"{ratio['p99']:,.1f} |")
        if self.skipped:
            lines += ["", *(f"not measured: {line}" for line in self.skipped)]
        if self.memory:
            lines += [
                "",
                "| memory | capacity | bytes per row | raw field bytes | overhead |",
                "| --- | --- | --- | --- | --- |",
            ]
            for m in self.memory:
                lines.append(
                    f"| {m.sampler} | {m.capacity:,} | {m.bytes_per_row:.1f} | {m.raw_bytes_per_row} | "
                    f"{m.overhead:+.1%} |"
                )
        lines += targets_table(
            self.targets(),
            lambda c: f"{c['measured']:+.1%}" if "overhead" in c["target"] else f"{c['measured']:,.3g}",
            lambda c: f"{c['goal']:.0%}" if "overhead" in c["target"] else f"{c['goal']:,.6g}",
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "replay insert/sample throughput, sample latency and memory per row (optionally on Ray, vs RLlib)"
DESCRIPTION = (
    "Insert and sample throughput, p50/p99 sample latency and memory per stored row of the replay service with "
    "HalfCheetah-sized rows: one shard in process, with --ray a client over K shard actors made as a run makes them "
    "(from the presets and overrides given, as 'dynaray train' takes them), with --rllib RLlib's episode replay "
    "buffers on the same data. See system/bench/replay.py for what each number means."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_items(p)
    p.add_argument("--shards", type=positive_ints, default=[1, 2, 4],
                   help="shard counts (replay.num_shards) with --ray (default 1,2,4)")
    p.add_argument("--samplers", type=choices(SAMPLERS), default=list(SAMPLERS),
                   help="samplers to measure (default uniform,prioritized)")
    p.add_argument("--seconds", type=positive_float, default=3.0,
                   help="timed seconds per phase (insert, sample) per configuration (default 3)")
    p.add_argument("--insert-batch", type=positive_int, default=1024, help="rows per insert (default 1024)")
    p.add_argument("--log", type=choices(("on", "off")), default=["on", "off"],
                   help="write-ahead log on, off or both (default on,off)")
    p.add_argument("--capacity", type=positive_int, default=1_000_000,
                   help="rows per shard table, filled before timing (default 1,000,000)")
    p.add_argument("--ray", action="store_true", help="also measure a client over K shard actors on Ray")
    p.add_argument("--sample-modes", type=choices(SAMPLE_MODES), default=list(SAMPLE_MODES),
                   help="with --ray, how the client samples: split (every batch over all shards), one_shard (whole "
                        "batches from one shard, replay.sample_batches_per_call per call, as the learners do); "
                        "default both, on the same shards")
    p.add_argument("--rllib", action="store_true",
                   help="also measure RLlib's EpisodeReplayBuffer and PrioritizedEpisodeReplayBuffer")
    p.add_argument("--torchrl", action="store_true",
                   help="also measure TorchRL's TensorDictReplayBuffer (LazyTensorStorage, LazyMemmapStorage) and "
                        "TensorDictPrioritizedReplayBuffer")
    p.add_argument("--writers", type=int, default=2,
                   help="with --ray, also insert from this many writer actors at once, each with its own client, as "
                        "rollout workers do (default 2; 0: not measured)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench replay``: run every configuration, print Markdown tables, optionally write JSON."""
    from system.config import ConfigError, to_dict

    if args.writers < 0:
        return fail(f"--writers {args.writers}: expected a number of writer actors >= 0")
    if args.insert_batch > args.capacity:
        return fail(f"--insert-batch {args.insert_batch} is larger than --capacity {args.capacity}")
    if args.rllib:
        problem = rllib_import_error()
        if problem is not None:
            return fail(f"--rllib needs RLlib's replay buffers, which do not import here ({problem}); they need "
                        f"dm-tree and scipy besides Ray: pip install dm-tree scipy lz4")
    if args.torchrl:
        problem = torchrl_import_error()
        if problem is not None:
            return fail(f"--torchrl needs TorchRL's replay buffers, which do not import here ({problem}); install "
                        f"the bench extra: pip install -c constraints.txt '.[bench]'")
    try:
        config = load_bench_config(args)
        configs = {k: load_bench_config(args, [f"replay.num_shards={k}"]) for k in (args.shards if args.ray else [])}
    except ConfigError as exc:
        return fail(str(exc))
    logs = [value == "on" for value in args.log]
    settings = {
        "shards": args.shards,
        "samplers": args.samplers,
        "log": args.log,
        "seconds": args.seconds,
        "insert_batch": args.insert_batch,
        "sample_batch": SAMPLE_BATCH,
        "capacity_per_shard": args.capacity,
        "ray": args.ray,
        "sample_modes": args.sample_modes,
        "writers": args.writers,
        "rllib": args.rllib,
        "torchrl": args.torchrl,
        "config_items": args.items,
        "replay_config": to_dict(config.replay),
    }
    report = Report(settings, machine())

    for sampler in args.samplers:
        report.memory.append(table_memory(sampler, args.capacity, args.insert_batch))
        gc.collect()
    with tempfile.TemporaryDirectory(prefix="dynaray-bench-") as root:
        for sampler in args.samplers:
            for log in logs:
                progress(f"shard in process, {sampler}, log {'on' if log else 'off'}")
                report.results.append(bench_shard(config.replay, sampler, log, args.seconds, args.insert_batch,
                                                  args.capacity, root))
        if args.rllib:
            for sampler in args.samplers:
                progress(f"RLlib {'Prioritized' if sampler == 'prioritized' else ''}EpisodeReplayBuffer")
                report.results.append(bench_rllib(sampler, args.seconds, args.insert_batch, args.capacity))
        if args.torchrl:
            for kind in TORCHRL_BUFFERS:
                sampler = "prioritized" if kind == "TensorDictPrioritizedReplayBuffer" else "uniform"
                if sampler not in args.samplers:
                    continue
                problem = torchrl_buffer_error(kind)
                if problem is not None:
                    report.skipped.append(f"TorchRL {kind}: {problem}")
                    continue
                progress(f"TorchRL {kind}")
                report.results.append(bench_torchrl(kind, args.seconds, args.insert_batch, args.capacity, root))
        if args.ray:
            from system.runtime import start_ray, stop_ray

            start_ray(configs[max(args.shards)], namespace=f"dynaray-bench-{os.getpid()}")
            try:
                for shards in args.shards:
                    for sampler in args.samplers:
                        for log in logs:
                            progress(f"Ray, {shards} shard(s), {sampler}, log {'on' if log else 'off'}")
                            report.results.extend(bench_ray(configs[shards], sampler, log, args.seconds,
                                                            args.insert_batch, args.capacity, root,
                                                            args.sample_modes, args.writers))
                if args.torchrl and "uniform" in args.samplers:
                    progress("TorchRL RayReplayBuffer")
                    report.results.append(bench_torchrl_ray(args.seconds, args.insert_batch, args.capacity,
                                                            configs[min(args.shards)].replay.num_cpus))
            finally:
                stop_ray()
    finish(report.machine)
    return write_report(report, f"{report.machine['cpus']} CPUs; {load_averages(report.machine)}", args.json)
