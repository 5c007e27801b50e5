"""``dynaray bench cold-replay``: a replay table with its oldest rows on disk (the cold tier, replay/cold.py) against
one in memory.

    dynaray bench cold-replay [--rows 1000000] [--dir /tmp] [--json OUT]

HalfCheetah-sized rows (obs 17 float32, action 6 float32, plus the other transition columns: 206 raw bytes).
Fills a table of ``--rows`` rows entirely in memory, and one that keeps 10% in memory and 90% in Parquet segment
files, then times batches of 256 uniformly sampled rows: with the segment files in the OS page cache (warm), and
with their pages dropped before every batch (cold: every sampled disk row is read from the disk). Also reports
insert throughput (the segment writes included), disk bytes per row, and what decoding row groups with pyarrow
(instead of memory-mapping the columns) would cost.

pyarrow is imported when the benchmark runs, not when the CLI is built.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from system.bench.harness import (
    add_json_option, finish, load_averages, machine, percentile_ms, positive_int, progress, write_report,
)

__all__ = ["Report", "add_arguments", "run"]

OBS, ACT = 17, 6
BATCH = 256
CHUNK = 1000


def columns() -> tuple:
    """The benchmark's row schema."""
    from replay.schema import transition_columns

    return transition_columns((OBS,), (ACT,))


