"""``dynaray bench gateway``: uploads/s, rows/s and latency of the ingest gateway with concurrent robot clients, and
what full validation of an upload costs per MB.

    dynaray bench gateway [--clients 16] [--seconds 10] [--rows 200] [--json OUT]

(Registration: one line ``"gateway": "system.bench.gateway"`` in ``system/bench/__init__.py``'s ``VERBS``.)

Upload throughput: an :class:`actors.gateway.IngestGateway` in this process on 127.0.0.1 (defaults of
``GatewayConfig`` except ``max_concurrent_uploads = --clients`` and no per-token row rate, so that the clients are
limited by the gateway's work, not by its admission limits), storing into two :class:`replay.shard.ReplayShard`
objects in this process (table ``real`` of InvertedPendulum-v5's shapes, no persistence, no rate limiting) through a
``ReplayClient``, as a run's gateway does. ``--clients`` robot clients run as threads of *another* process, each with
its own token and keep-alive connection, posting episodes of ``--rows`` rows (Arrow IPC, float32 vectors, each upload
with its own ``Idempotency-Key``) back to back for ``--seconds``. Reported: uploads/s and rows/s over the timed
window, latency percentiles of one upload (send to answer: read, validate, store, flush), and answers other than
200. Clients and gateway share the machine's CPUs.

Validation cost: :meth:`actors.gateway_upload.EpisodeParser.parse` (message walk, schema, record batch headers,
``validate(full=True)``, conversion and every value check) on episodes of 1,000 and 10,000 rows, uncompressed and
ZSTD-compressed, timed in this process on one thread: milliseconds per upload, per MB of upload body and per MB of
decoded Arrow data; and of that, Arrow's ``RecordBatch.validate(full=True)`` alone on the decoded batches. Each is
the best of 5 rounds of 20 calls (the least disturbed by other processes on a shared machine).

torch, Ray and the gateway are imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from system.bench.harness import (
    add_json_option, finish, load_averages, machine, positive_float, positive_int, progress, write_report,
)

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

OBS_SHAPE, ACTION_SHAPE = (4,), (1,)
"""InvertedPendulum-v5's spaces."""
VALIDATION_ROWS = (1_000, 10_000)


def _body(rows: int, seed: int, compression: str | None = None) -> bytes:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (rows + 1, OBS_SHAPE[0])).astype(np.float32)
    terminated = np.zeros(rows, bool)
    terminated[-1] = True

    def vectors(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])

    table = pa.table({
        "obs": vectors(obs[:-1]), "action": vectors(rng.uniform(-3, 3, (rows, 1)).astype(np.float32)),
        "reward": pa.array(rng.standard_normal(rows).astype(np.float32)), "next_obs": vectors(obs[1:]),
        "terminated": pa.array(terminated), "truncated": pa.array(np.zeros(rows, bool)),
    })
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


# ------------------------------------------------------------------------------------------------------ clients


