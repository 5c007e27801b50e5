"""Chunk and table builders shared by the replay tests."""

from __future__ import annotations

import os

import numpy as np

from replay import RateLimiterConfig, ReplayShard, TableConfig, transition_columns

OBS_DIM = 4
ACTION_DIM = 2
COLUMNS = transition_columns((OBS_DIM,), (ACTION_DIM,))
CHUNK = 8
"""Rows per chunk of :func:`fill`."""


def make_chunk(n: int, start_seq: int = 0, writer_id: int = 0, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM):
    """A valid transition chunk of ``n`` rows; ``obs[:, 0]`` and ``seq`` both count from ``start_seq``."""
    seq = np.arange(start_seq, start_seq + n, dtype=np.int64)
    obs = np.zeros((n, obs_dim), dtype=np.float32)
    obs[:, 0] = seq
    return {
        "obs": obs,
        "action": np.ones((n, action_dim), dtype=np.float32),
        "reward": seq.astype(np.float32),
        "next_obs": obs + 1,
        "terminated": np.zeros(n, dtype=bool),
        "truncated": seq % 10 == 9,
        "episode_id": seq // 10,
        "step": seq % 10,
        "policy_version": np.full(n, -1, dtype=np.int64),
        "writer_id": np.full(n, writer_id, dtype=np.int64),
        "seq": seq,
    }


def table_config(
    capacity: int = 1000,
    limiters: dict[str, RateLimiterConfig] | None = None,
    name: str = "real",
    columns=COLUMNS,
) -> TableConfig:
    return TableConfig(name, capacity, columns, tuple((limiters or {}).items()))


# ---- persisted tables, for export, import and inspection ----------------------------------------------------------


def persisted(capacity=1000, sampler="uniform", every=0, columns=COLUMNS):
    return TableConfig(
        "real", capacity, columns, sampler=sampler, persist=True, snapshot_every_inserts=every, priority_exponent=0.5
    )


def fill(shard, chunks, writer_id, start_seq=0):
    for i in range(chunks):
        chunk = make_chunk(CHUNK, start_seq=start_seq + i * CHUNK, writer_id=writer_id)
        assert shard.insert("real", chunk, writer_id)["status"] == "ok"


def live_rows(shard):
    """Rows, keys and raw priorities of a shard's table, oldest to newest (under the shard's lock)."""
    state = shard._state("real")
    with state.cond:
        data, inserted, weights, _ = state.table.export()
    keys = np.arange(inserted - len(data["seq"]), inserted)
    priorities = None if weights is None else weights ** (1 / state.table.config.priority_exponent)
    return data, keys, priorities


def files_state(directory):
    """Every file under a directory with its size and modification time."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
    return out


def write_two_shards(directory, sampler="uniform", capacity=1000, every=0, chunks=6):
    """Two live shards with different writers and seq ranges; returns the open shards."""
    shards = []
    for index in range(2):
        shard = ReplayShard([persisted(capacity, sampler, every)], directory=str(directory), index=index)
        fill(shard, chunks, writer_id=index, start_seq=1000 * index)
        shards.append(shard)
    return shards
