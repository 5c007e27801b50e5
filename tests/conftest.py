"""Shared fixtures: fakes for the replay and weights edges, so that roles are tested as plain classes."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

_EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ray`` start Ray, which binds the machine's network address unless it is in a loopback-only
    network namespace: they run only inside one (tests/run.sh enters one and sets DYNARAY_NETNS=1 there)."""
    if os.environ.get("DYNARAY_NETNS") == "1":
        return
    skip = pytest.mark.skip(reason="starts Ray: run inside tests/run.sh (a loopback-only network namespace)")
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest has reported, without the interpreter's teardown.

    Tests start and end Ray in this process several times (tests/replay/test_ray_shards.py, the benches on Ray);
    Ray's C++ threads outlive ``ray.shutdown()`` (its GCS client's io thread, gRPC's), and the teardown of C++
    statics under them crashed this process after every test had passed (a segmentation fault once in CI; Ray
    calls restarting it in one process with threads unsafe, ray-project/ray#31145). A run's own processes (the
    driver, every actor) start Ray once and end normally."""
    if _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


class RecordingReplay:
    """Stands in for ReplayClient on the insert side: keeps every chunk."""

    def __init__(self):
        self.chunks: list[tuple[str, dict, int]] = []
        self.flushed = 0

    def insert(self, table, chunk, writer_id):
        self.chunks.append((table, {k: v.copy() for k, v in chunk.items()}, writer_id))

    def flush(self, timeout=None):
        self.flushed += 1

    def rows(self, table="real") -> dict[str, np.ndarray]:
        chunks = [c for t, c, _ in self.chunks if t == table]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class StaticWeights:
    """Stands in for WeightsClient: hands out one state once (or never)."""

    def __init__(self, state=None, version=0):
        self._state, self._version = state, version
        self.version = -1

    def poll(self):
        if self._state is None or self.version == self._version:
            return None
        self.version = self._version
        return self._state

    def wait_first(self, timeout):
        return self.poll()


@pytest.fixture
def recording_replay():
    return RecordingReplay()
