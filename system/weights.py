"""Versioned weights: published once, fetched only when newer.

Usage::

    store = WeightsStore()                                # a Ray actor in a real run
    publisher = WeightsPublisher(store_handle, "policy", local=False)
    publisher.publish(learner.policy_state())             # one ray.put, version += 1

    client = WeightsClient(store_handle, "policy", local=False)
    while acting:
        new = client.poll()                               # never blocks on the store
        if new is not None:
            policy.load_state(new)                        # client.version is the acting version
"""

from __future__ import annotations

import time
from typing import Any

from replay.handles import get, put, wait


class WeightsStore:
    """Holds the newest ``(version, [ref])`` per name; the ref lives in the object store, not here."""

    def __init__(self):
        self._latest: dict[str, tuple[int, list]] = {}

    def publish(self, name: str, version: int, ref_box: list) -> None:
        """Record ``ref_box[0]`` (boxed so Ray passes the ref, not the value) as ``name``'s newest weights."""
        current = self._latest.get(name)
        if current is None or version > current[0]:
            self._latest[name] = (version, ref_box)

    def latest(self, name: str, newer_than: int = -1) -> tuple[int, list] | None:
        """The newest ``(version, [ref])`` if it is newer than ``newer_than``, else None."""
        current = self._latest.get(name)
        if current is None or current[0] <= newer_than:
            return None
        return current

    def versions(self) -> dict[str, int]:
        return {name: version for name, (version, _) in self._latest.items()}


class WeightsPublisher:
    """Publishes a learner's weights: each call is one ``put`` and a new version."""

    def __init__(self, store: Any, name: str, local: bool):
        self._store, self._name, self._local = store, name, local
        self.version = 0
        self.latest_box: list | None = None

    def continue_after(self, version: int) -> None:
        """Number the next publication above ``version`` and above the store's current version of this name (a
        learner restored from a checkpoint, or restarted by Ray, never publishes a version acting roles had)."""
        current = get(self._store.versions.remote()).get(self._name, 0)
        self.version = max(self.version, int(version), int(current))

    def publish(self, state: Any) -> int:
        self.version += 1
        self.latest_box = [put(state, self._local)]
        self._store.publish.remote(self._name, self.version, self.latest_box)
        return self.version


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
        answer, self._pending = get(self._pending), None
        if answer is None:
            return None
        version, ref_box = answer
        state = get(ref_box[0])
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
