import numpy as np
import pytest

from replay.writers import RowStamper, episode_id, new_writer_id, writer_index, writer_role


def test_writer_ids_encode_role_and_index_and_differ_per_incarnation():
    a, b = new_writer_id("rollout", 7), new_writer_id("rollout", 7)
    assert a != b  # fresh random incarnations (equal with probability 2**-23)
    assert writer_index(a) == 7 and writer_role(a) == "rollout"
    g = new_writer_id("gateway", 4095, incarnation=(1 << 23) - 1)
    assert writer_role(g) == "gateway" and writer_index(g) == 4095 and g < 1 << 39


def test_episode_ids_fit_int64_and_are_unique_per_writer():
    w = new_writer_id("imagination", 3, incarnation=(1 << 23) - 1)
    ids = episode_id(w, np.arange(1000, dtype=np.int64))
    assert ids.dtype == np.int64 and (ids > 0).all() and len(set(ids.tolist())) == 1000
    assert episode_id(w, 5) != episode_id(new_writer_id("imagination", 3, incarnation=0), 5)


@pytest.mark.parametrize("args, match", [(("robot", 0), "unknown writer role 'robot'"),
                                         (("rollout", 4096), "writer index 4096 out of range")])
def test_bad_writer_ids(args, match):
    with pytest.raises(ValueError, match=match):
        new_writer_id(*args)


def test_a_row_stamper_numbers_rows_and_episodes_of_one_writer():
    stamper = RowStamper("rollout", 5, incarnation=9)
    assert stamper.writer_id == new_writer_id("rollout", 5, incarnation=9)
    assert stamper.start_episodes(3).tolist() == [episode_id(stamper.writer_id, n) for n in range(3)]
    assert stamper.start_episodes(1).tolist() == [episode_id(stamper.writer_id, 3)]

    first = stamper.stamp({"reward": np.zeros(4, np.float32)})
    second = stamper.stamp({"reward": np.zeros(2, np.float32)}, policy_version=7)
    assert first["seq"].tolist() == [0, 1, 2, 3] and second["seq"].tolist() == [4, 5]
    assert first["writer_id"].tolist() == [stamper.writer_id] * 4 and "policy_version" not in first
    assert second["policy_version"].tolist() == [7, 7] and second["seq"].dtype == np.int64


def test_a_row_stamper_stamps_a_whole_episode():
    stamper = RowStamper("gateway", 0, incarnation=1)
    stamper.stamp({"reward": np.zeros(5, np.float32)})
    episode = stamper.episode({"reward": np.zeros(3, np.float32)}, policy_version=np.array([-1, 0, 2], np.int32))
    assert episode["episode_id"].tolist() == [episode_id(stamper.writer_id, 0)] * 3
    assert episode["step"].tolist() == [0, 1, 2] and episode["seq"].tolist() == [5, 6, 7]
    assert episode["policy_version"].tolist() == [-1, 0, 2] and episode["policy_version"].dtype == np.int64
    assert stamper.episode({"reward": np.zeros(1, np.float32)}, -1)["episode_id"][0] == episode_id(stamper.writer_id, 1)


def test_an_episode_stamped_again_gets_the_same_stamps_and_a_taken_back_one_frees_its_ids():
    stamper = RowStamper("gateway", 0, incarnation=2)
    first = stamper.episode({"reward": np.zeros(4, np.float32)}, policy_version=-1)
    stamper.episode({"reward": np.zeros(2, np.float32)}, policy_version=-1)
    again = stamper.episode_again({"reward": np.ones(4, np.float32)}, -1, int(first["episode_id"][0]),
                                  int(first["seq"][0]))
    for name in ("episode_id", "step", "writer_id", "seq", "policy_version"):
        np.testing.assert_array_equal(again[name], first[name])
    assert (stamper.episodes, stamper.seq) == (2, 6)
    last = stamper.episode({"reward": np.zeros(3, np.float32)}, policy_version=-1)
    stamper.take_back(3)
    retried = stamper.episode({"reward": np.zeros(5, np.float32)}, policy_version=-1)
    assert retried["episode_id"][0] == last["episode_id"][0] and retried["seq"][0] == last["seq"][0] == 6
