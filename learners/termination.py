"""Known termination functions for the world model (``world_model.termination_fn: "module:function"``).

A termination function takes numpy arrays ``obs`` (N, O), ``action`` (N, A) and ``next_obs`` (N, O) and returns a
bool array (N,): True where the env would end the episode (MDP termination, not a time limit). When one is
configured, imagination uses it instead of the learned termination head. The functions here match the
gymnasium MuJoCo v5 envs with their default arguments (positions excluded from the observation, terminate when
unhealthy); an env made with other ``healthy_*`` arguments needs a function of its own.

Dimensions: N rows, O obs dim, A action dim.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

TerminationFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def load_termination_fn(path: str, key: str = "world_model.termination_fn") -> TerminationFn:
    """Import ``"module:function"``; a ValueError names ``key``, the value and what went wrong."""
    module_name, sep, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise ValueError(f"{key}={path!r}: expected 'module:function', e.g. 'learners.termination:hopper'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{key}={path!r}: cannot import module {module_name!r} ({err})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"{key}={path!r}: module {module_name!r} has no function {attr!r}")
    return function


def never(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Envs that never terminate (HalfCheetah, Pendulum, Swimmer)."""
    return np.zeros(len(next_obs), dtype=bool)


def inverted_pendulum(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """InvertedPendulum-v5: the pole angle ``next_obs[:, 1]`` leaves [-0.2, 0.2], or the observation is not finite."""
    return ~np.isfinite(next_obs).all(axis=1) | (np.abs(next_obs[:, 1]) > 0.2)


def hopper(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Hopper-v5: unhealthy when the height ``next_obs[:, 0]`` is not above 0.7, the torso angle ``next_obs[:, 1]``
    not inside (-0.2, 0.2), or an element of ``next_obs[:, 1:]`` not inside (-100, 100)."""
    with np.errstate(invalid="ignore"):
        height, angle = next_obs[:, 0], next_obs[:, 1]
        healthy = (
            np.isfinite(next_obs).all(axis=1)
            & (np.abs(next_obs[:, 1:]) < 100.0).all(axis=1)
            & (height > 0.7)
            & (np.abs(angle) < 0.2)
        )
    return ~healthy


def walker2d(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Walker2d-v5: unhealthy when the height ``next_obs[:, 0]`` is not inside (0.8, 2.0) or the torso angle
    ``next_obs[:, 1]`` not inside (-1, 1)."""
    with np.errstate(invalid="ignore"):
        height, angle = next_obs[:, 0], next_obs[:, 1]
        healthy = np.isfinite(next_obs).all(axis=1) & (height > 0.8) & (height < 2.0) & (np.abs(angle) < 1.0)
    return ~healthy
