"""How well one ranking of policies agrees with another: rank correlations and regret@1.

Used by ``dynaray eval --in-model --real N`` to compare the ranking by scores in the model with the real returns.
Ties get average ranks (Spearman) and the tau-b correction (Kendall), as scipy.stats computes them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["average_ranks", "kendall_tau", "regret_at_1", "spearman"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"expected two sequences of one length >= 2, got shapes {a.shape} and {b.shape}")
    return a, b


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..N of ``x`` (ascending), tied values sharing their average rank."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the highest rank of each distinct value
    return ((last - counts + 1 + last) / 2.0)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (nan when either is constant)."""
    a, b = (average_ranks(v) for v in _pair(x, y))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of ``x`` and ``y`` (nan when either is constant)."""
    a, b = _pair(x, y)
    dx = np.sign(a[:, None] - a[None, :])
    dy = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    dx, dy = dx[upper], dy[upper]
    denominator = float(np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy)))
    return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def regret_at_1(scores: Sequence[float], real: Sequence[float]) -> float:
    """The best real return minus the real return of the policy with the highest score (0: the ranking's first
    is the best; ties in the score go to the first listed)."""
    a, b = _pair(scores, real)
    return float(b.max() - b[int(np.argmax(a))])