def chunk(start: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    seq = np.arange(start, start + n, dtype=np.int64)
    return {
        "obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "terminated": rng.random(n) < 0.001,
        "truncated": seq % 1000 == 999,
        "episode_id": seq // 1000,
        "step": seq % 1000,
        "policy_version": np.zeros(n, np.int64),
        "writer_id": np.zeros(n, np.int64),
        "seq": seq,
    }


def fill(table, rows: int, rng: np.random.Generator) -> float:
    """Insert ``rows`` rows in chunks of CHUNK; return rows per second (pre-generated data, inserts only)."""
    chunks = [chunk(0, CHUNK, rng) for _ in range(8)]
    start = time.perf_counter()
    for i in range(rows // CHUNK):
        table.insert(chunks[i % len(chunks)])
    return rows / (time.perf_counter() - start)


def drop_page_cache(table) -> None:
    """Evict the segment files' pages: unmap them from this process and tell the kernel to drop them."""
    from replay.cold import _DiskPart

    for part in table.cold._parts:
        if isinstance(part, _DiskPart) and part._map is not None:
            part._map.madvise(mmap.MADV_DONTNEED)
            fd = os.open(part.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def latencies(table, repeat: int, before=None) -> np.ndarray:
    """Seconds of each of ``repeat`` samples of :data:`BATCH` rows with keys (``before()`` first, untimed)."""
    rng = np.random.default_rng(1)
    table.sample(BATCH, rng)
    out = np.empty(repeat)
    for i in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        table.sample(BATCH, rng, with_keys=True)
        out[i] = time.perf_counter() - start
    return out


def sample_row(name: str, seconds: np.ndarray) -> dict:
    """One row of the sample table: p50 and p99 milliseconds, rows per second."""
    return {"case": name, "p50_ms": percentile_ms(seconds, 50), "p99_ms": percentile_ms(seconds, 99),
            "rows_s": BATCH / float(np.mean(seconds)), "batches": len(seconds)}


def row_group_decode_ms(path: str, rows: int, sizes: tuple[int, ...]) -> list[tuple[int, float]]:
    """Time ``ParquetFile.read_row_group`` on a copy of one segment rewritten with row groups of each size."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out = []
    for size in sizes:
        target = path + f".rg{size}"
        pq.write_table(table, target, row_group_size=size, compression="none", use_dictionary=False)
        reader = pq.ParquetFile(target)
        groups = min(reader.metadata.num_row_groups, 50)
        start = time.perf_counter()
        for g in range(groups):
            reader.read_row_group(g)
        out.append((size, (time.perf_counter() - start) / groups * 1e3))
        os.unlink(target)
    return out


@dataclass
class Report:
    """Everything one ``dynaray bench cold-replay`` run measured."""

    settings: dict
    machine: dict
    samples: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    """Insert rates, segment files and bytes, memory, row-group decode times."""

    def to_json(self) -> dict:
        return {"settings": self.settings, "machine": self.machine, "samples": self.samples, **self.facts}

    def markdown(self) -> str:
        f = self.facts
        lines = [
            f"rows {self.settings['rows']:,} ({f['raw_bytes']} raw bytes each), batch {BATCH}, segment "
            f"{f['segment_rows']:,} rows, {f['disk_files']} segment files",
            "",
            "| sample of 256 rows | p50 ms | p99 ms | rows/s |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [f"| {s['case']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['rows_s']:,.0f} |" for s in self.samples]
        raw, rows = f["raw_bytes"], self.settings["rows"]
        lines += [
            "",
            f"- insert, chunks of {CHUNK}: all in memory {f['memory_insert_rows_s']:,.0f} rows/s; 90% on disk "
            f"{f['tiered_insert_rows_s']:,.0f} rows/s (segment files written in the insert call: no write-behind here)",
            f"- disk: {f['file_bytes'] / f['file_rows']:.1f} bytes per row in segment files "
            f"({f['file_bytes'] / 2**20:,.1f} MiB for {f['file_rows']:,} rows, {f['disk_rows']:,} of them live; raw "
            f"{raw} bytes)",
            f"- memory of the rows: all in memory {rows * raw / 2**20:,.0f} MiB; tiered "
            f"{f['in_memory_rows'] * raw / 2**20:,.0f} MiB ring + at most {f['segment_rows'] * raw / 2**20:,.0f} MiB "
            f"staged segment",
        ]
        for size, ms in f["row_group_decode_ms"]:
            lines.append(f"- pyarrow read_row_group of {size:,} rows (the decode alternative): {ms:.2f} ms per row "
                         f"group")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ CLI

HELP = "replay sampling with 90%% of the rows in the cold tier on disk, page cache warm and dropped, against memory"
DESCRIPTION = (
    "p50/p99 latency of 256-row samples from a table entirely in memory and from one with 90% of its rows in Parquet "
    "segment files (page cache warm, and dropped before every batch); insert rates, disk bytes per row. See "
    "system/bench/cold_replay.py."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=positive_int, default=1_000_000, help="rows of each table (default 1,000,000)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the segment files go (default: the temp dir)")
    add_json_option(p)


def run(args: argparse.Namespace) -> int:
    """``dynaray bench cold-replay``: fill both tables, time samples, print the table and the facts."""
    import pyarrow.parquet as pq

    from replay.cold import ColdTier, list_segments
    from replay.table import Table, TableConfig

    rows = args.rows
    raw = sum(c.row_size * c.np_dtype.itemsize for c in columns())
    rng = np.random.default_rng(0)
    report = Report({"rows": rows, "batch": BATCH, "chunk": CHUNK, "dir": args.dir}, machine("pyarrow"))

    progress(f"filling {rows:,} rows in memory")
    memory = Table(TableConfig("real", rows, columns()))
    memory_insert = fill(memory, rows, rng)

    directory = tempfile.mkdtemp(prefix="cold-replay-", dir=args.dir)
    try:
        in_memory, on_disk = rows // 10, rows - rows // 10
        config = TableConfig("real", in_memory, columns(), disk_capacity=on_disk)
        cold = ColdTier(directory, "real", columns(), on_disk, recover=False)
        tiered = Table(config, cold)
        progress(f"filling {rows:,} rows, 90% of them on disk")
        tiered_insert = fill(tiered, rows + cold.segment_rows, rng)  # one extra segment: the cold tier is full
        stats = tiered.stats()
        if tiered.size != rows or stats["disk_rows"] + stats["staged_rows"] != on_disk:
            raise RuntimeError(f"the tiered table holds {tiered.size:,} rows ({stats['disk_rows']:,} on disk, "
                               f"{stats['staged_rows']:,} staged): expected {rows:,} ({on_disk:,} on disk or staged)")

        progress("sampling")
        report.samples = [
            sample_row(f"all {rows:,} rows in memory", latencies(memory, 2000)),
            sample_row("10% in memory, 90% on disk, page cache warm", latencies(tiered, 2000)),
            sample_row("10% in memory, 90% on disk, page cache dropped before each batch",
                       latencies(tiered, 30, before=lambda: drop_page_cache(tiered))),
        ]
        segment = list_segments(directory)[0][1]
        files = [path for _, path in list_segments(directory)]
        report.facts = {
            "raw_bytes": raw, "segment_rows": cold.segment_rows, "disk_files": stats["disk_files"],
            "disk_rows": stats["disk_rows"], "in_memory_rows": in_memory,
            "memory_insert_rows_s": memory_insert, "tiered_insert_rows_s": tiered_insert,
            "file_rows": sum(pq.ParquetFile(path).metadata.num_rows for path in files),
            "file_bytes": sum(os.path.getsize(path) for path in files),
            "row_group_decode_ms": row_group_decode_ms(segment, cold.segment_rows, (1024, 16384)),
        }
        cold.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    finish(report.machine)
    return write_report(report, f"{report.machine['cpus']} CPUs; {load_averages(report.machine)}", args.json)
