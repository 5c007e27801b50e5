"""Benchmark: per-component costs in one process, one torch thread (what each actor does per call).

    python -m tests.benchmarks.components

Prints a Markdown table: SAC update, world-model update, imagination step, replay shard insert and sample.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from learners.sac import PolicyConfig, Policy, SACLearner
from learners.world_model import WorldModel, WorldModelConfig, WorldModelLearner
from replay.schema import transition_columns
from replay.shard import ReplayShard
from replay.table import TableConfig

OBS, ACT = 17, 6  # HalfCheetah-sized rows


def batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "next_obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "terminated": rng.random(n) < 0.01,
        "truncated": np.zeros(n, bool),
        "episode_id": rng.integers(0, 1000, n),
        "step": np.arange(n, dtype=np.int64),
        "policy_version": np.zeros(n, np.int64),
        "writer_id": np.zeros(n, np.int64),
        "seq": np.arange(n, dtype=np.int64),
    }


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    low, high = -np.ones(ACT, np.float32), np.ones(ACT, np.float32)
    rows = []
    for hidden, size in (((64, 64), 128), ((256, 256), 256)):
        sac = SACLearner(OBS, ACT, low, high, PolicyConfig(hidden_sizes=hidden, batch_size=size, device="cpu"))
        b = batch(size, rng)
        rows.append((f"SACLearner.update, hidden {hidden}, batch {size}", timed(lambda: sac.update(b), 100), size))
    wm_config = WorldModelConfig(device="cpu")
    wm = WorldModelLearner(OBS, ACT, wm_config)
    b = batch(256, rng)
    rows.append(("WorldModelLearner.update, 7 x (200,)*4, batch 256", timed(lambda: wm.update(b), 30), 256))
    model, policy = WorldModel(OBS, ACT, wm_config), Policy(OBS, ACT, low, high, (256, 256))
    model.load_state(wm.model_state())
    obs = torch.randn(1024, OBS)
    rows.append(("imagination step (policy + WorldModel.step), 1024 rows",
                 timed(lambda: model.step(obs, policy.act_tensor(obs)), 30), 1024))
    columns = transition_columns((OBS,), (ACT,))
    shard = ReplayShard([TableConfig("real", 500_000, columns)])
    chunks = [batch(64, rng) for _ in range(200)]
    written = 0

    def insert() -> None:
        nonlocal written
        chunk = dict(chunks[written % len(chunks)])
        chunk["seq"] = np.arange(64 * written, 64 * (written + 1), dtype=np.int64)  # new dedup key each call
        shard.insert("real", chunk, 0)
        written += 1

    rows.append(("ReplayShard.insert, 64-row chunks", timed(insert, 2000), 64))
    rows.append(("ReplayShard.sample, 256 rows", timed(lambda: shard.sample("real", 256), 2000), 256))

    print("| component | time per call | rows/s |")
    print("| --- | --- | --- |")
    for name, seconds, n in rows:
        print(f"| {name} | {seconds * 1e3:.2f} ms | {n / seconds:,.0f} |")


if __name__ == "__main__":
    main()
