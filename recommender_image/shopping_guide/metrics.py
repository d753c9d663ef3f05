"""Ranking metrics at k, vectorised over users.

Definitions, per user with at least one held-out item, averaged over those users:
- precision@k = hits / k (as papers report it; implicit's own `precision_at_k` divides by
  min(k, |test|) instead, which flatters users with few held-out items);
- recall@k = hits / |test|;
- ndcg@k = DCG / ideal DCG, binary relevance, ideal over min(k, |test|) positions;
- map@k = sum over hit positions j of precision@j, divided by min(k, |test|);
- coverage = distinct recommended items / catalogue size.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

Recommendations = npt.NDArray[np.int64]


def hit_matrix(
    recommended: Recommendations, users: npt.NDArray[np.int64], test: sp.csr_matrix
) -> npt.NDArray[np.bool_]:
    """hits[r, j]: the j-th recommendation for users[r] is one of their held-out items."""
    n_items = test.shape[1]
    rows = np.repeat(np.arange(test.shape[0], dtype=np.int64), np.diff(test.indptr))
    held_out = np.sort(rows * n_items + test.indices.astype(np.int64))
    keys = users[:, None] * n_items + recommended
    valid = recommended >= 0
    hits: npt.NDArray[np.bool_] = np.isin(keys, held_out) & valid
    return hits


def ranking_metrics(
    recommended: Recommendations,
    users: npt.NDArray[np.int64],
    test: sp.csr_matrix,
    k: int,
) -> dict[str, float]:
    recommended = recommended[:, :k]
    if recommended.shape[1] < k:
        pad = np.full((recommended.shape[0], k - recommended.shape[1]), -1, dtype=np.int64)
        recommended = np.hstack([recommended, pad])
    n_relevant = np.diff(test.indptr)[users].astype(np.float64)
    evaluated = n_relevant > 0
    recommended, users, n_relevant = recommended[evaluated], users[evaluated], n_relevant[evaluated]
    names = (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", "coverage")
    if len(users) == 0:
        return dict.fromkeys(names, 0.0)
    hits = hit_matrix(recommended, users, test).astype(np.float64)
    n_hits = hits.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits @ discounts
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(np.int64) - 1]
    precision_at_j = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    average_precision = (precision_at_j * hits).sum(axis=1) / np.minimum(n_relevant, k)
    distinct = np.unique(recommended[recommended >= 0])
    values = (
        float(np.mean(n_hits / k)),
        float(np.mean(n_hits / n_relevant)),
        float(np.mean(dcg / ideal)),
        float(np.mean(average_precision)),
        len(distinct) / test.shape[1],
    )
    return dict(zip(names, values, strict=True))
