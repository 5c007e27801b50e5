"""A stand-in robot: drives a gymnasium env outside Ray through a run's ingest gateway.

It does what a real robot's controller would: fetch the policy (TorchScript run with plain torch, or ONNX run with
ONNX Runtime), act with it for an episode, send the episode to the gateway (which stores it in the run's ``real``
replay table), and fetch the policy again whenever the gateway has a newer version. Start a run with the gateway
on (docs/gateway.md), then::

    export DYNARAY_GATEWAY_TOKEN=...            # the run's gateway token (or --token-file, mode 0600)
    python examples/gateway_robot.py --url http://127.0.0.1:8765 --episodes 20
    python examples/gateway_robot.py --url https://gateway.example.org:8765 --ca-file gateway.pem --format onnx

The token is never an argument: command lines are visible to every user of the machine (``ps``).

The loop::

    policy, spec = fetch_policy(url, token)
    for each episode:
        episode = run_episode(env, policy)          # obs, action, reward, next_obs, terminated, truncated
        send_episode(url, token, episode, policy_version=spec["policy"]["version"])
        if fetch_spec(url, token)["policy"]["version"] != spec["policy"]["version"]:
            policy, spec = fetch_policy(url, token)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import gymnasium as gym
import numpy as np

from actors.gateway_client import GatewayError, fetch_policy, fetch_policy_bytes, fetch_spec, load_token, send_episode

TOKEN_ENV = "DYNARAY_GATEWAY_TOKEN"
Policy = Callable[[np.ndarray], np.ndarray]
"""obs (O,) float32 -> action (A,) float32 in env units."""


def load_policy(url: str, token: str, policy_format: str = "torchscript", ca_file: str | None = None
                ) -> tuple[Policy, dict]:
    """The newest policy as a function of one observation, and the spec (with the policy's version)."""
    if policy_format == "onnx":
        import onnxruntime

        model, version = fetch_policy_bytes(url, token, "onnx", ca_file=ca_file)
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        spec = fetch_spec(url, token, ca_file=ca_file)
        spec["policy"]["version"] = version
        return lambda obs: session.run(None, {"obs": np.asarray(obs, np.float32).reshape(1, -1)})[0][0], spec
    import torch

    module, spec = fetch_policy(url, token, ca_file=ca_file)

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))[0].numpy()

    return act, spec


def wait_for_policy(url: str, token: str, timeout_s: float, policy_format: str = "torchscript",
                    ca_file: str | None = None) -> tuple[Policy, dict]:
    """Fetch the policy, retrying while the gateway answers 503 (no policy published yet) for ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return load_policy(url, token, policy_format, ca_file)
        except GatewayError as exc:
            if exc.status != 503 or time.monotonic() > deadline:
                raise
            print(f"waiting for the first policy: {exc.error}", file=sys.stderr)
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def check_spaces(env: gym.Env, spec: dict) -> None:
    """Fail early, naming both sides, when the env does not match the run's spaces."""
    env_obs, env_action = list(env.observation_space.shape), list(env.action_space.shape)
    if env_obs != spec["observation"]["shape"] or env_action != spec["action"]["shape"]:
        raise SystemExit(
            f"env spaces obs {env_obs}, action {env_action} do not match the gateway's obs "
            f"{spec['observation']['shape']}, action {spec['action']['shape']}: use the run's env (--env)"
        )


def run_episode(
    env: gym.Env, policy: Policy, spec: dict, noise: float, rng: np.random.Generator, seed: int
) -> dict[str, np.ndarray]:
    """One episode with the policy (plus Gaussian exploration noise scaled to the action range), one row per step."""
    low = np.asarray(spec["action"]["low"], dtype=np.float32)
    high = np.asarray(spec["action"]["high"], dtype=np.float32)
    rows: dict[str, list] = {name: [] for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated")}
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        action = np.asarray(policy(obs), dtype=np.float32)
        if noise > 0:
            action = np.clip(action + noise * (high - low) / 2 * rng.standard_normal(action.shape), low, high)
        action = action.astype(np.float32).reshape(env.action_space.shape)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for name, value in (("obs", obs), ("action", action), ("reward", reward), ("next_obs", next_obs),
                            ("terminated", terminated), ("truncated", truncated)):
            rows[name].append(value)
        obs, done = next_obs, terminated or truncated
    return {name: np.asarray(values) for name, values in rows.items()}


def run_robot(
    url: str,
    token: str,
    episodes: int,
    env_id: str = "InvertedPendulum-v5",
    max_episode_steps: int | None = None,
    noise: float = 0.1,
    seed: int = 0,
    wait_s: float = 600.0,
    policy_format: str = "torchscript",
    ca_file: str | None = None,
) -> list[dict]:
    """Run ``episodes`` episodes through the gateway; returns the gateway's answer to each upload."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    rng = np.random.default_rng(seed)
    answers = []
    try:
        policy, spec = wait_for_policy(url, token, wait_s, policy_format, ca_file)
        check_spaces(env, spec)
        version = spec["policy"]["version"]
        for i in range(episodes):
            episode = run_episode(env, policy, spec, noise, rng, seed + i)
            answer = send_episode(url, token, episode, policy_version=version, ca_file=ca_file)
            answers.append(answer)
            print(f"episode {i}: {answer['rows']} steps, return {float(episode['reward'].sum()):.1f}, policy "
                  f"v{version}, stored as episode {answer['episode_id']}")
            if fetch_spec(url, token, ca_file=ca_file)["policy"]["version"] != version:
                policy, spec = load_policy(url, token, policy_format, ca_file)
                version = spec["policy"]["version"]
                print(f"new policy v{version}")
    finally:
        env.close()
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:8765")
    parser.add_argument("--token-file", default=None,
                        help=f"file holding the bearer token, mode 0600 (default: ${TOKEN_ENV})")
    parser.add_argument("--ca-file", default=None,
                        help="PEM certificate(s) to verify an https:// gateway with (a private CA, or the gateway's "
                             "self-signed certificate; default: the system's CAs)")
    parser.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                        help="policy format: torchscript (runs with torch) or onnx (runs with onnxruntime)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run and send")
    parser.add_argument("--env", default="InvertedPendulum-v5", help="gymnasium env id (the run's env)")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="time limit (default: the env's)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="std of Gaussian exploration noise, as a fraction of half the action range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the first policy")
    args = parser.parse_args(argv)
    try:
        token = load_token(args.token_file)
    except (OSError, ValueError) as exc:
        parser.error(f"{exc} (--token-file, or ${TOKEN_ENV})")
    if args.episodes < 1:
        parser.error(f"--episodes={args.episodes}: expected an integer >= 1")
    try:
        run_robot(args.url, token, args.episodes, args.env, args.max_episode_steps, args.noise, args.seed,
                  args.wait, args.format, args.ca_file)
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
