"""Benchmark: a replay table with its oldest rows on disk (the cold tier, replay/cold.py) against one in memory.

    .venv/bin/python tests/benchmarks/cold_replay.py [--rows 1000000] [--dir /tmp]

HalfCheetah-sized rows (obs 17 float32, action 6 float32, plus the other transition columns: 204 raw bytes).
Fills a table of ``--rows`` rows entirely in memory, and one that keeps 10% in memory and 90% in Parquet segment
files, then times batches of 256 uniformly sampled rows: with the segment files in the OS page cache (warm), and
with their pages dropped before every batch (cold: every sampled disk row is read from the disk). Also reports
insert throughput (the segment writes included), disk bytes per row, and what decoding row groups with pyarrow
(instead of memory-mapping the columns) would cost. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from replay.cold import ColdTier, _DiskPart, list_segments  # noqa: E402
from replay.schema import transition_columns  # noqa: E402
from replay.table import Table, TableConfig  # noqa: E402

OBS, ACT = 17, 6
COLUMNS = transition_columns((OBS,), (ACT,))
BATCH = 256
CHUNK = 1000


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


def fill(table: Table, rows: int, rng: np.random.Generator) -> float:
    """Insert ``rows`` rows in chunks of CHUNK; return rows per second (pre-generated data, inserts only)."""
    chunks = [chunk(0, CHUNK, rng) for _ in range(8)]
    start = time.perf_counter()
    for i in range(rows // CHUNK):
        table.insert(chunks[i % len(chunks)])
    return rows / (time.perf_counter() - start)


def drop_page_cache(table: Table) -> None:
    """Evict the segment files' pages: unmap them from this process and tell the kernel to drop them."""
    for part in table.cold._parts:
        if isinstance(part, _DiskPart) and part._map is not None:
            part._map.madvise(mmap.MADV_DONTNEED)
            fd = os.open(part.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def latencies(table: Table, repeat: int, before=None) -> np.ndarray:
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


def row(name: str, seconds: np.ndarray) -> str:
    p50, p99 = np.percentile(seconds, 50) * 1e3, np.percentile(seconds, 99) * 1e3
    return f"| {name} | {p50:.3f} | {p99:.3f} | {BATCH / np.mean(seconds):,.0f} |"


def row_group_decode_ms(path: str, rows: int, sizes: tuple[int, ...]) -> list[tuple[int, float]]:
    """Time ``ParquetFile.read_row_group`` on a copy of one segment rewritten with row groups of each size."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the segment files go")
    args = parser.parse_args()
    rows = args.rows
    raw = sum(c.row_size * c.np_dtype.itemsize for c in COLUMNS)
    rng = np.random.default_rng(0)

    memory = Table(TableConfig("real", rows, COLUMNS))
    memory_insert = fill(memory, rows, rng)

    directory = tempfile.mkdtemp(prefix="cold-replay-", dir=args.dir)
    try:
        in_memory, on_disk = rows // 10, rows - rows // 10
        config = TableConfig("real", in_memory, COLUMNS, disk_capacity=on_disk)
        cold = ColdTier(directory, "real", COLUMNS, on_disk, recover=False)
        tiered = Table(config, cold)
        tiered_insert = fill(tiered, rows + cold.segment_rows, rng)  # one extra segment: the cold tier is full
        stats = tiered.stats()
        assert tiered.size == rows and stats["disk_rows"] + stats["staged_rows"] == on_disk, stats

        results = [
            row(f"all {rows:,} rows in memory", latencies(memory, 2000)),
            row("10% in memory, 90% on disk, page cache warm", latencies(tiered, 2000)),
            row("10% in memory, 90% on disk, page cache dropped before each batch",
                latencies(tiered, 30, before=lambda: drop_page_cache(tiered))),
        ]
        segment = list_segments(directory)[0][1]
        decode = row_group_decode_ms(segment, cold.segment_rows, (1024, 16384))

        print(f"rows {rows:,} ({raw} raw bytes each), batch {BATCH}, segment {cold.segment_rows:,} rows, "
              f"{stats['disk_files']} segment files\n")
        print("| sample of 256 rows | p50 ms | p99 ms | rows/s |")
        print("| --- | ---: | ---: | ---: |")
        print("\n".join(results))
        print()
        print(f"- insert, chunks of {CHUNK}: all in memory {memory_insert:,.0f} rows/s; 90% on disk "
              f"{tiered_insert:,.0f} rows/s (segment files written in the insert call: no write-behind here)")
        files = [path for _, path in list_segments(directory)]
        file_rows = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        file_bytes = sum(os.path.getsize(path) for path in files)
        print(f"- disk: {file_bytes / file_rows:.1f} bytes per row in segment files ({file_bytes / 2**20:,.1f} MiB "
              f"for {file_rows:,} rows, {stats['disk_rows']:,} of them live; raw {raw} bytes)")
        ring = in_memory * raw / 2**20
        staged = cold.segment_rows * raw / 2**20
        print(f"- memory of the rows: all in memory {rows * raw / 2**20:,.0f} MiB; tiered {ring:,.0f} MiB ring + "
              f"at most {staged:,.0f} MiB staged segment")
        for size, ms in decode:
            print(f"- pyarrow read_row_group of {size:,} rows (the decode alternative): {ms:.2f} ms per row group")
        cold.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
