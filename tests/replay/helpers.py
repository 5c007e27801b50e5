"""Chunk and table builders shared by the replay tests."""

from __future__ import annotations

import numpy as np

from replay import RateLimiterConfig, TableConfig, transition_columns

OBS_DIM = 4
ACTION_DIM = 2
COLUMNS = transition_columns((OBS_DIM,), (ACTION_DIM,))


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
