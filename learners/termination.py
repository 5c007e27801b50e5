"""Known termination functions for the world model (``world_model.termination_fn``).

``world_model.termination_fn`` is ``"auto"`` (the default: the function :data:`KNOWN` lists for the env id when the
env is made with its default arguments, else the learned termination head; :func:`resolve_termination_fn`),
``None`` (the learned head) or ``"module:function"``. A termination function takes numpy arrays ``obs`` (N, O),
``action`` (N, A) and ``next_obs`` (N, O) and returns a bool array (N,): True where the env would end the episode
(MDP termination, not a time limit). When one is configured, imagination uses it instead of the learned termination
head. The functions here match the gymnasium MuJoCo v5 envs with their default arguments (positions excluded from
the observation, terminate when unhealthy); an env made with other ``healthy_*`` arguments needs a function of its
own.

Dimensions: N rows, O obs dim, A action dim.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import numpy as np

TerminationFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

AUTO = "auto"
"""``world_model.termination_fn`` value that picks the function by env id (:func:`resolve_termination_fn`)."""

KNOWN: dict[str, str] = {
    "InvertedPendulum-v5": "learners.termination:inverted_pendulum",
    "Hopper-v5": "learners.termination:hopper",
    "Walker2d-v5": "learners.termination:walker2d",
    "HalfCheetah-v5": "learners.termination:never",
    "Swimmer-v5": "learners.termination:never",
    "Pendulum-v1": "learners.termination:never",
}
"""Env id -> its termination function, for envs made with their default arguments (``env.kwargs`` empty)."""


def resolve_termination_fn(setting: str | None, env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> str | None:
    """What ``world_model.termination_fn = setting`` means for env ``env_id`` made with ``env_kwargs``.

    ``"auto"``: the :data:`KNOWN` function of the env id when there are no env kwargs (other ``healthy_*``
    arguments, say, change when the env terminates), else None (the learned head). Anything else is returned as is.
    """
    if setting != AUTO:
        return setting
    return None if env_kwargs else KNOWN.get(env_id)


def _split(path: Any) -> tuple[str, str]:
    module_name, sep, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    return (module_name, attr) if sep and module_name and attr else ("", "")


def termination_fn_problem(setting: Any) -> str | None:
    """What a ``world_model.termination_fn`` value should have been (None: it is fine): ``"auto"``, None, or an
    importable ``"module:function"``."""
    if setting is None or setting == AUTO:
        return None
    module_name, attr = _split(setting)
    if not module_name:
        return "'module:function' (e.g. 'learners.termination:hopper'), 'auto' or null (the learned head)"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        return f"an importable 'module:function': cannot import module {module_name!r} ({err})"
    if not callable(getattr(module, attr, None)):
        return f"an importable 'module:function': module {module_name!r} has no function {attr!r}"
    return None


def load_termination_fn(path: str, key: str = "world_model.termination_fn") -> TerminationFn:
    """Import ``"module:function"``; a ValueError names ``key``, the value and what was expected."""
    if path is None or path == AUTO:
        raise ValueError(f"{key}={path!r}: expected a 'module:function' ('auto' and null are resolved before loading)")
    problem = termination_fn_problem(path)
    if problem:
        raise ValueError(f"{key}={path!r}: expected {problem}")
    module_name, attr = _split(path)
    return getattr(importlib.import_module(module_name), attr)


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
