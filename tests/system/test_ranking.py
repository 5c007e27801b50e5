"""Rank agreement: Spearman and Kendall's tau-b with ties (values checked against scipy.stats by hand), regret@1."""

import math

import pytest

from system.ranking import average_ranks, kendall_tau, regret_at_1, spearman


def test_average_ranks_share_ties():
    assert average_ranks([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_perfect_reversed_and_tied_orders():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # scipy.stats.spearmanr and kendalltau (tau-b) on the same ties: -0.08111 and -0.11785
    assert spearman([1, 2, 2, 3, 4], [1, 3, 2, 2, 1]) == pytest.approx(-0.08111, abs=1e-5)
    assert kendall_tau([1, 2, 2, 3, 4], [1, 3, 2, 2, 1]) == pytest.approx(-0.11785, abs=1e-5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_regret_at_1_is_what_the_top_ranked_policy_loses():
    assert regret_at_1([0.1, 0.9, 0.5], [10.0, 5.0, 8.0]) == 5.0
    assert regret_at_1([0.9, 0.1], [10.0, 5.0]) == 0.0
    with pytest.raises(ValueError, match="expected two sequences of one length >= 2"):
        regret_at_1([1.0], [1.0])
