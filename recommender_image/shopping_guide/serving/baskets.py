"""What to add to a basket: the items bought together with what is in it, never an empty list
by accident.

Slots are filled in order from three sources, each item once and never one already in the
basket: the model's bought-together weights (summed over the basket's items), then items
similar to the basket's items, then the most popular items. Each returned item names its
source, so a client can show "bought together" only where it is true. Catalogue filters apply
to every source; an empty answer means the filters (or the catalogue) leave nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from .scorer import ServingModel

Source = Literal["bought_together", "similar_items", "popular"]


@dataclass
class Completion:
    indices: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    unknown_items: list[str] = field(default_factory=list)


def complete(
    model: ServingModel,
    basket: Sequence[str],
    k: int,
    candidates: npt.NDArray[np.bool_] | None = None,
) -> Completion:
    """Up to k items for a basket of item ids; `candidates` masks what may be returned."""
    found = model.items.lookup(basket)
    done = Completion(unknown_items=[i for i, x in zip(basket, found, strict=True) if x < 0])
    known = np.unique(found[found >= 0])
    n_items = len(model.items)
    allowed = np.ones(n_items, dtype=bool) if candidates is None else candidates.copy()
    allowed[known] = False

    def take(order: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], source: Source) -> None:
        for index in order:
            if len(done.indices) >= k:
                return
            if allowed[index]:
                allowed[index] = False
                done.indices.append(int(index))
                done.scores.append(float(scores[index]))
                done.sources.append(source)

    weights = model.model.bought_together
    if weights is not None and len(known):
        summed = np.asarray(weights[known].sum(axis=0), dtype=np.float32).ravel()
        positive = np.flatnonzero((summed > 0) & allowed)
        take(positive[np.argsort(-summed[positive], kind="stable")], summed, "bought_together")
    for item in known:
        if len(done.indices) >= k:
            break
        similar = model.similar(str(model.item_ids[item]), k + len(known))
        if similar is not None:
            indices = model.items.lookup(similar.item_ids)
            scores = np.zeros(n_items, dtype=np.float32)
            scores[indices] = similar.scores
            take(indices, scores, "similar_items")
    if len(done.indices) < k:
        popularity = model.model.popularity
        take(model.popular_order, popularity, "popular")
    return done
