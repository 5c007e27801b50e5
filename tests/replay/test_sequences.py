import numpy as np
import pytest

from replay import RateLimiterConfig, ReplayClient, ReplayConfig, ReplayShard, ReplayTimeout, Table, TableConfig
from replay.handles import LocalHandle
from replay.schema import transition_columns
from replay.sequences import MAX_CACHED_SEQUENCE_LENGTHS
from tests.replay.helpers import COLUMNS, make_chunk, table_config


class _Writer:
    """Emits slot-major chunks like actors/rollout.py's ChunkBuilder: ``envs`` env slots, short random episodes.

    ``obs[:, 1]`` holds the row's position in the table's insertion order (its key), for checking samples.
    """

    def __init__(self, writer_id: int, envs: int, rng: np.random.Generator):
        self.writer_id, self.rng = writer_id, rng
        self.episode = writer_id * 10_000 + np.arange(envs)
        self.next_episode = writer_id * 10_000 + envs
        self.step = np.zeros(envs, dtype=np.int64)
        self.seq = 0

    def chunk(self, steps: int, first_key: int) -> dict[str, np.ndarray]:
        episode, step = [], []
        for slot in range(len(self.episode)):
            for _ in range(steps):
                episode.append(self.episode[slot])
                step.append(self.step[slot])
                self.step[slot] += 1
                if self.rng.random() < 0.25:  # episode ends: the next row starts a new one
                    self.episode[slot], self.step[slot] = self.next_episode, 0
                    self.next_episode += 1
        n = len(episode)
        chunk = make_chunk(n, start_seq=self.seq, writer_id=self.writer_id)
        self.seq += n
        chunk["episode_id"] = np.array(episode, dtype=np.int64)
        chunk["step"] = np.array(step, dtype=np.int64)
        chunk["obs"][:, 1] = np.arange(first_key, first_key + n)
        return chunk


def _valid_starts(table: Table, length: int) -> set[int]:
    """Keys of valid sequence starts, by brute force over the stored rows in insertion order."""
    rows = table.gather(table.ordered_slots())
    keys = table.oldest_key + np.arange(table.size)
    valid = set()
    for i in range(table.size - length + 1):
        episode, step = rows["episode_id"][i : i + length], rows["step"][i : i + length]
        if (episode == episode[0]).all() and (np.diff(step) == 1).all():
            valid.add(int(keys[i]))
    return valid


def _check_sequences(batch: dict[str, np.ndarray], n: int, length: int) -> None:
    assert batch["obs"].shape == (n, length, 4) and batch["episode_id"].shape == (n, length)
    assert (batch["episode_id"] == batch["episode_id"][:, :1]).all()
    assert (np.diff(batch["step"], axis=1) == 1).all()
    assert (np.diff(batch["obs"][:, :, 1], axis=1) == 1).all()  # consecutive keys: contiguous insertion order


def test_sequences_stay_inside_episodes_and_insertion_runs_across_wraparound():
    rng = np.random.default_rng(0)
    table = Table(table_config(capacity=37))
    writers = [_Writer(0, envs=2, rng=rng), _Writer(1, envs=2, rng=rng)]
    early = (1, 3)
    for length in early:  # indices that exist before any insert are maintained incrementally from the start
        assert table.sequence_starts(length) == 0
    sample_rng = np.random.default_rng(1)
    for round_ in range(60):
        writer = writers[int(rng.integers(2))]
        table.insert(writer.chunk(int(rng.integers(1, 5)), first_key=table.inserted))
        lengths = early + ((2, 4, 5, 6)[round_ % 4],)  # later ones built from the stored rows, some dropped (LRU)
        for length in lengths:
            valid = _valid_starts(table, length)
            assert table.sequence_starts(length) == len(valid)
            batch = table.sample_sequences(64, length, sample_rng)
            if not valid:
                assert batch is None
                continue
            _check_sequences(batch, 64, length)
            assert set(batch["obs"][:, 0, 1].astype(np.int64).tolist()) <= valid
    assert table.evicted > 3 * table.capacity
    assert len(table._sequences) == MAX_CACHED_SEQUENCE_LENGTHS


def test_sampling_covers_every_valid_start_uniformly():
    rng = np.random.default_rng(2)
    table = Table(table_config(capacity=200))
    writers = [_Writer(0, envs=3, rng=rng), _Writer(1, envs=2, rng=rng)]
    for i in range(30):
        table.insert(writers[i % 2].chunk(3, first_key=table.inserted))
    valid = sorted(_valid_starts(table, 3))
    assert 20 < len(valid) < table.size
    batch = table.sample_sequences(40 * len(valid), 3, np.random.default_rng(3))
    starts = batch["obs"][:, 0, 1].astype(np.int64)
    counts = np.array([np.count_nonzero(starts == key) for key in valid])
    assert counts.sum() == len(starts)  # every sample is a valid start, and every valid start is sampled
    assert counts.min() > 10 and counts.max() < 80


