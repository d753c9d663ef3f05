"""Training with a catalogue: new items in the item space, content similarity, and the
cold-item evaluation that shows what the hybrid model adds over pure collaborative filtering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .algorithms import Value, fit
from .interactions import Interactions
from .metrics import ranking_metrics

COLD_ITEM_FRACTION = 0.1


def extend_items(
    data: Interactions, catalog_ids: npt.NDArray[np.str_], exclude: Sequence[str] = ()
) -> Interactions:
    """Catalogue items without interactions join the item space as empty columns, so a hybrid
    model can recommend them from content alone (excluded items stay out)."""
    known = np.asarray(
        pc.is_in(pa.array(catalog_ids), value_set=pa.array([*data.item_ids, *exclude]))
    )
    new = catalog_ids[~known]
    if not len(new):
        return data
    matrix = sp.csr_matrix(
        (data.matrix.data, data.matrix.indices, data.matrix.indptr),
        shape=(data.shape[0], data.shape[1] + len(new)),
    )
    item_ids = np.concatenate([data.item_ids, new]).astype(np.str_)
    return Interactions(matrix, data.user_ids, item_ids, data.last_seen)


def cold_item_evaluation(
    data: Interactions,
    algorithm: str,
    params: Mapping[str, Value],
    content: sp.csr_matrix,
    content_weight: float,
    k: int,
    seed: int,
    max_users: int | None,
) -> dict[str, Any]:
    """Hide a tenth of the items that have interactions, train without them, and rank only
    those items for the users who had interacted with them: collaborative filtering alone can
    only guess there; the content share of the hybrid score is what finds them."""
    rng = np.random.default_rng(seed + 7)
    counts = np.diff(data.matrix.tocsc().indptr)
    candidates = np.flatnonzero(counts > 0)
    cold = np.zeros(data.shape[1], dtype=bool)
    cold[rng.choice(candidates, max(1, int(len(candidates) * COLD_ITEM_FRACTION)), False)] = True
    coo = data.matrix.tocoo()
    in_cold = cold[coo.col]
    train = sp.csr_matrix(
        (coo.data[~in_cold], (coo.row[~in_cold], coo.col[~in_cold])), shape=data.shape
    )
    test = sp.csr_matrix(
        (coo.data[in_cold], (coo.row[in_cold], coo.col[in_cold])), shape=data.shape
    )
    has_history = np.diff(train.indptr) > 0
    users = np.flatnonzero((np.diff(test.indptr) > 0) & has_history).astype(np.int64)
    if max_users is not None and len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    model = fit(algorithm, params, train, seed)
    out: dict[str, Any] = {"items": int(cold.sum()), "users": len(users)}
    cold_ids = np.flatnonzero(cold)
    cold_test = test[:, cold_ids]
    # A random epsilon breaks ties: collaborative scores of items nobody was seen with are
    # all equal, and catalogue order must not decide among them.
    jitter = rng.random(len(cold_ids)).astype(np.float32) * 1e-6
    for name, weight in (("collaborative", 0.0), ("hybrid", content_weight)):
        model.content_similarity, model.content_weight = content, weight
        ranked = np.full((len(users), k), -1, dtype=np.int64)
        for start in range(0, len(users), 512):
            block = users[start : start + 512]
            scores = model.score(block, train[block])[:, cold_ids] + jitter
            top = np.argsort(-scores, axis=1)[:, :k]
            ranked[start : start + len(block), : top.shape[1]] = top
        metrics = ranking_metrics(ranked, users, cold_test, k)
        out[name] = {m: round(v, 6) for m, v in metrics.items()}
    return out
