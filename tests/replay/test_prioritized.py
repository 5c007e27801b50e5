import numpy as np
import pytest

from replay import ReplayClient, ReplayConfig, ReplayShard, Table, TableConfig
from replay.handles import LocalHandle
from replay.samplers import SumTree
from tests.replay.helpers import COLUMNS, make_chunk


def _config(capacity=100, alpha=0.6, beta=0.4, name="real") -> TableConfig:
    return TableConfig(
        name, capacity, COLUMNS, sampler="prioritized", priority_exponent=alpha, importance_exponent=beta
    )


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_sum_tree_sums_and_find():
    tree = SumTree(5)
    assert tree.leaves == 8 and tree.tree.dtype == np.float64
    tree.set_range(0, 5, 1.0)
    tree.set(np.array([1, 3]), np.array([2.0, 0.0]))
    np.testing.assert_array_equal(tree.get(np.arange(8)), [1, 2, 1, 0, 1, 0, 0, 0])
    assert tree.total == 5.0
    for node in range(1, tree.leaves):
        assert tree.tree[node] == tree.tree[2 * node] + tree.tree[2 * node + 1]
    # prefix sums: leaf 0 covers [0, 1), leaf 1 [1, 3), leaf 2 [3, 4), leaf 3 is empty, leaf 4 [4, 5)
    found = tree.find(np.array([0.0, 0.99, 1.0, 2.99, 3.0, 3.99, 4.0, 4.99, 5.0, 7.0]))
    np.testing.assert_array_equal(found, [0, 0, 1, 1, 2, 2, 4, 4, 4, 4])
    one = SumTree(1)
    one.set_range(0, 1, 3.0)
    assert one.total == 3.0 and one.find(np.array([0.0, 2.9])).tolist() == [0, 0]


def test_sampling_frequencies_follow_priority_to_the_alpha():
    table = Table(_config(capacity=8, alpha=0.5))
    table.insert(make_chunk(8))
    priorities = np.array([1.0, 4.0, 9.0, 16.0, 0.0, 1.0, 25.0, 4.0])
    assert table.update_priorities(np.arange(8), priorities) == 8
    idx = table.sample_indices(200_000, np.random.default_rng(0))
    counts = np.bincount(table.keys_of(idx), minlength=8)
    assert counts[4] == 0  # priority 0: never sampled
    nonzero = priorities > 0
    probs = priorities[nonzero] ** 0.5 / (priorities**0.5).sum()
    # 6 degrees of freedom: chi-square 99.9th percentile is 22.5
    assert _chi_square(counts[nonzero], probs) < 22.5


def test_update_priorities_changes_frequencies_and_new_rows_get_max_priority():
    table = Table(_config(capacity=20, alpha=1.0))
    table.insert(make_chunk(10))
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(table.priorities(np.arange(10)), 1.0)
    table.update_priorities(np.array([0, 1]), np.array([0.5, 7.0]))
    counts = np.bincount(table.keys_of(table.sample_indices(100_000, rng)), minlength=10)
    probs = np.array([0.5, 7.0] + [1.0] * 8) / 15.5
    assert _chi_square(counts, probs) < 27.9  # 9 dof, 99.9th percentile
    table.insert(make_chunk(2, start_seq=10))
    np.testing.assert_allclose(table.priorities(np.array([10, 11])), 7.0)  # running max
    table.update_priorities(np.array([1]), np.array([0.1]))
    np.testing.assert_allclose(table.priorities(np.array([1])), 0.1)
    table.insert(make_chunk(1, start_seq=12))
    np.testing.assert_allclose(table.priorities(np.array([12])), 7.0)  # the max does not decrease


def test_evicted_keys_are_ignored_and_unoccupied_slots_hold_zero():
    table = Table(_config(capacity=6, alpha=1.0))
    table.insert(make_chunk(4))
    assert table._sampler.tree.get(np.arange(8)).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    table.insert(make_chunk(5, start_seq=4))  # keys 0..2 evicted; slots 0..2 now hold keys 6..8
    assert table.oldest_key == 3
    slots, stored = table.slots_of(np.array([0, 2, 3, 8, 9]))
    assert stored.tolist() == [False, False, True, True, False]
    assert table.update_priorities(np.array([0, 1, 2, 3, 8, 100]), np.full(6, 5.0)) == 2
    np.testing.assert_allclose(table.priorities(np.arange(3, 9)), [5, 1, 1, 1, 1, 5])
    np.testing.assert_array_equal(table.keys_of(table.ordered_slots()), np.arange(3, 9))
    big = Table(_config(capacity=4))
    big.insert(make_chunk(10))  # keys 0..5 never stored
    np.testing.assert_array_equal(big.keys_of(big.ordered_slots()), [6, 7, 8, 9])
    np.testing.assert_array_equal(big.gather(big.slots_of(np.arange(6, 10))[0])["seq"], [6, 7, 8, 9])


