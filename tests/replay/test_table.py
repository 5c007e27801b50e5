import numpy as np
import pytest

from replay import RateLimiterConfig, SchemaError, Table, TableConfig
from replay.removers import FifoRemover
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


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _live_keys(table: Table) -> np.ndarray:
    keys = np.arange(table.oldest_key, table.inserted)
    return keys[table.slots_of(keys)[1]]


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_max_times_sampled_removes_a_row_after_its_samples(sampler):
    table = Table(TableConfig("real", 100, COLUMNS, sampler=sampler, max_times_sampled=3))
    table.insert(make_chunk(40))
    rng = np.random.default_rng(0)
    seen = np.zeros(40, dtype=np.int64)
    removed = set()
    while table.can_sample(7):
        batch = table.sample(7, rng, with_keys=True)
        assert not removed & set(batch["key"].tolist())  # a removed row never comes back
        np.testing.assert_array_equal(batch["seq"], batch["key"])
        np.add.at(seen, batch["key"], 1)
        assert seen.max() <= 3
        removed |= set(table.last_removed.tolist())
        assert removed == set(np.flatnonzero(seen == 3).tolist())
        assert table.size == 40 - len(removed) and table.removed == len(removed)
        np.testing.assert_array_equal(_live_keys(table), np.flatnonzero(seen < 3))
    assert table.stats()["size"] + table.stats()["evicted"] == 40 and table.evicted == table.removed
    # 120 samples in all: the last call can only take what is left
    left = 120 - seen.sum()
    assert 0 < left < 7 and not table.can_sample(left + 1)
    with pytest.raises(ValueError, match=rf"cannot sample 7 rows: its \d+ live rows have {left} samples left"):
        table.sample(7, rng)
    table.sample(int(left), rng)
    assert table.size == 0 and table.removed == 40 and (seen.sum() + left) == 120
    empty = r"cannot sample 1 rows: its 0 live rows have 0 samples left \(max_times_sampled=3\)"
    with pytest.raises(ValueError, match=empty):
        table.sample(1, rng)


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_a_batch_holds_a_row_at_most_as_often_as_it_has_samples_left(sampler):
    table = Table(TableConfig("real", 16, COLUMNS, sampler=sampler, max_times_sampled=1))
    table.insert(make_chunk(10))
    batch = table.sample(10, np.random.default_rng(3), with_keys=True)
    assert sorted(batch["key"].tolist()) == list(range(10))  # drawn with replacement, but each row only once
    assert table.size == 0 and sorted(table.last_removed.tolist()) == list(range(10))
    table = Table(TableConfig("real", 16, COLUMNS, sampler=sampler, max_times_sampled=4))
    table.insert(make_chunk(5))
    keys = table.sample(20, np.random.default_rng(4), with_keys=True)["key"]
    assert np.bincount(keys, minlength=5).tolist() == [4] * 5


def test_max_times_sampled_uniform_frequencies_of_the_remaining_rows():
    table = Table(TableConfig("real", 60, COLUMNS, max_times_sampled=1_000_000))
    table.insert(make_chunk(50))
    removed = np.arange(0, 50, 3)
    assert table.set_times_sampled(removed, np.full(len(removed), -1)) == len(removed)
    rng = np.random.default_rng(5)
    keys = np.concatenate([table.sample(500, rng, with_keys=True)["key"] for _ in range(60)])
    counts = np.bincount(keys, minlength=50)
    assert counts[removed].sum() == 0
    remaining = np.setdiff1d(np.arange(50), removed)
    # 32 degrees of freedom: chi-square 99.9th percentile is 62.5
    assert _chi_square(counts[remaining], np.full(len(remaining), 1 / len(remaining))) < 62.5
    # rows removed by sampling itself: the rows left stay uniform
    table = Table(TableConfig("real", 60, COLUMNS, max_times_sampled=1))
    table.insert(make_chunk(60))
    table.sample(30, rng)
    assert table.size == 30 and table.removed == 30


