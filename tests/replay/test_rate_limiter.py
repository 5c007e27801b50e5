import numpy as np
import pytest

from replay import RateLimiterConfig, ReplayShard
from replay.rate_limiter import RateLimiter
from tests.replay.helpers import make_chunk, table_config


def test_config_validation_names_field_and_value():
    with pytest.raises(ValueError, match=r"samples_per_insert must be a finite number > 0, got 0"):
        RateLimiterConfig(0, 1, 1.0)
    with pytest.raises(ValueError, match=r"min_size must be an int >= 1, got 0"):
        RateLimiterConfig(1.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"error_buffer must be a finite number >= 0, got -1"):
        RateLimiterConfig(1.0, 1, -1)


def test_warm_up_inserts_are_free_and_sampling_waits_for_min_size():
    limiter = RateLimiter(RateLimiterConfig(samples_per_insert=2.0, min_size=100, error_buffer=10.0))
    for _ in range(9):
        assert limiter.can_insert(10)
        assert not limiter.can_sample(1)
        limiter.on_insert(10)
    assert limiter.inserted == 90 and not limiter.can_sample(1)
    assert limiter.can_insert(10)  # the insert that completes warm-up is free too
    limiter.on_insert(10)
    assert limiter.can_sample(10) and not limiter.can_sample(11)
    assert limiter.can_insert(5) and not limiter.can_insert(6)
    limiter.on_sample(10)
    assert limiter.lag == -10
    assert limiter.can_insert(10) and not limiter.can_insert(11) and not limiter.can_sample(1)


def test_crossing_warm_up_with_a_large_chunk_never_deadlocks():
    limiter = RateLimiter(RateLimiterConfig(samples_per_insert=1.0, min_size=10, error_buffer=4.0))
    limiter.on_insert(8)
    assert limiter.can_insert(6)
    limiter.on_insert(6)
    assert limiter.lag == 4 and limiter.can_sample(8)


def test_impossible_call_sizes_raise():
    limiter = RateLimiter(RateLimiterConfig(samples_per_insert=4.0, min_size=1, error_buffer=100.0), name="policy")
    limiter.check_insert(50)
    with pytest.raises(ValueError, match=r"insert of 51 rows can never be admitted by consumer 'policy'.*204.*200"):
        limiter.check_insert(51)
    limiter.check_sample(200)
    with pytest.raises(ValueError, match=r"sample of 201 rows can never be admitted for consumer 'policy'"):
        limiter.check_sample(201)
    shard = ReplayShard([table_config(limiters={"policy": limiter.config})])
    with pytest.raises(ValueError, match="insert of 64 rows can never be admitted"):
        shard.insert("real", make_chunk(64), writer_id=0)
    with pytest.raises(ValueError, match="sample of 256 rows can never be admitted"):
        shard.sample("real", 256, consumer="policy")
    assert shard.size("real") == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratio_holds_over_random_interleaving_through_shard(seed):
    spi, min_size, eb = 2.0, 50, 40.0
    shard = ReplayShard([table_config(capacity=300, limiters={"learner": RateLimiterConfig(spi, min_size, eb)})])
    rng = np.random.default_rng(seed)
    inserted = sampled = seq = 0
    for _ in range(3000):
        if rng.random() < 0.5:
            n = int(rng.integers(1, 21))  # n * spi <= eb
            ack = shard.insert("real", make_chunk(n, start_seq=seq), writer_id=0)
            if ack["status"] == "ok":
                inserted += n
                seq += n
            else:
                assert ack["status"] == "not_now" and ack["blocked_by"] == "learner"
        else:
            m = int(rng.integers(1, 41))  # m <= eb
            batch = shard.sample("real", m, consumer="learner")
            if batch is not None:
                assert len(batch["seq"]) == m
                sampled += m
            else:
                assert inserted < min_size or spi * (inserted - min_size) - sampled - m < -eb
        if inserted >= min_size:
            assert -eb <= spi * (inserted - min_size) - sampled <= eb
    stats = shard.stats()["real"]
    assert stats["inserted"] == inserted and stats["consumers"]["learner"]["sampled"] == sampled
    assert inserted > 1000
    assert abs(sampled / (inserted - min_size) - spi) < 0.1