@pytest.mark.parametrize(
    ("priorities", "problem"),
    [
        ([1.0, np.nan, 2.0], r"1 of 3 are not, e.g. priorities\[1\] = nan \(key 1\)"),
        ([1.0, 2.0, -0.5], r"priorities\[2\] = -0.5"),
        ([np.inf, 1.0, 1.0], r"priorities\[0\] = inf"),
    ],
)
def test_bad_priorities_are_rejected_and_nothing_changes(priorities, problem):
    shard = ReplayShard([_config(capacity=10)])
    shard.insert("real", make_chunk(3), writer_id=0)
    before = shard._tables["real"].table.priorities(np.arange(3)).copy()
    with pytest.raises(ValueError, match="finite and >= 0.*" + problem):
        shard.update_priorities("real", np.arange(3), np.array(priorities))
    np.testing.assert_array_equal(shard._tables["real"].table.priorities(np.arange(3)), before)
    with pytest.raises(ValueError, match=r"same length, got shapes \(3,\) and \(2,\)"):
        shard.update_priorities("real", np.arange(3), np.ones(2))


def test_importance_weights_on_a_tiny_table():
    beta = 0.4
    shard = ReplayShard([_config(capacity=4, alpha=1.0, beta=beta)])
    shard.insert("real", make_chunk(4), writer_id=0)
    priorities = np.array([1.0, 2.0, 3.0, 4.0])
    shard.update_priorities("real", np.arange(4), priorities)
    batch = shard.sample("real", 2000, with_keys=True)
    assert batch["key"].dtype == np.int64 and batch["weight"].dtype == np.float32
    np.testing.assert_array_equal(batch["seq"], batch["key"])
    probs = priorities / priorities.sum()
    expected = (4 * probs[batch["key"]]) ** -beta
    np.testing.assert_allclose(batch["weight"], expected / expected.max(), rtol=1e-6)
    assert batch["weight"].max() == 1.0


def test_with_keys_is_opt_in_and_uniform_tables_give_unit_weights():
    uniform = ReplayShard([TableConfig("real", 10, COLUMNS)])
    prioritized = ReplayShard([_config(capacity=10)])
    for shard in (uniform, prioritized):
        shard.insert("real", make_chunk(5), writer_id=0)
        assert set(shard.sample("real", 3)) == {c.name for c in COLUMNS}
        batch = shard.sample("real", 3, with_keys=True)
        assert set(batch) == {c.name for c in COLUMNS} | {"key", "weight"}
        np.testing.assert_array_equal(batch["key"], batch["seq"])
    np.testing.assert_array_equal(uniform.sample("real", 5, with_keys=True)["weight"], np.ones(5, np.float32))
    assert uniform.update_priorities("real", np.arange(5), np.ones(5)) == 0


def test_all_zero_priorities_fall_back_to_uniform():
    table = Table(_config(capacity=4))
    table.insert(make_chunk(3))
    table.update_priorities(np.arange(3), np.zeros(3))
    batch = table.sample(300, np.random.default_rng(0), with_keys=True)
    assert set(batch["key"].tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(batch["weight"], 1.0)


def test_table_config_validates_sampler_settings():
    with pytest.raises(ValueError, match=r"sampler must be one of \('uniform', 'prioritized'\), got 'per'"):
        TableConfig("real", 10, COLUMNS, sampler="per")
    with pytest.raises(ValueError, match="priority_exponent must be a finite number >= 0, got -1"):
        TableConfig("real", 10, COLUMNS, priority_exponent=-1)
    with pytest.raises(ValueError, match=r"importance_exponent must be a number in \[0, 1\], got 1.5"):
        TableConfig("real", 10, COLUMNS, importance_exponent=1.5)


def test_client_routes_keys_to_their_shards():
    shards = [ReplayShard([_config(capacity=50, alpha=1.0)], seed=0, index=i) for i in range(3)]
    config = ReplayConfig(num_shards=3, sample_timeout_s=0.5, insert_timeout_s=0.5)
    client = ReplayClient([LocalHandle(s) for s in shards], config, local=True, seed=0)
    for i, shard in enumerate(shards):
        shard.insert("real", make_chunk(10, start_seq=100 * i), writer_id=0)
    batch = client.sample("real", 60, with_keys=True)
    shard_of = batch["key"] % 3
    np.testing.assert_array_equal(batch["seq"] // 100, shard_of)  # rows of shard i have seq 100 i ..
    np.testing.assert_array_equal(batch["key"] // 3, batch["seq"] % 100)  # .. and local key seq - 100 i
    assert set(client.sample("real", 6)) == {c.name for c in COLUMNS}
    keys = np.array([3 * 4 + 0, 3 * 7 + 2, 3 * 7 + 2, 3 * 1 + 1])
    client.update_priorities("real", keys, np.array([5.0, 2.0, 9.0, 3.0]))
    client.flush_priorities()
    assert shards[0]._tables["real"].table.priorities(np.array([4])).tolist() == [5.0]
    assert shards[2]._tables["real"].table.priorities(np.array([7])).tolist() == [9.0]  # last one wins
    assert shards[1]._tables["real"].table.priorities(np.array([1])).tolist() == [3.0]
    with pytest.raises(ValueError, match=r"priorities\[0\] = -1.0 \(key 0\); nothing was sent"):
        client.update_priorities("real", np.array([0]), np.array([-1.0]))
    with pytest.raises(ValueError, match=r"keys must be >= 0 \(from a with_keys sample\), got keys\[1\] = -3"):
        client.update_priorities("real", np.array([0, -3]), np.ones(2))
    client.update_priorities("nope", np.array([0, 1]), np.ones(2))  # fire and forget: the error comes later
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        client.update_priorities("real", np.array([0]), np.ones(1))
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        client.flush_priorities()
    client.flush_priorities()
    assert client._priority_updates == {}