def test_max_times_sampled_prioritized_frequencies_of_the_remaining_rows():
    config = TableConfig(
        "real", 16, COLUMNS, sampler="prioritized", priority_exponent=1.0, importance_exponent=1.0,
        max_times_sampled=1_000_000,
    )
    table = Table(config)
    table.insert(make_chunk(12))
    priorities = np.arange(12) % 4 + 1.0
    assert table.update_priorities(np.arange(12), priorities) == 12
    removed = np.array([0, 5, 6, 11])
    table.set_times_sampled(removed, np.full(4, -1))
    np.testing.assert_array_equal(table._sampler.tree.get(removed), 0)  # removed slots weigh nothing
    rng = np.random.default_rng(6)
    batch = table.sample(100_000, rng, with_keys=True)
    counts = np.bincount(batch["key"], minlength=12)
    assert counts[removed].sum() == 0
    remaining = np.setdiff1d(np.arange(12), removed)
    probs = priorities[remaining] / priorities[remaining].sum()
    assert _chi_square(counts[remaining], probs) < 24.3  # 7 dof, 99.9th percentile
    # importance weights (N * P)^-1 over the 8 live rows, normalised by the batch maximum
    expected = 1 / (8 * priorities[batch["key"]] / priorities[remaining].sum())
    np.testing.assert_allclose(batch["weight"], expected / expected.max(), rtol=1e-5)
    # a high-priority row removed by sampling is never drawn again
    small = Table(TableConfig("real", 8, COLUMNS, sampler="prioritized", max_times_sampled=2))
    small.insert(make_chunk(8))
    small.update_priorities(np.array([3]), np.array([1e6]))
    first = small.sample(2, rng, with_keys=True)["key"]
    assert first.tolist() == [3, 3] and small.last_removed.tolist() == [3]
    assert 3 not in small.sample(14, rng, with_keys=True)["key"]


def test_updates_of_removed_keys_are_tolerated():
    table = Table(TableConfig("real", 20, COLUMNS, sampler="prioritized", max_times_sampled=1))
    table.insert(make_chunk(10))
    keys = table.sample(4, np.random.default_rng(7), with_keys=True)["key"]
    live = np.setdiff1d(np.arange(10), keys)
    assert table.update_priorities(np.concatenate([keys, live[:2]]), np.full(6, 9.0)) == 2
    assert table._sampler.max_priority == 9.0
    np.testing.assert_array_equal(table._sampler.tree.get(table.slots_of(keys)[0]), 0)
    with pytest.raises(KeyError, match="are not stored"):
        table.priorities(keys)
    assert table.set_times_sampled(keys, np.zeros(4)) == 0  # a removed row stays removed
    assert table.size == 6
    uniform = Table(TableConfig("real", 20, COLUMNS, max_times_sampled=1))
    uniform.insert(make_chunk(5))
    keys = uniform.sample(5, np.random.default_rng(8), with_keys=True)["key"]
    assert uniform.update_priorities(keys, np.ones(5)) == 0


def test_removed_rows_keep_their_slots_until_fifo_reaches_them():
    table = Table(TableConfig("real", 10, COLUMNS, max_times_sampled=1))
    table.insert(make_chunk(10))
    table.set_times_sampled(np.array([1, 2, 7]), np.full(3, -1))
    assert table.size == 7 and table.memory_size == 10
    table.insert(make_chunk(4, start_seq=10))  # overwrites the slots of keys 0..3: 0 and 3 were live
    np.testing.assert_array_equal(_live_keys(table), [4, 5, 6, 8, 9, 10, 11, 12, 13])
    assert (table.size, table.removed, table.evicted) == (9, 3, 5)
    np.testing.assert_array_equal(table.times_sampled(), [0, 0, 0, -1, 0, 0, 0, 0, 0, 0])
    rng = np.random.default_rng(9)
    keys = table.sample(9, rng, with_keys=True)["key"]
    assert sorted(keys.tolist()) == [4, 5, 6, 8, 9, 10, 11, 12, 13]
    table.insert(make_chunk(3, start_seq=14))
    np.testing.assert_array_equal(_live_keys(table), [14, 15, 16])
    assert table.size == 3 and table.inserted == table.size + table.evicted


