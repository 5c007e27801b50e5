"""Samplers of a replay table: which slots a sample reads.

A sampler sees slot numbers only. It learns which slots hold rows from :meth:`on_write` (occupied slots always
form a prefix ``[0, k)``, as :class:`replay.removers.FifoRemover` fills them), draws slots with replacement
(:meth:`sample`) and gives each draw its importance weight (:meth:`weights`). On a table with
``max_times_sampled`` it draws among the live rows instead (:meth:`draw_live`, with the live index of
:class:`replay.removers.MaxTimesSampledRemover`) and forgets removed rows (:meth:`remove`).

:class:`UniformSampler` draws occupied slots uniformly; :class:`PrioritizedSampler` proportionally to
``priority ** alpha`` over a :class:`SumTree` (Reverb's Prioritized).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from replay.removers import MaxTimesSampledRemover

__all__ = [
    "SAMPLERS",
    "PrioritizedSampler",
    "SumTree",
    "UniformSampler",
    "check_priority_update",
    "normalised_weights",
]

SAMPLERS = ("uniform", "prioritized")
"""Values of :attr:`replay.table.TableConfig.sampler`."""


def normalised_weights(scaled: np.ndarray, beta: float) -> np.ndarray:
    """Importance weights ``scaled ** -beta`` of draws with ``scaled = N * P(draw)``, divided by the batch's
    largest so that every weight is in (0, 1], as float32."""
    weights = scaled**-beta
    return (weights / weights.max()).astype(np.float32)


class UniformSampler:
    """Samples occupied slots uniformly with replacement."""

    __slots__ = ("occupied",)

    def __init__(self) -> None:
        self.occupied = 0

    def on_write(self, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` now hold new rows."""
        self.occupied = max(self.occupied, stop)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots drawn uniformly with replacement from the occupied ones."""
        if self.occupied == 0:
            raise ValueError("cannot sample from an empty table")
        return rng.integers(0, self.occupied, size=n, dtype=np.int64)

    def weights(self, slots: np.ndarray) -> np.ndarray:
        """Importance weights of sampled slots: all 1 (the sampling distribution is the uniform one)."""
        return np.ones(len(slots), dtype=np.float32)

    def draw_live(self, n: int, rng: np.random.Generator, live: MaxTimesSampledRemover) -> tuple[np.ndarray, None]:
        """``n`` live slots drawn uniformly; no ``N * P(slot)`` (the weights are all 1)."""
        return live.draw(n, rng), None

    def remove(self, slots: np.ndarray) -> None:
        """Removed rows are out of the live index already; a uniform sampler keeps nothing about them."""


class SumTree:
    """Array-based binary sum tree over ``size`` float64 leaves, for sampling proportional to leaf values.

    The leaf count is rounded up to a power of two ``P``; node ``i`` (1-based) has children ``2i`` and
    ``2i + 1`` and leaf ``j`` is node ``P + j``, so ``tree[1]`` is the total. Padding leaves stay 0. Parents are
    always recomputed as the sum of their two children (never adjusted by deltas), so sums carry no drift and a
    parent is positive exactly when one of its children is. Updates and samples are vectorised over a batch: one
    numpy operation per tree level, O(batch * log P) work.
    """

    __slots__ = ("size", "leaves", "depth", "tree")

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"SumTree size must be >= 1, got {size}")
        self.size = size
        self.depth = max(0, (size - 1).bit_length())
        self.leaves = 1 << self.depth
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self.tree[1])

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Values of the leaves at ``indices``."""
        return self.tree[np.asarray(indices, dtype=np.int64) + self.leaves]

    def set_range(self, start: int, stop: int, value: float) -> None:
        """Set leaves ``[start, stop)`` to ``value`` and update their ancestors (contiguous slices per level)."""
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"SumTree range [{start}, {stop}) outside [0, {self.size})")
        if start == stop:
            return
        lo, hi = start + self.leaves, stop + self.leaves
        self.tree[lo:hi] = value
        for _ in range(self.depth):
            lo, hi = lo // 2, (hi - 1) // 2 + 1
            self.tree[lo:hi] = self.tree[2 * lo : 2 * hi : 2] + self.tree[2 * lo + 1 : 2 * hi : 2]

    def set(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set the leaves at distinct ``indices`` to ``values`` and update their ancestors."""
        nodes = np.asarray(indices, dtype=np.int64) + self.leaves
        self.tree[nodes] = values
        tree = self.tree
        for _ in range(self.depth):
            nodes >>= 1
            left = nodes << 1
            # a parent listed twice is written twice with the same sum, so no deduplication is needed
            tree[nodes] = tree.take(left) + tree.take(left + 1)

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Leaf index of each prefix-sum position ``mass`` in ``[0, total)``, descending all of them together.

        At each level a position goes right when it is at least the left child's sum and the right child is
        non-empty (the guard keeps rounding from ever landing on a zero leaf), subtracting the left sum.
        """
        mass = np.array(mass, dtype=np.float64)
        nodes = np.ones(mass.shape, dtype=np.int64)
        tree = self.tree
        for _ in range(self.depth):
            nodes <<= 1
            left = tree.take(nodes)
            right = mass >= left
            right &= tree.take(nodes + 1) > 0
            np.subtract(mass, left, out=mass, where=right)
            nodes += right
        nodes -= self.leaves
        return nodes


class PrioritizedSampler:
    """Samples occupied slots with probability proportional to ``priority ** alpha`` (Reverb's Prioritized).

    A :class:`SumTree` over the slots holds ``priority ** alpha``; unoccupied slots hold 0, and an evicted row's
    slot loses its priority when FIFO eviction overwrites it with the new row. New rows get the largest priority
    seen so far (a running maximum starting at 1.0, raised by :meth:`update`), so every row is likely to be sampled
    at least once before its priority is learnt. When every stored priority is 0 the sampler falls back to uniform
    over occupied slots (weights then all 1).

    Args:
        capacity: slots of the table.
        alpha: priority exponent (0 samples uniformly).
        beta: importance exponent of :meth:`weights`.
    """

    __slots__ = ("alpha", "beta", "tree", "occupied", "max_priority")

    def __init__(self, capacity: int, alpha: float, beta: float):
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.tree = SumTree(capacity)
        self.occupied = 0
        self.max_priority = 1.0

    def on_write(self, start: int, stop: int) -> None:
        """Slots ``[start, stop)`` now hold new rows: give them the maximum priority."""
        self.occupied = max(self.occupied, stop)
        self.tree.set_range(start, stop, self.max_priority**self.alpha)

    def update(self, slots: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of distinct occupied ``slots`` (finite, >= 0, checked by the caller)."""
        if len(slots) == 0:
            return
        priorities = np.asarray(priorities, dtype=np.float64)
        self.tree.set(slots, priorities**self.alpha)
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def priorities(self, slots: np.ndarray) -> np.ndarray:
        """``priority ** alpha`` of ``slots`` as stored in the tree."""
        return self.tree.get(slots)

    def restore(self, slots: np.ndarray, weights: np.ndarray, max_priority: float) -> None:
        """Set the tree values (``priority ** alpha``) of occupied ``slots`` directly, and the running maximum."""
        if len(slots):
            self.tree.set(slots, np.asarray(weights, dtype=np.float64))
        self.max_priority = float(max_priority)

    def remove(self, slots: np.ndarray) -> None:
        """Never sample the rows at distinct ``slots`` again (their tree values become 0) until they are rewritten."""
        if len(slots):
            self.tree.set(slots, np.zeros(len(slots), dtype=np.float64))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` slots drawn with replacement, each with probability ``tree[slot] / total`` (O(n log capacity))."""
        if self.occupied == 0:
            raise ValueError("cannot sample from an empty table")
        total = self.tree.total
        if total <= 0:
            return rng.integers(0, self.occupied, size=n, dtype=np.int64)
        return self.tree.find(rng.random(n) * total)

    def weights(self, slots: np.ndarray) -> np.ndarray:
        """Importance weights ``(N * P(i))^-beta / max_batch``, N the occupied slots, as float32.

        Normalising by the largest weight in the batch keeps every weight in (0, 1]. With all priorities 0 the
        sample was uniform and the weights are all 1.
        """
        total = self.tree.total
        if total <= 0:
            return np.ones(len(slots), dtype=np.float32)
        return normalised_weights(self.occupied * self.tree.get(slots) / total, self.beta)

    def draw_live(
        self, n: int, rng: np.random.Generator, live: MaxTimesSampledRemover
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` live slots drawn by priority (removed rows weigh 0) and ``N * P(slot)``, ``N`` the live rows;
        uniform over the live rows, without ``N * P``, when every live priority is 0."""
        total = self.tree.total
        if total > 0:
            slots = self.tree.find(rng.random(n) * total)
            return slots, live.count * self.tree.get(slots) / total
        return live.draw(n, rng), None


def check_priority_update(
    keys: np.ndarray, priorities: np.ndarray, where: str, outcome: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an ``update_priorities`` call: 1-D integer keys >= 0, finite priorities >= 0 of the same length.

    Returns int64 keys and float64 priorities. Errors start with ``where`` and end with ``outcome``.
    """
    keys, priorities = np.asarray(keys), np.asarray(priorities)
    if keys.ndim != 1 or priorities.shape != keys.shape:
        raise ValueError(
            f"{where}: update_priorities needs 1-D keys and priorities of the same length, got shapes {keys.shape} "
            f"and {priorities.shape}; {outcome}"
        )
    if keys.size and keys.dtype.kind not in "iu":
        raise ValueError(f"{where}: keys must be integers from a with_keys sample, got dtype {keys.dtype}; {outcome}")
    if keys.size and keys.min() < 0:
        first = int(np.flatnonzero(keys < 0)[0])
        raise ValueError(
            f"{where}: keys must be >= 0 (from a with_keys sample), got keys[{first}] = {int(keys[first])}; {outcome}"
        )
    if priorities.size and priorities.dtype.kind not in "biuf":
        raise ValueError(f"{where}: priorities must be numbers, got dtype {priorities.dtype}; {outcome}")
    priorities = priorities.astype(np.float64)
    bad = ~np.isfinite(priorities) | (priorities < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{where}: priorities must be finite and >= 0; {int(bad.sum())} of {len(priorities)} are not, e.g. "
            f"priorities[{first}] = {float(priorities[first])!r} (key {int(keys[first])}); {outcome}"
        )
    return keys.astype(np.int64), priorities
