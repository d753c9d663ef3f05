"""Offline evaluation on a holdout: a model, the popularity baseline, and the current stable
model (the champion) scored on exactly the same users and held-out items."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .artifacts import LoadedModel
from .interactions import Interactions
from .metrics import ranking_metrics
from .model import Model
from .splits import Split


def sample_users(split: Split, max_users: int | None, seed: int) -> npt.NDArray[np.int64]:
    """Users with held-out items; a seeded sample of them when there are more than max_users."""
    users = split.test_users
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    return users.astype(np.int64)


def evaluate(model: Model, split: Split, users: npt.NDArray[np.int64], k: int) -> dict[str, float]:
    history = split.train.matrix[users]
    recommended, _ = model.recommend(users, history, k)
    return ranking_metrics(recommended, users, split.test, k)


def _index_in(ids: npt.NDArray[np.str_], vocabulary: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
    """Position of each id in vocabulary, -1 where absent."""
    found = pc.index_in(pa.array(ids), value_set=pa.array(vocabulary))
    return np.asarray(pc.fill_null(found, -1), dtype=np.int64)


def evaluate_champion(
    champion: LoadedModel,
    train: Interactions,
    split: Split,
    users: npt.NDArray[np.int64],
    k: int,
) -> dict[str, float]:
    """Score the champion on this holdout, translating ids between the two id spaces.

    Histories come from this training split, so the champion sees exactly what the challenger
    saw: ALS folds users in from them, item-KNN scores from them. BPR cannot fold in; it uses
    its stored user factors, and popularity for users it never saw.
    """
    model = champion.model
    item_to_champion = _index_in(train.item_ids, champion.item_ids)
    champion_to_item = np.full(model.n_items, -1, dtype=np.int64)
    known_items = item_to_champion >= 0
    champion_to_item[item_to_champion[known_items]] = np.flatnonzero(known_items)

    rows = split.train.matrix[users].tocoo()
    keep = item_to_champion[rows.col] >= 0
    history = sp.csr_matrix(
        (rows.data[keep], (rows.row[keep], item_to_champion[rows.col[keep]])),
        shape=(len(users), model.n_items),
    )
    if model.algorithm == "als":
        recommended, _ = model.recommend(None, history, k, fold_in=True)
    elif model.algorithm == "bpr":
        champion_users = _index_in(train.user_ids[users], champion.user_ids)
        recommended = np.full((len(users), k), -1, dtype=np.int64)
        seen = champion_users >= 0
        if seen.any():
            recommended[seen], _ = model.recommend(champion_users[seen], history[seen], k)
        if (~seen).any():
            popular = Model.popularity_baseline(model.user_items)
            recommended[~seen], _ = popular.recommend(None, history[~seen], k)
    else:
        recommended, _ = model.recommend(None, history, k)
    translated = np.where(recommended >= 0, champion_to_item[np.maximum(recommended, 0)], -1)
    return ranking_metrics(translated, users, split.test, k)
