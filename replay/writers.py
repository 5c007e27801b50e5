"""Writer ids: who wrote a replay row, unique per role, index and process incarnation.

A replay shard deduplicates inserts by ``(writer_id, first seq of the chunk)`` and every writer numbers its rows
from 0. A worker that Ray restarts after a crash starts numbering from 0 again, so each incarnation of a worker
writes under a fresh writer id; otherwise its first chunks would be dropped as duplicates of its predecessor's::

    writer_id  = incarnation << 16 | role << 12 | index        (< 2**39)
    episode_id = writer_id << 24 | (episode counter mod 2**24)  (< 2**63)

``incarnation`` is 23 random bits drawn when the writer starts (two incarnations of one worker collide with
probability 2**-23 per restart); ``role`` tells rollout workers, imagination workers, the ingest gateway and
offline imports apart; ``index`` is the worker's number in its pool. Episode ids are then unique across writers
and incarnations, and within one writer they wrap only after 16.7 million episodes.

:class:`RowStamper` holds one writer's id and counters and stamps its rows; the rollout worker, the imagination
worker and the ingest gateway each own one, so no role writes ``writer_id``, ``seq`` or ``episode_id`` by hand.
"""

from __future__ import annotations

import secrets
from typing import Mapping

import numpy as np

__all__ = ["ROLES", "RowStamper", "episode_id", "new_writer_id", "writer_index", "writer_role"]

ROLES = {"rollout": 0, "imagination": 1, "gateway": 2, "import": 3, "collect": 4}
"""Role numbers of the writers of replay rows."""
INDEX_BITS, ROLE_BITS, INCARNATION_BITS, EPISODE_BITS = 12, 4, 23, 24


def new_writer_id(role: str, index: int, incarnation: int | None = None) -> int:
    """A writer id for worker ``index`` of ``role``; ``incarnation`` defaults to fresh random bits."""
    if role not in ROLES:
        raise ValueError(f"unknown writer role {role!r}; expected one of {sorted(ROLES)}")
    if not 0 <= index < 1 << INDEX_BITS:
        raise ValueError(f"writer index {index} out of range: expected 0 <= index < {1 << INDEX_BITS}")
    if incarnation is None:
        incarnation = secrets.randbits(INCARNATION_BITS)
    if not 0 <= incarnation < 1 << INCARNATION_BITS:
        raise ValueError(f"incarnation {incarnation} out of range: expected 0 <= incarnation < {1 << INCARNATION_BITS}")
    return incarnation << (ROLE_BITS + INDEX_BITS) | ROLES[role] << INDEX_BITS | index


def writer_index(writer_id: int) -> int:
    """The pool index encoded in ``writer_id``."""
    return writer_id & ((1 << INDEX_BITS) - 1)


def writer_role(writer_id: int) -> str:
    """The role name encoded in ``writer_id``."""
    number = (writer_id >> INDEX_BITS) & ((1 << ROLE_BITS) - 1)
    return next(name for name, n in ROLES.items() if n == number)


def episode_id(writer_id: int, counter):
    """Episode id of the ``counter``-th episode a writer started (int, or an int64 array of counters)."""
    return (writer_id << EPISODE_BITS) | (counter & ((1 << EPISODE_BITS) - 1))


class RowStamper:
    """One writer of replay rows: its writer id, the next ``seq`` and the number of episodes it started.

    Usage::

        stamper = RowStamper("rollout", index=3)
        ids = stamper.start_episodes(4)                    # episode ids of 4 new episodes (int64 array)
        chunk = stamper.stamp(columns)                     # + writer_id, + seq continuing from the last chunk
        chunk = stamper.episode(columns, policy_version)   # one whole episode: + episode_id, step, writer_id, seq
        chunk = stamper.episode_again(columns, policy_version, episode_id, first_seq)   # the same stamps again

    Not thread-safe: a writer shared by threads stamps under its own lock.
    """

    def __init__(self, role: str, index: int, incarnation: int | None = None):
        self.writer_id = new_writer_id(role, index, incarnation)
        self.seq = 0
        """``seq`` of the next row stamped (rows are numbered from 0, consecutively)."""
        self.episodes = 0
        """Episodes started so far; the n-th (from 0) has id ``episode_id(writer_id, n)``."""

    def start_episodes(self, n: int) -> np.ndarray:
        """Ids of the next ``n`` episodes (int64, shape (n,)), counted as started."""
        first = self.episodes
        self.episodes += n
        return episode_id(self.writer_id, np.arange(first, first + n, dtype=np.int64))

    def stamp(self, columns: Mapping[str, np.ndarray], policy_version: int | np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
        """``columns`` with ``writer_id`` and the next ``seq`` numbers added (and ``policy_version``, a version for
        every row or one per row, when given); the rows count as written."""
        rows = len(next(iter(columns.values())))
        chunk = dict(columns)
        if policy_version is not None:
            chunk["policy_version"] = np.broadcast_to(np.asarray(policy_version, dtype=np.int64), (rows,)).copy()
        chunk["writer_id"] = np.full(rows, self.writer_id, dtype=np.int64)
        chunk["seq"] = np.arange(self.seq, self.seq + rows, dtype=np.int64)
        self.seq += rows
        return chunk

    def episode(self, columns: Mapping[str, np.ndarray], policy_version: int | np.ndarray) -> dict[str, np.ndarray]:
        """One whole episode's ``columns`` stamped as a new episode (its id, steps 0, 1, ...) and by :meth:`stamp`."""
        rows = len(next(iter(columns.values())))
        (episode,) = self.start_episodes(1)
        stamped = {**columns, "episode_id": np.full(rows, episode, dtype=np.int64),
                   "step": np.arange(rows, dtype=np.int64)}
        return self.stamp(stamped, policy_version)

    def episode_again(self, columns: Mapping[str, np.ndarray], policy_version: int | np.ndarray, episode: int,
                      first_seq: int) -> dict[str, np.ndarray]:
        """An episode :meth:`episode` stamped before (id ``episode``, first row ``first_seq``) stamped the same way
        again, for a retried write: the shards drop the chunks they already hold as duplicates. Counters stay."""
        rows = len(next(iter(columns.values())))
        seq = self.seq
        self.seq = first_seq
        try:
            stamped = {**columns, "episode_id": np.full(rows, episode, dtype=np.int64),
                       "step": np.arange(rows, dtype=np.int64)}
            return self.stamp(stamped, policy_version)
        finally:
            self.seq = seq

    def take_back(self, rows: int) -> None:
        """Un-count the episode of ``rows`` rows that :meth:`episode` stamped last, none of whose rows were written:
        its id and seq numbers go to the next episode."""
        self.episodes -= 1
        self.seq -= rows
