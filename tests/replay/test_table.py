import numpy as np
import pytest

from replay import RateLimiterConfig, SchemaError, Table, TableConfig
from replay.table import FifoRemover
from tests.replay.helpers import COLUMNS, make_chunk, table_config


def _stored_seqs(table: Table) -> np.ndarray:
    return table.gather(table.ordered_slots())["seq"]


def test_ring_buffer_keeps_newest_rows_in_fifo_order():
    table = Table(table_config(capacity=10))
    seq = 0
    for n in (3, 4, 5, 6, 1, 9):
        table.insert(make_chunk(n, start_seq=seq))
        seq += n
        expected = np.arange(max(0, seq - 10), seq)
        np.testing.assert_array_equal(_stored_seqs(table), expected)
        assert table.size == len(expected)
        assert table.inserted == seq
        assert table.evicted == seq - table.size
    rows = table.gather(table.ordered_slots())
    np.testing.assert_array_equal(rows["obs"][:, 0], np.arange(seq - 10, seq))
    np.testing.assert_array_equal(rows["truncated"], np.arange(seq - 10, seq) % 10 == 9)


def test_chunk_larger_than_capacity_keeps_newest_rows():
    table = Table(table_config(capacity=8))
    table.insert(make_chunk(5))
    table.insert(make_chunk(20, start_seq=5))
    np.testing.assert_array_equal(_stored_seqs(table), np.arange(17, 25))
    assert (table.size, table.inserted, table.evicted) == (8, 25, 17)


def test_insert_casts_and_rejects_bad_chunks_without_storing():
    table = Table(table_config(capacity=8))
    chunk = make_chunk(2)
    chunk["obs"] = chunk["obs"].astype(np.float64) + 0.5
    table.insert(chunk)
    assert table.gather(np.array([0]))["obs"].dtype == np.float32
    bad = make_chunk(2, start_seq=2)
    bad["reward"][1] = np.inf
    with pytest.raises(SchemaError):
        table.insert(bad)
    assert table.size == 2 and table.inserted == 2


def test_uniform_sampling_covers_all_rows():
    table = Table(table_config(capacity=50))
    table.insert(make_chunk(80))
    rng = np.random.default_rng(0)
    idx = table.sample_indices(20_000, rng)
    seqs = table.gather(idx)["seq"]
    counts = np.bincount(seqs - 30, minlength=50)
    assert counts.size == 50 and counts.min() > 0
    assert counts.max() < 2 * counts.mean()


def test_sampling_an_empty_table_raises():
    with pytest.raises(ValueError, match="empty table"):
        Table(table_config()).sample_indices(1, np.random.default_rng(0))


def test_fifo_remover_runs_and_evictions():
    remover = FifoRemover(5)
    assert remover.allocate(3) == (((0, 3),), 0)
    assert remover.allocate(4) == (((3, 5), (0, 2)), 2)
    np.testing.assert_array_equal(remover.ordered_slots(), [2, 3, 4, 0, 1])
    with pytest.raises(ValueError, match="cannot allocate 6 slots in a table of capacity 5"):
        remover.allocate(6)


def test_table_config_validation():
    with pytest.raises(ValueError, match="capacity must be an int >= 1, got 0"):
        TableConfig("real", 0, COLUMNS)
    with pytest.raises(ValueError, match="duplicate column names"):
        TableConfig("real", 10, COLUMNS + COLUMNS[:1])
    lim = RateLimiterConfig(1.0, 1, 10.0)
    with pytest.raises(ValueError, match="duplicate consumer names"):
        TableConfig("real", 10, COLUMNS, (("a", lim), ("a", lim)))
    cfg = TableConfig("real", 10, list(COLUMNS), {"a": lim})
    assert cfg.limiters == (("a", lim),) and isinstance(cfg.columns, tuple)
