"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from shopping_guide.metrics import ranking_metrics


def test_metrics_match_hand_computed_values() -> None:
    # User 0 holds out items {1, 3}; user 1 holds out {4}; user 2 holds out nothing.
    test = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 3, 4])), shape=(3, 6))
    recommended = np.array([[1, 2, 3], [0, 2, 5], [1, 2, 3]])
    users = np.array([0, 1, 2])
    got = ranking_metrics(recommended, users, test, k=3)

    # user 0: hits at ranks 1 and 3; user 1: none; user 2 is not evaluated.
    precision = (2 / 3 + 0) / 2
    recall = (2 / 2 + 0) / 2
    dcg0 = 1 + 1 / math.log2(4)
    idcg0 = 1 + 1 / math.log2(3)
    ndcg = (dcg0 / idcg0 + 0) / 2
    ap0 = (1 / 1 + 2 / 3) / 2
    coverage = len({1, 2, 3, 0, 5}) / 6
    assert got == pytest.approx(
        {
            "precision@3": precision,
            "recall@3": recall,
            "ndcg@3": ndcg,
            "map@3": ap0 / 2,
            "coverage": coverage,
        }
    )


def test_precision_divides_by_k_not_by_held_out_count() -> None:
    test = sp.csr_matrix((np.ones(1), ([0], [2])), shape=(1, 20))
    got = ranking_metrics(np.array([[2, 5, 6, 7, 8, 9, 10, 11, 12, 13]]), np.array([0]), test, 10)
    assert got["precision@10"] == pytest.approx(0.1)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["ndcg@10"] == pytest.approx(1.0)


def test_padding_is_never_a_hit() -> None:
    test = sp.csr_matrix((np.ones(1), ([0], [0])), shape=(1, 3))
    got = ranking_metrics(np.array([[-1, -1]]), np.array([0]), test, k=2)
    assert got["precision@2"] == 0 and got["coverage"] == 0
