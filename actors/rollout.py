"""Rollout workers: step a vector env, write fixed-size chunks of transitions to the ``real`` table.

Actions come from the policy, or, with ``rollout.planner.enabled`` and once a world model has been published, from
an optimistic model-predictive planner over policy proposals (``actors.planner``).

Dimensions: T chunk length (vector steps), N envs per worker, O observation size, A action size.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from actors.envs import EnvConfig, make_vector_env
from actors.metrics import RolloutRecorder
from actors.config import RolloutConfig
from actors.planner import Planner
from replay.writers import RowStamper

logger = logging.getLogger(__name__)

RANDOM_POLICY_VERSION = -1
"""``policy_version`` of rows whose actions were drawn uniformly during warm-up."""


@dataclass(frozen=True)
class RolloutReport:
    """What one :meth:`RolloutWorker.run` call did."""

    index: int
    """The worker's number in its pool."""
    writer_id: int
    """The worker's writer id: a new one tells that Ray restarted the worker."""
    env_steps: int
    """Env steps taken in the call."""
    total_env_steps: int
    """Env steps this worker (this incarnation) took in all its calls."""
    episodes: tuple[tuple[float, int], ...]
    """(return, length) of every episode finished in the call."""
    policy_version: int
    """Version of the policy acting at the end of the call (-1: random warm-up, no policy yet)."""
    env_errors: int
    """Env failures this worker survived in all its calls."""
    planned_steps: int
    """Env steps in the call whose actions the planner chose."""
    seconds: float
    """Wall time of the call."""


class ChunkBuilder:
    """Collects (T, N) vector steps and emits them slot-major, so each env slot's rows stay contiguous."""

    def __init__(self, length: int, num_envs: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...]):
        self.length, self.num_envs = length, num_envs
        shapes = {
            "obs": (obs_shape, np.float32),
            "action": (action_shape, np.float32),
            "reward": ((), np.float32),
            "next_obs": (obs_shape, np.float32),
            "terminated": ((), bool),
            "truncated": ((), bool),
            "episode_id": ((), np.int64),
            "step": ((), np.int64),
            "policy_version": ((), np.int64),
        }
        self._buf = {k: np.zeros((length, num_envs) + s, dtype=d) for k, (s, d) in shapes.items()}
        self.t = 0

    def add(self, **columns: Any) -> None:
        for name, value in columns.items():
            self._buf[name][self.t] = value
        self.t += 1

    @property
    def full(self) -> bool:
        return self.t == self.length

    def take(self) -> dict[str, np.ndarray]:
        """The first ``t`` steps as t * N rows (slot-major), not yet stamped with writer id and seq; resets the
        builder."""
        t, n = self.t, self.num_envs
        chunk = {}
        for name, buf in self._buf.items():
            # one copy, never a view of the buffer: a chunk may be sent again after the buffer is refilled
            rows = np.empty((n, t) + buf.shape[2:], dtype=buf.dtype)
            np.copyto(rows, buf[:t].swapaxes(0, 1))
            chunk[name] = rows.reshape((t * n,) + buf.shape[2:])
        self.t = 0
        return chunk

    def clear(self) -> None:
        """Drop the steps collected so far."""
        self.t = 0