def test_never_across_the_write_cursor():
    table = Table(table_config(capacity=4))

    def insert(episode: int, steps: list[int]) -> None:
        chunk = make_chunk(len(steps), start_seq=table.inserted)
        chunk["episode_id"][:] = episode
        chunk["step"] = np.array(steps, dtype=np.int64)
        table.insert(chunk)

    insert(7, [5, 6])
    insert(9, [0])
    insert(7, [4])  # newest row (slot 3) and oldest row (slot 0) look like steps 4, 5 of episode 7
    assert table.sequence_starts(2) == 1  # only keys 0, 1
    batch = table.sample_sequences(10, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["step"], np.tile([5, 6], (10, 1)))
    insert(9, [1])  # evicts key 0: keys 1..4 are steps 6, 0, 4, 1 of episodes 7, 9, 7, 9
    assert table.sequence_starts(2) == 0
    assert table.sample_sequences(1, 2, np.random.default_rng(0)) is None
    assert table.sequence_starts(1) == 4


def test_chunk_larger_than_capacity_and_long_episodes():
    table = Table(table_config(capacity=10))
    table.sequence_starts(4)
    table.insert(make_chunk(5))  # make_chunk: episodes of 10 steps
    table.insert(make_chunk(23, start_seq=5))  # keeps seq 18..27: episode 1 steps 8, 9, episode 2 steps 0..7
    assert table.sequence_starts(4) == 5 and table.sequence_starts(2) == 1 + 7
    assert table.sequence_starts(10) == 0 and table.sequence_starts(8) == 1


def test_shard_sequences_none_rate_limiting_and_errors():
    limiter = RateLimiterConfig(samples_per_insert=1.0, min_size=4, error_buffer=20.0)
    shard = ReplayShard([table_config(capacity=50, limiters={"wm": limiter})])
    assert shard.sample_sequences("real", 2, 3) is None  # empty
    chunk = make_chunk(8)
    chunk["step"][:] = 0  # every row its own one-step episode
    chunk["episode_id"] = np.arange(8)
    shard.insert("real", chunk, writer_id=0)
    assert shard.sample_sequences("real", 2, 2) is None
    assert shard.sample_sequences("real", 2, 1)["obs"].shape == (2, 1, 4)
    shard.insert("real", make_chunk(10, start_seq=10), writer_id=0)  # one episode, steps 0..9
    batch = shard.sample_sequences("real", 3, 4, consumer="wm")
    assert batch["seq"].shape == (3, 4) and (batch["episode_id"] == 1).all()
    assert (np.diff(batch["step"], axis=1) == 1).all() and (np.diff(batch["seq"], axis=1) == 1).all()
    stats = shard.stats()["real"]
    assert stats["consumers"]["wm"]["sampled"] == 12 and stats["sampled"] == 2 + 12
    with pytest.raises(ValueError, match="sample of 50 rows can never be admitted"):
        shard.sample_sequences("real", 10, 5, consumer="wm")  # 50 rows > 2 * error_buffer
    with pytest.raises(ValueError, match=r"sequence length must be an int in \[1, capacity=50\], got 51"):
        shard.sample_sequences("real", 1, 51)
    with pytest.raises(ValueError, match=r"sequence length must be an int in \[1, capacity=50\], got 0"):
        shard.sample_sequences("real", 1, 0)
    flat = TableConfig("flat", 10, tuple(c for c in COLUMNS if c.name != "step"))
    with pytest.raises(ValueError, match="needs scalar integer columns 'episode_id' and 'step'"):
        ReplayShard([flat]).sample_sequences("flat", 1, 2)


def test_client_sequence_sampling_concatenates_shard_parts():
    shards = [ReplayShard([table_config(capacity=100)], seed=0, index=i) for i in range(2)]
    config = ReplayConfig(num_shards=2, sample_timeout_s=0.3, insert_timeout_s=0.3)
    client = ReplayClient([LocalHandle(s) for s in shards], config, local=True, seed=0)
    shards[0].insert("real", make_chunk(30), writer_id=0)
    shards[1].insert("real", make_chunk(30, start_seq=1000), writer_id=0)
    batch = client.sample("real", 40, sequence_length=5)
    assert batch["obs"].shape == (40, 5, 4) and batch["step"].shape == (40, 5)
    assert (np.diff(batch["seq"], axis=1) == 1).all() and (batch["episode_id"] == batch["episode_id"][:, :1]).all()
    assert 10 < (batch["seq"][:, 0] >= 1000).sum() < 30
    short = ReplayShard([table_config(capacity=100)])
    short.insert("real", make_chunk(8), writer_id=0)
    short_client = ReplayClient([LocalHandle(short)], ReplayConfig(num_shards=1, sample_timeout_s=0.05), local=True)
    with pytest.raises(ReplayTimeout, match=r"sample of 2 sequences of 9 rows .*no valid start for a sequence of 9"):
        short_client.sample("real", 2, sequence_length=9)
    with pytest.raises(ValueError, match="with_keys=True is not supported with sequence_length"):
        client.submit_sample("real", 4, with_keys=True, sequence_length=2)
    with pytest.raises(ValueError, match="sequence_length must be >= 1, got 0"):
        client.submit_sample("real", 4, sequence_length=0)


def test_sequences_work_on_prioritized_tables_uniformly():
    config = TableConfig("real", 20, transition_columns((4,), (2,)), sampler="prioritized")
    table = Table(config)
    table.insert(make_chunk(20))
    table.update_priorities(np.arange(10), np.zeros(10))
    batch = table.sample_sequences(500, 3, np.random.default_rng(0))
    assert set(batch["seq"][:, 0].tolist()) == {0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17}
