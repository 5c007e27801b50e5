"""Environment construction and the spaces contract every role relies on.

An env is named by a registered gymnasium id (``InvertedPendulum-v5``) or by ``module:Class`` for a class that
implements the gymnasium API. Vector envs reset finished slots in the same step (``AutoresetMode.SAME_STEP``), so
the true final observation of an episode is in ``info["final_obs"]`` and no transition crosses an episode boundary.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv


class EnvError(ValueError):
    """An env that cannot be made, or whose spaces the system cannot handle."""


def _id_problem(env_id: Any) -> str | None:
    """``env.id``'s check: only its form; whether it names an env is found when one is made (:func:`make_env`)."""
    return None if isinstance(env_id, str) and env_id else "a gymnasium id or 'module:Class'"


@dataclass(frozen=True)
class EnvConfig:
    """The env every role makes. ``metadata["check"]`` declares a field's constraint (checked by ``system.config``)."""

    id: str = field(default="InvertedPendulum-v5", metadata={"check": _id_problem})
    """A registered gymnasium id, or ``module:Class`` for a class implementing the gymnasium API."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the env constructor."""
    max_episode_steps: int | None = field(default=None, metadata={"check": ">= 1"})
    """Time limit; None keeps the env's registered limit."""


@dataclass(frozen=True)
class EnvSpec:
    """What the learners need to know of an env: shapes and action bounds."""

    obs_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    action_low: np.ndarray
    action_high: np.ndarray

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.obs_shape))

    @property
    def action_dim(self) -> int:
        return int(np.prod(self.action_shape))


def _load_class(path: str) -> Callable[..., gym.Env]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvError(f"env.id={path!r}: cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise EnvError(f"env.id={path!r}: module {module_name!r} has no attribute {attr!r}") from None


def _unknown_id_error(env_id: str) -> EnvError:
    known = sorted(gym.registry.keys())
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
    hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
            else "; expected a registered gymnasium id or 'module:Class'")
    return EnvError(f"env.id={env_id!r} is not a registered gymnasium env{hint}")


def make_env(config: EnvConfig) -> gym.Env:
    """Make one env from config; raises :class:`EnvError` with close matches for an unknown id."""
    kwargs = dict(config.kwargs)
    if ":" in config.id:
        try:
            env = _load_class(config.id)(**kwargs)
        except TypeError as exc:
            raise EnvError(f"env.kwargs={kwargs!r} do not fit {config.id!r}: {exc}") from None
        if not isinstance(env, gym.Env):
            raise EnvError(f"env.id={config.id!r}: expected a gymnasium.Env, got {type(env).__name__}")
        if config.max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, config.max_episode_steps)
        return env
    if config.id not in gym.registry:
        raise _unknown_id_error(config.id)
    if config.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.max_episode_steps
    try:
        return gym.make(config.id, **kwargs)
    except gym.error.Error as exc:
        raise EnvError(f"env.id={config.id!r}: {exc}") from None
    except TypeError as exc:
        raise EnvError(f"env.kwargs={dict(config.kwargs)!r} do not fit {config.id!r}: {exc}") from None


def make_vector_env(config: EnvConfig, num_envs: int, mode: str = "sync") -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies that resets finished slots in the same step."""
    fns = [lambda: make_env(config) for _ in range(num_envs)]
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    if mode == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    raise ValueError(f"rollout.vector_mode={mode!r}: expected 'sync' or 'async'")


def env_spec(env: gym.Env) -> EnvSpec:
    """Check the spaces (Box observations, bounded Box actions) and return their shapes and bounds."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise EnvError(f"observation space {obs_space} is not supported: expected a gymnasium.spaces.Box")
    if not isinstance(act_space, gym.spaces.Box):
        raise EnvError(f"action space {act_space} is not supported: SAC needs a bounded continuous Box action space")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise EnvError(f"action space {act_space} is unbounded: SAC needs finite low and high bounds")
    return EnvSpec(
        obs_shape=tuple(obs_space.shape),
        action_shape=tuple(act_space.shape),
        action_low=np.asarray(act_space.low, dtype=np.float32),
        action_high=np.asarray(act_space.high, dtype=np.float32),
    )


def probe_env(config: EnvConfig) -> EnvSpec:
    """Make the env once, validate its spaces, close it: run before any actor starts."""
    env = make_env(config)
    try:
        return env_spec(env)
    finally:
        env.close()
