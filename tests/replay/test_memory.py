"""Memory per stored row (issue 3): a full table keeps within 10% of the raw bytes of its rows' fields.

Bytes are counted, not timed: every numpy array reachable from a full :class:`replay.table.Table` of HalfCheetah-sized
rows (obs 17 and action 6 float32: 206 bytes of fields), divided by its capacity. The capacities are the default
config's rows per shard of table ``real`` and the benchmark's.
"""

import gc

import numpy as np
import pytest

from replay.config import ReplayConfig
from replay.table import Table
from system.bench.replay import chunk_source, columns, raw_row_bytes, reachable_numpy_bytes, table_config, table_memory

DEFAULT_SHARD_CAPACITY = ReplayConfig().shard_capacity(ReplayConfig().real_capacity)


def test_raw_bytes_of_a_halfcheetah_row():
    # obs + next_obs, action, reward, terminated + truncated, five int64 columns
    assert raw_row_bytes(columns()) == 2 * 17 * 4 + 6 * 4 + 4 + 2 * 1 + 5 * 8 == 206


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
@pytest.mark.parametrize("capacity", sorted({DEFAULT_SHARD_CAPACITY, 1_000_000}))
def test_memory_per_stored_row_is_within_ten_percent_of_the_raw_field_bytes(sampler, capacity):
    report = table_memory(sampler, capacity)
    gc.collect()
    assert report.raw_bytes_per_row == 206
    assert report.bytes_per_row >= report.raw_bytes_per_row
    assert report.overhead <= 0.10, (
        f"{sampler} table of {capacity:,} rows: {report.bytes_per_row:.1f} bytes per row for "
        f"{report.raw_bytes_per_row} bytes of fields ({report.overhead:+.1%})"
    )


def test_the_count_includes_every_column_and_the_sum_tree():
    capacity = 5000
    tables = {sampler: Table(table_config(sampler, capacity, persist=False)) for sampler in ("uniform", "prioritized")}
    next_chunk = chunk_source(1000)
    for _ in range(capacity // 1000):
        chunk = next_chunk()
        for table in tables.values():
            table.insert(chunk)
    uniform, prioritized = (reachable_numpy_bytes(t) for t in tables.values())
    assert uniform == capacity * 206
    tree = tables["prioritized"]._sampler.tree.tree
    assert prioritized - uniform == tree.nbytes == 2 * 8192 * 8


def test_views_count_once_and_containers_are_followed():
    base = np.zeros(100, dtype=np.float64)

    class Holder:
        __slots__ = ("arrays", "view")

        def __init__(self):
            self.arrays = {"a": [base, (base[10:],)], "b": np.ones(3, dtype=np.int8)}
            self.view = base[::2]

    assert reachable_numpy_bytes(Holder()) == 800 + 3