def test_max_times_sampled_and_non_finite_config_errors():
    with pytest.raises(ValueError, match=r"max_times_sampled must be an int in \[0, 2\*\*31 - 1\) .*got -1"):
        TableConfig("real", 10, COLUMNS, max_times_sampled=-1)
    with pytest.raises(ValueError, match="max_times_sampled must be an int .*got 1.5"):
        TableConfig("real", 10, COLUMNS, max_times_sampled=1.5)
    with pytest.raises(
        ValueError, match="max_times_sampled > 0 needs disk_capacity=0, got max_times_sampled=2 and disk_capacity=100"
    ):
        TableConfig("real", 10, COLUMNS, max_times_sampled=2, disk_capacity=100)
    with pytest.raises(ValueError, match=r"non_finite must be one of \('reject', 'drop'\), got 'skip'"):
        TableConfig("real", 10, COLUMNS, non_finite="skip")
    table = Table(TableConfig("real", 10, COLUMNS, max_times_sampled=2))
    table.insert(make_chunk(5))
    with pytest.raises(ValueError, match="sequence sampling is not supported on a table with max_times_sampled > 0"):
        table.sample_sequences(1, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_times_sampled=2, so every draw must be counted; use sample"):
        table.sample_indices(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_times_sampled=0 and counts no samples"):
        Table(table_config()).set_times_sampled(np.array([0]), np.array([1]))


def test_non_finite_drop_keeps_the_finite_rows_and_counts_the_others():
    table = Table(TableConfig("real", 20, COLUMNS, non_finite="drop"))
    chunk = make_chunk(8)
    chunk["obs"][1, 2] = np.nan
    chunk["reward"][3] = np.inf
    chunk["next_obs"][5, 0] = -np.inf
    chunk["reward"] = chunk["reward"].astype(np.float64)
    chunk["reward"][6] = 1e300  # finite in float64, inf in the table's float32
    assert table.insert(chunk) == 4
    np.testing.assert_array_equal(_stored_seqs(table), [0, 2, 4, 7])
    assert table.keys_of(table.ordered_slots()).tolist() == [0, 1, 2, 3]  # dropped rows get no key
    assert table.stats()["dropped_non_finite"] == 4 and table.inserted == 4
    nothing = make_chunk(2, start_seq=8)
    nothing["obs"][:, 0] = np.nan
    assert table.insert(nothing) == 0 and table.size == 4 and table.dropped_non_finite == 6
    wrong = make_chunk(2)
    wrong["obs"][0, 0] = np.nan
    wrong["action"] = np.zeros((2, 3), np.float32)  # every other check still applies
    with pytest.raises(SchemaError, match=r"column 'action': expected shape \(N, 2\), got \(2, 3\)"):
        table.insert(wrong)
    rejecting = Table(table_config())
    with pytest.raises(SchemaError, match=r"column 'obs': non-finite values .* in 1 row\(s\), first at row 1"):
        rejecting.insert(chunk)
    assert rejecting.size == 0 and rejecting.stats()["dropped_non_finite"] == 0


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
def test_max_times_sampled_bookkeeping_stays_consistent(sampler):
    table = Table(TableConfig("real", 64, COLUMNS, sampler=sampler, max_times_sampled=3))
    rng = np.random.default_rng(10)
    seq = 0
    for _ in range(300):
        action = rng.integers(3)
        if action == 0:
            n = int(rng.integers(1, 40))
            table.insert(make_chunk(n, start_seq=seq))
            seq += n
        elif action == 1 and table.can_sample(16):
            table.sample(16, rng)
        elif action == 2 and table.size:
            keys = rng.choice(_live_keys(table), size=min(3, table.size), replace=False)
            table.set_times_sampled(keys, rng.integers(-1, 4, size=len(keys)))
        counter = table._counter
        live = counter.live[: counter.count]
        counts = counter.counts[table.ordered_slots()]
        assert sorted(live.tolist()) == sorted(table.slots_of(_live_keys(table))[0].tolist())
        np.testing.assert_array_equal(counter.position[live], np.arange(counter.count))
        assert counter.budget == int((3 - counts[counts < 3]).sum())
        assert table.size == int((counts < 3).sum()) and table.inserted == table.size + table.evicted
        if sampler == "prioritized":
            tree = table._sampler.tree.get(np.arange(64))
            assert (tree[counter.counts >= 3] == 0).all() and (tree[live] > 0).all()
