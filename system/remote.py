"""A role as a Ray actor: the class Ray runs, and the arguments built where the actor lives.

This module is all an actor's process unpickles besides its role's own module: it imports neither torch nor the
wiring (:mod:`system.wiring`, which imports every role), so a replay shard, the weights store and the control actor
start without torch (about 2.5 s of one core less each at every start and restart, and torch's memory).
"""

from __future__ import annotations

import inspect
from typing import Any


class ActorName:
    """An actor of the run passed by its name, resolved with ``ray.get_actor`` in the process that builds the role
    (Ray restarts an actor by running its constructor again with the same arguments: arguments that hold actor
    handles or object refs would pin them in the object store; a name finds the actor as it is now)."""

    def __init__(self, name: str):
        self.name = name

    def resolve(self) -> Any:
        import ray

        return ray.get_actor(self.name)  # in the run's namespace: every actor of the run is made in it


class InActor:
    """An argument built where the role lives (clients hold locks and in-flight state: they do not travel)."""

    def __init__(self, factory, *args, **kwargs):
        self.factory, self.args, self.kwargs = factory, args, kwargs

    def build(self) -> Any:
        args, kwargs = built(self.args, self.kwargs)
        return self.factory(*args, **kwargs)


def _resolved(value: Any) -> Any:
    """``value`` with every :class:`InActor` built and every :class:`ActorName` resolved (in lists too)."""
    if isinstance(value, InActor):
        return value.build()
    if isinstance(value, ActorName):
        return value.resolve()
    if isinstance(value, (list, tuple)) and any(isinstance(v, (InActor, ActorName)) for v in value):
        return type(value)(_resolved(v) for v in value)
    return value


def built(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A role's constructor arguments as the role gets them: :class:`InActor` built, :class:`ActorName` resolved."""
    return tuple(_resolved(a) for a in args), {k: _resolved(v) for k, v in kwargs.items()}


def _set_torch_threads(threads: int) -> None:
    """``threads`` intra-op threads for torch, if this process has loaded it (a role that does not use torch never
    loads it)."""
    import sys

    if (torch := sys.modules.get("torch")) is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def without_task_events(method):
    """``method`` as a new function that Ray calls without recording task events (the role's own stays as it is)."""
    import ray

    def call(self, *args, **kwargs):
        return method(self, *args, **kwargs)

    call.__name__, call.__qualname__, call.__doc__ = method.__name__, method.__qualname__, method.__doc__
    call.__signature__ = inspect.signature(method)  # Ray checks calls against the role's signature
    return ray.method(enable_task_events=False)(call)


def remote_class(cls: type, torch_threads: int, heap: tuple[int, float], quiet: tuple[str, ...] = (),
                 quiet_incarnation: bool = True):
    """``cls`` as a Ray actor class whose process uses ``torch_threads`` intra-op threads (if it loads torch) and
    keeps its C heap lean (``heap``: ``ray.malloc_arena_max`` and ``ray.heap_trim_every_s``, :mod:`system.heap`),
    whose methods named in ``quiet`` record no task events, and with one more method, ``dynaray_incarnation() ->
    (token, pid)`` (quiet unless ``quiet_incarnation`` is False): the token is new in each process (the driver counts
    restarts by it and waits on it for a restarted actor to be back), the pid is the process's."""
    import ray

    def __init__(self, *args, **kwargs):
        import os
        import uuid

        from system import heap as process_heap

        _set_torch_threads(torch_threads)  # the role's module is loaded: torch is, if the role uses it
        process_heap.start(*heap)
        self._dynaray_incarnation = (uuid.uuid4().hex, os.getpid())
        args, kwargs = built(args, kwargs)
        cls.__init__(self, *args, **kwargs)
        _set_torch_threads(torch_threads)  # a role that loaded torch only now

    def dynaray_incarnation(self) -> tuple[str, int]:
        return self._dynaray_incarnation

    members = {"__init__": __init__, "dynaray_incarnation": dynaray_incarnation}
    members.update({name: without_task_events(getattr(cls, name)) for name in quiet})
    if quiet_incarnation:  # the driver probes every actor of every role every few seconds
        members["dynaray_incarnation"] = without_task_events(dynaray_incarnation)
    return ray.remote(type(cls.__name__, (cls,), members))