def _client_process(address: tuple[str, int], tokens: list[str], rows: int, seconds: float, results: Any) -> None:
    """Runs in another process: one thread per token posting episodes back to back for ``seconds`` (from when its
    bodies are built); puts one (latencies, statuses) per thread."""
    import http.client
    import threading

    bodies = [_body(rows, seed) for seed in range(8)]
    collected: list[tuple[list[float], dict[int, int]]] = []
    stop_at = time.monotonic() + seconds

    def robot(index: int, token: str) -> None:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        conn = http.client.HTTPConnection(*address, timeout=120)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.apache.arrow.stream"}
        i = 0
        while time.monotonic() < stop_at:
            body = bodies[(index + i) % len(bodies)]
            began = time.monotonic()
            try:
                conn.request("POST", "/v1/episodes", body=body, headers={**headers, "Idempotency-Key": f"{index}-{i}"})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(*address, timeout=120)
                status = 0
            if time.monotonic() <= stop_at:
                latencies.append(time.monotonic() - began)
                statuses[status] = statuses.get(status, 0) + 1
            i += 1
        conn.close()
        collected.append((latencies, statuses))

    threads = [threading.Thread(target=robot, args=(i, token)) for i, token in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(collected)


@dataclass
class Throughput:
    clients: int
    rows_per_upload: int
    seconds: float
    uploads: int
    statuses: dict[int, int]
    latencies_ms: dict[str, float]
    body_bytes: int

    @property
    def uploads_per_s(self) -> float:
        return self.uploads / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.uploads * self.rows_per_upload / self.seconds


def bench_uploads(clients: int, seconds: float, rows: int) -> Throughput:
    """Upload throughput of one in-process gateway with ``clients`` robot threads in another process."""
    from actors.envs import EnvSpec
    from actors.config import GatewayConfig
    from actors.gateway import IngestGateway
    from actors.gateway_tokens import Token
    from learners.sac import Policy
    from replay.client import ReplayClient
    from replay.config import ReplayConfig
    from replay.schema import transition_columns
    from replay.shard import ReplayShard
    from replay.table import TableConfig
    from replay.handles import LocalHandle

    spec = EnvSpec(OBS_SHAPE, ACTION_SHAPE, np.full(1, -3.0, np.float32), np.full(1, 3.0, np.float32))
    columns = transition_columns(OBS_SHAPE, ACTION_SHAPE)
    shards = [LocalHandle(ReplayShard([TableConfig("real", 1_000_000, columns)], seed=i)) for i in range(2)]
    replay = ReplayClient(shards, ReplayConfig(num_shards=2), local=True)

    class NoWeights:
        version = -1

        def poll(self) -> None:
            return None

    tokens = [Token(f"robot-{i}", frozenset({"upload"}), f"bench-robot-token-{i:04d}-0123456789")
              for i in range(clients)]
    config = GatewayConfig(max_concurrent_uploads=clients, max_rows_per_s=0)
    gateway = IngestGateway(config, replay, NoWeights(), lambda: Policy(4, 1, spec.action_low, spec.action_high),
                            spec, tokens=tokens)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_client_process, args=(gateway.address(), [t.secret for t in tokens], rows,
                                                             seconds, results))
    try:
        process.start()
        collected = results.get(timeout=seconds + 300)
        process.join(60)
    finally:
        gateway.close()
    latencies = sorted(x for lat, _ in collected for x in lat)
    statuses: dict[int, int] = {}
    for _, counts in collected:
        for status, n in counts.items():
            statuses[status] = statuses.get(status, 0) + n
    quantiles = {f"p{q}": float(np.percentile(latencies, q)) * 1e3 for q in (50, 90, 99)} if latencies else {}
    return Throughput(clients, rows, seconds, statuses.get(200, 0), statuses, quantiles, len(_body(rows, 0)))


# --------------------------------------------------------------------------------------------------- validation


@dataclass
class ValidationCost:
    rows: int
    compression: str
    body_bytes: int
    decoded_bytes: int
    seconds: float
    """Seconds per call of the whole parse."""
    full_validate_seconds: float
    """Seconds per call of ``validate(full=True)`` on the decoded batches alone."""

    @property
    def ms_per_body_mb(self) -> float:
        return self.seconds * 1e3 / (self.body_bytes / 1e6)

    @property
    def ms_per_decoded_mb(self) -> float:
        return self.seconds * 1e3 / (self.decoded_bytes / 1e6)