class RolloutWorker:
    """Collects real experience with the newest policy it has.

    Usage (the driver's loop, one call in flight per worker)::

        worker = RolloutWorker(env_config, rollout_config, replay, weights, make_policy, index=0, seed=0)
        while budget_left:
            report = worker.run(config.call_steps)       # env steps, finished episodes, policy version
        worker.flush()                                    # the partial chunk, and every insert acknowledged

    With ``config.planner.enabled`` the worker also needs ``model_weights`` (a client of ``world_model``
    weights, polled without blocking like ``weights``) and ``make_model`` (a ``WorldModel`` factory); it plans
    once both a policy and a model are loaded, and acts with the policy alone until then.

    ``metrics`` makes the worker's Prometheus recorder in its process (``actors.metrics.RolloutRecorder``, the
    default, records nothing).
    """

    def __init__(
        self,
        env_config: EnvConfig,
        config: RolloutConfig,
        replay: Any,
        weights: Any,
        make_policy: Callable[[], Any],
        index: int = 0,
        seed: int = 0,
        model_weights: Any = None,
        make_model: Callable[[], Any] | None = None,
        metrics: Callable[[int], RolloutRecorder] = RolloutRecorder,
    ):
        self.config, self.index = config, index
        self._stamper = RowStamper("rollout", index)
        self.writer_id = self._stamper.writer_id
        self._env_config, self._seed = env_config, seed
        noise = config.exploration_noise
        self._noise = float(noise[index % len(noise)]) if noise else 0.0
        self._rng = np.random.default_rng([seed, index])
        self._replay, self._weights = replay, weights
        self._policy = make_policy()
        self._policy_version = RANDOM_POLICY_VERSION
        self._wait_for_policy = True  # until this worker waited once or took a warm-up step
        self._model_weights = self._model = self._planner = None
        if config.planner.enabled:
            if model_weights is None or make_model is None:
                raise ValueError(
                    f"rollout.planner.enabled=True: expected a RolloutWorker given model_weights and make_model (the "
                    f"world model the planner scores with), got model_weights={model_weights!r}, "
                    f"make_model={make_model!r}"
                )
            self._model_weights, self._model = model_weights, make_model()
            self._planner = Planner(config.planner, self._policy, self._model)
        self.planned_steps = 0
        """Env steps whose actions the planner chose, over this worker's life."""
        share, extra = divmod(config.warmup_steps, config.num_workers)
        self._warmup_left = share + (index < extra)
        self.env_steps = 0
        self._vector_steps = 0  # over the worker's life: polls every weights_poll_steps of them, across run() calls
        self._polled_at = -math.inf  # time.monotonic() of the last poll
        self.env_errors = 0
        self._errors_in_a_row = 0
        self._metrics = metrics(index)  # Prometheus
        self._start_envs()
        self._chunk = ChunkBuilder(config.chunk_length, config.envs_per_worker,
                                   self._env.single_observation_space.shape, self._env.single_action_space.shape)

    def _start_envs(self) -> None:
        """Make the vector env and begin a new episode in every slot."""
        n = self.config.envs_per_worker
        self._env = make_vector_env(self._env_config, n, self.config.vector_mode)
        reseed = self._seed + 7919 * self.env_errors
        self._env.action_space.seed(reseed)
        self._obs, _ = self._env.reset(seed=[reseed + i for i in range(n)])
        self._episode_id = self._stamper.start_episodes(n)
        self._episode_step = np.zeros(n, dtype=np.int64)
        self._episode_return = np.zeros(n, dtype=np.float64)

    def _restart_envs(self, error: str) -> None:
        """After an env failure: drop the unfinished chunk (no episode is stitched to another), make the envs
        afresh and start new episodes; raise once ``max_env_errors_in_a_row`` is passed."""
        self.env_errors += 1
        self._errors_in_a_row += 1
        if self._errors_in_a_row > self.config.max_env_errors_in_a_row:
            raise RuntimeError(
                f"env {self._env_config.id!r} failed {self._errors_in_a_row} times in a row on rollout worker "
                f"{self.index} (rollout.max_env_errors_in_a_row={self.config.max_env_errors_in_a_row}); last: {error}"
            )
        logger.warning("rollout worker %d: env %r failed (%s); dropping the unfinished chunk, making new envs",
                       self.index, self._env_config.id, error)
        self._chunk.clear()
        try:
            self._env.close()
        except Exception:  # the broken env may fail to close too; the new one replaces it either way
            pass
        self._start_envs()

    # acting ---------------------------------------------------------------------------------------------------
    def _refresh_policy(self) -> None:
        """Load newer policy (and, with the planner, world-model) weights if the store has them; blocks only once,
        for the first policy past the warm-up (``first_policy_wait_s``)."""
        state = self._weights.poll()
        if state is None and self._wait_for_policy and self._warmup_left <= 0 \
                and self._policy_version == RANDOM_POLICY_VERSION:
            self._wait_for_policy = False
            state = self._weights.wait_first(self.config.first_policy_wait_s)
        if state is not None:
            self._policy.load_state(state)
            self._policy_version = self._weights.version
        if self._model_weights is not None:
            state = self._model_weights.poll()
            if state is not None:
                self._model.load_state(state)

    def _poll_due(self) -> bool:
        """Whether ``weights_poll_s`` has passed since the last poll (then it counts as made now)."""
        now = time.monotonic()
        if now - self._polled_at < self.config.weights_poll_s:
            return False
        self._polled_at = now
        return True

    def _act(self) -> tuple[np.ndarray, int, bool]:
        """Actions (N, A), the version of the policy that chose them, and whether the planner did."""
        n = self.config.envs_per_worker
        if self._warmup_left > 0 or self._policy_version == RANDOM_POLICY_VERSION:
            self._wait_for_policy &= self._warmup_left <= 0
            self._warmup_left = max(0, self._warmup_left - n)
            return self._env.action_space.sample().astype(np.float32), RANDOM_POLICY_VERSION, False
        planned = self._planner is not None and self._model_weights.version >= 0
        if planned:
            action = self._planner.act(self._obs.astype(np.float32))
        else:
            action = self._policy.act(self._obs.astype(np.float32))
        if self._noise:
            space = self._env.single_action_space
            half_range = (space.high - space.low) / 2
            action = np.clip(action + self._rng.normal(0.0, self._noise, action.shape) * half_range,
                             space.low, space.high).astype(np.float32)
        return action, self._policy_version, planned

    # the loop -------------------------------------------------------------------------------------------------
    def run(self, num_steps: int, random_steps: int | None = None) -> RolloutReport:
        """Take at least ``num_steps`` env steps; return what happened in them.

        ``random_steps``: how many of them act uniformly at random (the driver hands out the run's warm-up this
        way, so that restarted or added workers do not warm up again); None keeps this worker's own share of
        ``warmup_steps``.
        """
        if random_steps is not None:
            self._warmup_left = random_steps
        start, steps, planned_steps = time.perf_counter(), 0, 0
        episodes: list[tuple[float, int]] = []
        while steps < num_steps:
            if self._vector_steps % self.config.weights_poll_steps == 0 and self._poll_due():
                self._refresh_policy()
            action, version, planned = self._act()
            try:
                next_obs, reward, terminated, truncated, info = self._env.step(action)
                done = terminated | truncated
                final_next = next_obs
                if done.any():
                    final_next = next_obs.copy()
                    final_next[done] = np.stack(info["final_obs"][done])
            except Exception as exc:
                self._restart_envs(f"{type(exc).__name__}: {exc}")
                continue
            finite = np.isfinite(next_obs).reshape(len(action), -1).all(axis=1) & np.isfinite(reward)
            if final_next is not next_obs:
                finite &= np.isfinite(final_next).reshape(len(action), -1).all(axis=1)
            if not finite.all():
                self._restart_envs(f"NaN or inf in the observation or reward of env slot(s) "
                                   f"{np.flatnonzero(~finite).tolist()}")
                continue
            self._errors_in_a_row = 0
            self._chunk.add(
                obs=self._obs, action=action, reward=reward, next_obs=final_next,
                terminated=terminated, truncated=truncated, episode_id=self._episode_id,
                step=self._episode_step, policy_version=version,
            )
            self._episode_return += reward
            self._episode_step += 1
            for i in np.flatnonzero(done):
                episodes.append((float(self._episode_return[i]), int(self._episode_step[i])))
                self._episode_id[i] = self._stamper.start_episodes(1)[0]
                self._episode_return[i], self._episode_step[i] = 0.0, 0
            self._obs = next_obs
            if self._chunk.full:
                self._write_chunk()
            steps += len(action)
            planned_steps += len(action) if planned else 0
            self._vector_steps += 1
        self.env_steps += steps
        self.planned_steps += planned_steps
        report = RolloutReport(
            index=self.index,
            writer_id=self.writer_id,
            env_steps=steps,
            total_env_steps=self.env_steps,
            episodes=tuple(episodes),
            policy_version=self._policy_version,
            env_errors=self.env_errors,
            planned_steps=planned_steps,
            seconds=time.perf_counter() - start,
        )
        self._metrics.record(report)
        return report

    def _write_chunk(self) -> None:
        self._replay.insert("real", self._stamper.stamp(self._chunk.take()), self.writer_id)

    def flush(self) -> None:
        """Write the partial chunk and wait until replay has acknowledged everything written so far."""
        if self._chunk.t:
            self._write_chunk()
        self._replay.flush()

    def close(self) -> None:
        """Flush, then close the envs."""
        self.flush()
        self._env.close()
