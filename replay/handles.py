"""One calling convention for in-process objects and Ray actors.

Clients (replay, weights) are written once against ``handle.method.remote(...)`` and the four functions
below. On Ray, handles are actor handles and refs are ``ray.ObjectRef``; in process (unit tests,
debugging), :class:`LocalHandle` runs the method at once and returns a :class:`LocalRef` holding the
result. Nothing here imports Ray unless a Ray ref is actually passed in.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence


class LocalRef:
    """An already computed result, standing in for a ``ray.ObjectRef`` in process."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value = value
        self.error = error


class _LocalMethod:
    __slots__ = ("_fn",)

    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args, **kwargs) -> LocalRef:
        # as Ray does, a ref passed as an argument itself (not inside a container) arrives as its value
        refs = [a for a in (*args, *kwargs.values()) if isinstance(a, LocalRef)]
        failed = next((r.error for r in refs if r.error is not None), None)
        if failed is not None:
            return LocalRef(error=failed)
        if refs:
            args = tuple(a.value if isinstance(a, LocalRef) else a for a in args)
            kwargs = {k: v.value if isinstance(v, LocalRef) else v for k, v in kwargs.items()}
        try:
            return LocalRef(self._fn(*args, **kwargs))
        except Exception as exc:  # surfaced by get(), as Ray would
            return LocalRef(error=exc)


class LocalHandle:
    """Wraps a plain object so that ``handle.method.remote(*args)`` calls ``obj.method(*args)`` now."""

    def __init__(self, obj: Any):
        self._obj = obj

    @property
    def wrapped(self) -> Any:
        return self._obj

    def __getattr__(self, name: str) -> _LocalMethod:
        return _LocalMethod(getattr(self._obj, name))


def _is_local(ref: Any) -> bool:
    return isinstance(ref, LocalRef)


def put(value: Any, local: bool) -> Any:
    """Store ``value`` once: ``ray.put`` on Ray, a :class:`LocalRef` in process."""
    if local:
        return LocalRef(value)
    import ray

    return ray.put(value)


def get(refs: Any, timeout: float | None = None) -> Any:
    """Resolve one ref or a list of refs (``ray.get`` semantics, errors re-raised)."""
    if isinstance(refs, list):
        if all(_is_local(r) for r in refs):
            return [get(r) for r in refs]
    elif _is_local(refs):
        if refs.error is not None:
            raise refs.error
        return refs.value
    import ray

    return ray.get(refs, timeout=timeout)


def wait(refs: Sequence[Any], num_returns: int = 1, timeout: float | None = 0.0) -> tuple[list, list]:
    """Split refs into (ready, not ready) without blocking longer than ``timeout``."""
    refs = list(refs)
    if not refs:
        return [], []
    if all(_is_local(r) for r in refs):
        return refs, []
    import ray

    return ray.wait(refs, num_returns=min(num_returns, len(refs)), timeout=timeout)


def is_actor_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the actor behind a call died or is restarting (Ray only: never true in process).

    Such a call may or may not have run; a caller that retries it must make the retry harmless (the replay
    shards deduplicate inserts by writer id and sequence number for this).
    """
    exceptions = sys.modules.get("ray.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.RayActorError)


def is_lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` says a call or an object was lost with a dead process (Ray only: never true in process): the
    actor behind the call died or is restarting (:func:`is_actor_failure`), or the process that owned an object
    (e.g. weights put by a learner whose process died) is gone. Retrying later, with a newer object, can succeed."""
    exceptions = sys.modules.get("ray.exceptions")
    return exceptions is not None and isinstance(exc, (exceptions.RayActorError, exceptions.ObjectLostError))
