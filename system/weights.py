"""Versioned weights: published once, fetched only when newer.

Usage::

    store = WeightsStore()                                # a Ray actor in a real run
    publisher = WeightsPublisher(store_handle, "policy")
    publisher.publish(learner.policy_state())             # one call to the store, version += 1

    client = WeightsClient(store_handle, "policy")
    while acting:
        new = client.poll()                               # never blocks on the store
        if new is not None:
            policy.load_state(new)                        # client.version is the acting version

The weights travel by value: the publisher sends them in its ``publish`` call, the store keeps the newest of each
name in its own memory, and a reader's ``latest`` answer carries them. No object is ``ray.put`` per publication:
Ray 2.60 keeps about 1 KB in the owner's process for every object it put and lent to another actor, which never
comes back, so a policy learner publishing 13 times a second grew about 20 MB an hour (docs/benchmarks.md, Soak).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from replay.handles import get, is_lost, wait

STORE_CHECK_S = 2.0
"""Least seconds between a publisher's checks that the store still holds its newest version."""


class WeightsStore:
    """Holds the newest ``(version, weights)`` per name, the weights themselves (one copy per name)."""

    def __init__(self, metrics: Callable[[Callable[[], dict[str, Any]]], Any] | None = None):
        self._latest: dict[str, tuple[int, Any]] = {}
        self._publishes: dict[str, int] = {}
        self._polls = 0
        self._metrics = metrics(self.stats) if metrics is not None else None  # reads stats() on its own thread

    def publish(self, name: str, version: int, weights: Any) -> None:
        """Record ``weights`` (the value, e.g. a state dict of CPU tensors) as ``name``'s newest, unless the store
        holds a newer version."""
        self._publishes[name] = self._publishes.get(name, 0) + 1
        current = self._latest.get(name)
        if current is None or version > current[0]:
            self._latest[name] = (version, weights)

    def latest(self, name: str, newer_than: int = -1) -> tuple[int, Any] | None:
        """The newest ``(version, weights)`` if it is newer than ``newer_than``, else None."""
        self._polls += 1
        current = self._latest.get(name)
        if current is None or current[0] <= newer_than:
            return None
        return current

    def versions(self) -> dict[str, int]:
        return {name: version for name, (version, _) in self._latest.items()}

    def stats(self) -> dict[str, Any]:
        """Versions held, publishes received per name, and ``latest`` calls answered, since this process started."""
        return {"versions": self.versions(), "publishes": dict(self._publishes), "polls": self._polls}


class WeightsPublisher:
    """Publishes a learner's weights: each call sends them to the store under a new version."""

    def __init__(self, store: Any, name: str):
        self._store, self._name = store, name
        self.version = 0
        self.latest: Any = None
        """The newest weights published (None before the first), sent again if a restarted store lost them."""
        self.republished = 0
        """Times the newest weights were published again because the store had lost them (it restarted)."""
        self._check: Any = None
        self._check_version = 0
        self._checked_at = time.monotonic()

    def continue_after(self, version: int) -> None:
        """Number the next publication above ``version`` and above the store's current version of this name (a
        learner restored from a checkpoint, or restarted by Ray, never publishes a version acting roles had)."""
        current = get(self._store.versions.remote()).get(self._name, 0)
        self.version = max(self.version, int(version), int(current))

    def publish(self, state: Any) -> int:
        if self.latest is None:  # the first publish of this process: continue from the store's version
            self.version = max(self.version, self._stored_version())
        self.version += 1
        self.latest = state
        self._store.publish.remote(self._name, self.version, state)
        self.check()
        return self.version

    def _stored_version(self) -> int:
        try:
            return get(self._store.versions.remote(), timeout=30).get(self._name, 0)
        except Exception as exc:  # the store restarting or gone: its versions are lost with it anyway
            if not (is_lost(exc) or isinstance(exc, TimeoutError)):
                raise
            return 0

    def check(self) -> None:
        """Publish the newest weights again if the store lost them (checked at most every ``STORE_CHECK_S``,
        never waiting on the store: the answer is read at a later call)."""
        if self._check is not None:
            ready, _ = wait([self._check], timeout=0)
            if not ready:
                return
            try:
                stored = get(self._check).get(self._name, 0)
            except Exception as exc:  # the store is restarting: ask again at the next check
                if not is_lost(exc):
                    raise
                stored = None
            self._check = None
            if stored is not None and stored < self._check_version and self.latest is not None:
                self._store.publish.remote(self._name, self.version, self.latest)
                self.republished += 1
        elif time.monotonic() - self._checked_at >= STORE_CHECK_S:
            self._checked_at = time.monotonic()
            self._check, self._check_version = self._store.versions.remote(), self.version


class WeightsClient:
    """Polls the store without blocking; fetches weights only for a newer version."""

    def __init__(self, store: Any, name: str):
        self._store, self._name = store, name
        self.version = -1
        self._pending = None

    def poll(self) -> Any | None:
        """Return newer weights if the store has answered with some, else None; never waits on the store."""
        if self._pending is None:
            self._pending = self._store.latest.remote(self._name, self.version)
        ready, _ = wait([self._pending], timeout=0)
        if not ready:
            return None
        pending, self._pending = self._pending, None
        try:
            answer = get(pending)
            if answer is None:
                return None
            version, state = answer
        except Exception as exc:  # the store restarting: poll again next time
            if not is_lost(exc):
                raise
            return None
        self.version = version
        return state

    def wait_first(self, timeout: float) -> Any | None:
        """Block up to ``timeout`` seconds for the first weights (used where nothing can run without them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.poll()
            if state is not None:
                return state
            time.sleep(0.05)
        return None
