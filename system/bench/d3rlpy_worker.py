"""Trains one d3rlpy algorithm on a dataset and exports its greedy policy; run by ``dynaray bench offline`` with the
Python of d3rlpy's own virtual environment (d3rlpy 2.8 pins gymnasium 1.0.0, dynaray another version).

    PYTHON -m system.bench.d3rlpy_worker --data DATA.npz --algo iql|td3bc|cql --steps N --seed S --out POLICY.pt

Imports only numpy, torch and d3rlpy (never dynaray), so it runs in a venv that has only those. ``DATA.npz`` holds
the dataset's rows in episode order (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``: the
last row of every episode has one of the two flags). The algorithms take the settings of d3rlpy's own
``reproductions/offline`` scripts for the D4RL MuJoCo tasks. ``POLICY.pt`` is TorchScript (``save_policy``:
observation in, the deterministic action out, scalers included), which the bench evaluates in dynaray's env.
"""

from __future__ import annotations

import argparse
import json
import time

ALGOS = ("iql", "td3bc", "cql")


def make_algo(name: str):
    """The d3rlpy algorithm ``name`` with its reproduction settings (batch 256, learning rates 3e-4)."""
    import d3rlpy

    if name == "iql":
        return d3rlpy.algos.IQLConfig(
            actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256, weight_temp=3.0, max_weight=100.0,
            expectile=0.7, reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
        ).create(device="cpu:0")
    if name == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256, target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5, alpha=2.5, update_actor_interval=2,
            observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        ).create(device="cpu:0")
    return d3rlpy.algos.CQLConfig(
        actor_learning_rate=1e-4, critic_learning_rate=3e-4, temp_learning_rate=1e-4, actor_encoder_factory=
        d3rlpy.models.encoders.VectorEncoderFactory([256, 256, 256]), critic_encoder_factory=
        d3rlpy.models.encoders.VectorEncoderFactory([256, 256, 256]), batch_size=256, n_action_samples=10,
        alpha_learning_rate=0.0, conservative_weight=5.0,
    ).create(device="cpu:0")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import d3rlpy
    import numpy as np
    import torch

    torch.set_num_threads(1)
    d3rlpy.seed(args.seed)
    arrays = np.load(args.data)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"], actions=arrays["actions"], rewards=arrays["rewards"],
        terminals=arrays["terminals"], timeouts=arrays["timeouts"])
    algo = make_algo(args.algo)
    start = time.monotonic()
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=min(args.steps, 1000), save_interval=10 ** 9,
             show_progress=False, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    seconds = time.monotonic() - start
    algo.save_policy(args.out)
    # the exported policy must act as the trained one does (scalers included), or the bench would evaluate another
    probe = arrays["observations"][:: max(1, len(arrays["observations"]) // 64)]
    with torch.no_grad():
        exported = torch.jit.load(args.out)(torch.as_tensor(probe)).numpy()
    gap = float(np.abs(exported - algo.predict(probe)).max())
    if gap > 1e-4:
        raise SystemExit(f"{args.out}: the exported policy's actions differ from the trained one's by {gap:g}; "
                         "expected <= 1e-4")
    print(json.dumps({"algo": args.algo, "steps": args.steps, "seed": args.seed, "train_s": seconds, "export_gap": gap,
                      "d3rlpy": d3rlpy.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
