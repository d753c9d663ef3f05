"""The guided query ("a gift under 10", "more like this lantern") and the user profile.

A query is matched against the catalogue's text index, simple constraints in its words become
filters (a price bound, a category named in it), and the matches are re-ranked for the user
with the personal model. Every item says why: the words it matched, and the item in the
user's history it is most similar to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ..content import tokenize
from .scorer import Filters, ServingModel

MAX_QUERY_LENGTH = 500
_CURRENCY = r"[£$€]?\s*"
_MAX_PRICE = re.compile(
    rf"\b(?:under|below|less than|cheaper than|up to|at most|max(?:imum)?)\s*{_CURRENCY}"
    r"(\d+(?:\.\d+)?)",
    re.I,
)
_MIN_PRICE = re.compile(
    rf"\b(?:over|above|more than|at least|from|min(?:imum)?)\s*{_CURRENCY}(\d+(?:\.\d+)?)", re.I
)
TEXT_SHARE = 0.5


class QueryError(ValueError):
    """A query the guide cannot work with; the message says why."""


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    filters: Filters
    constraints: tuple[str, ...]


def parse_query(query: str, base: Filters) -> ParsedQuery:
    """Price bounds found in the words become filters; the rest is matched as text."""
    if not query.strip():
        raise QueryError("query is empty")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"query is longer than {MAX_QUERY_LENGTH} characters")
    constraints: list[str] = []
    filters = base
    if match := _MAX_PRICE.search(query):
        filters = replace(filters, max_price=float(match.group(1)))
        constraints.append(f"price <= {match.group(1)}")
    if match := _MIN_PRICE.search(query):
        filters = replace(filters, min_price=float(match.group(1)))
        constraints.append(f"price >= {match.group(1)}")
    text = _MIN_PRICE.sub(" ", _MAX_PRICE.sub(" ", query))
    return ParsedQuery(text, filters, tuple(constraints))


def _unit(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return values
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.where(np.isfinite(values), 1.0, values).astype(np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _similarity_to_history(model: ServingModel, row: sp.csr_matrix, item: int) -> int | None:
    """The history item most similar to `item` under the model (its explanation)."""
    history = row.indices
    if not len(history):
        return None
    m = model.model
    if m.similarity is not None:
        weights = np.asarray(m.similarity[history, item].toarray()).ravel()
    elif m.item_factors is not None and model.item_norms is not None:
        factors = m.item_factors
        weights = (factors[history] @ factors[item]) / (
            model.item_norms[history] * model.item_norms[item]
        )
    elif m.content_similarity is not None:
        weights = np.asarray(m.content_similarity[history, item].toarray()).ravel()
    else:
        return None
    best = int(np.argmax(weights))
    return int(history[best]) if weights[best] > 0 else None


def _describe(model: ServingModel, item: int) -> str:
    if model.catalog is not None and model.catalog.titles[item]:
        return str(model.catalog.titles[item])
    return str(model.item_ids[item])


def guide(
    model: ServingModel, query: str, user_id: str | None, k: int, base: Filters
) -> dict[str, Any]:
    if model.text_index is None or model.catalog is None:
        raise QueryError("this model was trained without a catalogue: no guided queries")
    parsed = parse_query(query, base)
    words = {w.lower() for w in tokenize_words(parsed.text)}
    named = [c for c in model.catalog.category_names if c in words]
    filters = parsed.filters
    constraints = list(parsed.constraints)
    if named and not filters.categories:
        filters = replace(filters, categories=tuple(named))
        constraints.append("category: " + ", ".join(named))
    text_scores, matched = model.text_index.scores(parsed.text)
    if not matched and not named:
        raise QueryError(f"no word of {query!r} appears in the catalogue")
    scores = text_scores.astype(np.float32)
    if not matched:
        scores = np.ones_like(scores)
    mask = (scores > 0) & filters.mask(model.catalog, len(scores))
    scores[~mask] = -np.inf
    row = None
    personal_used = False
    if user_id is not None:
        user = model.users.one(user_id)
        if user >= 0:
            row = model._history_row(user)
            vector = model._user_vector(user, row)
            personal = model._dense_scores(vector, row)
            if personal is not None:
                personal_used = True
                scores = TEXT_SHARE * _unit(scores) + (1 - TEXT_SHARE) * _unit(personal)
                scores[~mask] = -np.inf
                scores[row.indices] = -np.inf  # already bought
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    items = []
    for item in order:
        entry: dict[str, Any] = {
            "item_id": str(model.item_ids[item]),
            "title": _describe(model, int(item)),
            "score": round(float(scores[item]), 6),
            "matched": _matched(model, int(item), matched),
        }
        price = model.catalog.price[item]
        if np.isfinite(price):
            entry["price"] = round(float(price), 2)
        if row is not None:
            because = _similarity_to_history(model, row, int(item))
            if because is not None:
                entry["because_you_bought"] = _describe(model, because)
        items.append(entry)
    return {
        "query": query,
        "matched_words": matched,
        "constraints": constraints,
        "personalized": personal_used,
        "model_version": model.version,
        "items": items,
    }


def _matched(model: ServingModel, item: int, words: list[str]) -> list[str]:
    """Query words in the item's own text: read off its row of the index, not re-tokenized."""
    assert model.text_index is not None
    index = model.text_index
    lo, hi = index.matrix.indptr[item], index.matrix.indptr[item + 1]
    terms = set(index.vocabulary[index.matrix.indices[lo:hi]].tolist())
    return [w for w in words if w in terms]


def tokenize_words(text: str) -> list[str]:
    import pyarrow as pa

    tokens, _ = tokenize(pa.array([text]))
    return [str(t) for t in tokens.to_pylist()]


def profile(model: ServingModel, user_id: str, limit: int = 10) -> dict[str, Any] | None:
    """What the model knows of one user: bounded, derived, no raw events."""
    user = model.users.one(user_id)
    if user < 0:
        return None
    row = model._history_row(user)
    weights = row.data.astype(np.float64)
    order = np.argsort(-weights, kind="stable")[:limit]
    out: dict[str, Any] = {
        "user_id": user_id,
        "model_version": model.version,
        "interactions": {"items": int(row.nnz), "total_weight": round(float(weights.sum()), 3)},
        "top_items": [
            {
                "item_id": str(model.item_ids[row.indices[i]]),
                "title": _describe(model, int(row.indices[i])),
                "weight": round(float(weights[i]), 3),
            }
            for i in order
        ],
        "top_categories": [],
    }
    if model.catalog is not None and model.catalog.categories.shape[1]:
        affinity = (row @ model.catalog.categories).toarray().ravel()
        total = affinity.sum()
        if total > 0:
            best = np.argsort(-affinity, kind="stable")[:limit]
            out["top_categories"] = [
                {"category": str(model.catalog.category_names[c]),
                 "affinity": round(float(affinity[c] / total), 4)}
                for c in best if affinity[c] > 0
            ]  # fmt: skip
    return out
