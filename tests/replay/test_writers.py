import numpy as np
import pytest

from replay.writers import episode_id, new_writer_id, writer_index, writer_role


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