def _best(call: Any, rounds: int = 5, repeats: int = 20) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``repeats`` calls."""
    call()  # warm
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(repeats):
            call()
        best = min(best, (time.perf_counter() - began) / repeats)
    return best


def bench_validation(rows: int, compression: str | None) -> ValidationCost:
    import pyarrow as pa

    from actors.gateway_upload import EpisodeParser
    from replay.schema import transition_columns

    parser = EpisodeParser(transition_columns(OBS_SHAPE, ACTION_SHAPE), np.full(1, -3.0, np.float32),
                           np.full(1, 3.0, np.float32), max_rows=10 * rows, max_decoded_bytes=1 << 32,
                           max_abs_value=1e6)
    body = _body(rows, 0, compression)
    table = pa.ipc.open_stream(body).read_all()
    batches = table.to_batches()

    def full_validate() -> None:
        for batch in batches:
            batch.validate(full=True)

    return ValidationCost(rows, compression or "none", len(body), table.nbytes, _best(lambda: parser.parse(body, None)),
                          _best(full_validate))


# ------------------------------------------------------------------------------------------------------- report


@dataclass
class Report:
    settings: dict
    machine: dict
    uploads: Throughput | None = None
    validation: list[ValidationCost] = field(default_factory=list)

    def markdown(self) -> str:
        u = self.uploads
        lines = [
            f"### Uploads: {u.clients} robot clients, {u.rows_per_upload} rows per episode ({u.body_bytes} bytes), "
            f"{u.seconds:g} s",
            "",
            "| uploads/s | rows/s | p50 ms | p90 ms | p99 ms | answers |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {u.uploads_per_s:,.0f} | {u.rows_per_s:,.0f} | {u.latencies_ms.get('p50', 0):.1f} | "
            f"{u.latencies_ms.get('p90', 0):.1f} | {u.latencies_ms.get('p99', 0):.1f} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(u.statuses.items()))} |",
            "",
            "### Full validation (EpisodeParser.parse, one thread)",
            "",
            "| rows | compression | body bytes | decoded bytes | ms per upload | ms per body MB | ms per decoded MB "
            "| of which validate(full=True), ms per decoded MB |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in self.validation:
            lines.append(f"| {v.rows:,} | {v.compression} | {v.body_bytes:,} | {v.decoded_bytes:,} | "
                         f"{v.seconds * 1e3:.2f} | {v.ms_per_body_mb:.1f} | {v.ms_per_decoded_mb:.1f} | "
                         f"{v.full_validate_seconds * 1e3 / (v.decoded_bytes / 1e6):.2f} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        u = self.uploads
        return {
            "settings": self.settings,
            "machine": self.machine,
            "uploads": {"clients": u.clients, "rows_per_upload": u.rows_per_upload, "seconds": u.seconds,
                        "uploads": u.uploads, "uploads_per_s": u.uploads_per_s, "rows_per_s": u.rows_per_s,
                        "latency_ms": u.latencies_ms, "statuses": u.statuses, "body_bytes": u.body_bytes},
            "validation": [{"rows": v.rows, "compression": v.compression, "body_bytes": v.body_bytes,
                            "decoded_bytes": v.decoded_bytes, "seconds": v.seconds,
                            "full_validate_seconds": v.full_validate_seconds,
                            "ms_per_body_mb": v.ms_per_body_mb, "ms_per_decoded_mb": v.ms_per_decoded_mb}
                           for v in self.validation],
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


HELP = "uploads/s, rows/s and latency of the ingest gateway with concurrent robot clients; validation cost per MB"
DESCRIPTION = (
    "Upload throughput and latency of an in-process ingest gateway on 127.0.0.1 with N robot clients (threads of "
    "another process, one token each) storing into in-process replay shards, and the cost of full validation per "
    "MB. See system/bench/gateway.py for what each number means."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=positive_int, default=16, help="concurrent robot clients (default 16)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="timed seconds of uploads (default 10)")
    p.add_argument("--rows", type=positive_int, default=200, help="rows per uploaded episode (default 200)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench gateway``: validation cost, then upload throughput; Markdown on stdout, JSON to ``--json``."""
    record = machine("aiohttp", "pyarrow", cpu_model=_cpu_model())
    report = Report({"clients": args.clients, "seconds": args.seconds, "rows": args.rows}, record)
    for rows in VALIDATION_ROWS:
        for compression in (None, "zstd"):
            progress(f"validation: {rows} rows, compression {compression or 'none'}")
            report.validation.append(bench_validation(rows, compression))
    progress(f"uploads: {args.clients} clients, {args.rows} rows each, {args.seconds:g} s")
    report.uploads = bench_uploads(args.clients, args.seconds, args.rows)
    finish(record)
    summary = (f"{record['cpus']} CPUs ({record['cpu_model']}), gateway and clients on the same machine; "
               f"{load_averages(record)}")
    return write_report(report, summary, args.json)
