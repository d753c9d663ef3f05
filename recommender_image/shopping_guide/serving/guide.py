"""The guided query ("christmas lights under 5", "a cheap lunch bag") and the user profile.

Price words in the query become filters ("under 5", "over 10", "between 2 and 4", "£2-£4",
"cheap"); the rest is matched against the catalogue's text index with BM25 (titles,
categories weighted twice, attribute values). Relevance comes first: an item that contains
every word of the query ranks above one that contains some, an item in a category the query
names above one that only mentions the word, then BM25. The shopper's personal score (or, for
an anonymous query, popularity) is a secondary signal inside those tiers: it reorders items
that are about as relevant, never a relevant item below an irrelevant one. Every item says why:
the words it matched, and the item in the user's history it is most similar to.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from ..content import tokenize
from ..text_search import fold
from .scorer import Filters, ServingModel

MAX_QUERY_LENGTH = 500
# Within a tier of equally covered items: how much the personal (or popularity) score counts
# beside BM25, both scaled to [0, 1] over the candidates.
SECONDARY_SHARE = 0.3
_CURRENCY = r"[£$€]?\s*"
_NUMBER = r"(\d+(?:\.\d+)?)"
_RANGE = re.compile(
    rf"(?:\bbetween\s*{_CURRENCY}{_NUMBER}\s*and|\bfrom\s*{_CURRENCY}{_NUMBER}\s*to"
    rf"|[£$€]\s*{_NUMBER}\s*(?:-|to))\s*{_CURRENCY}{_NUMBER}",
    re.I,
)
_MAX_PRICE = re.compile(
    rf"\b(?:under|below|less than|cheaper than|up to|at most|max(?:imum)?)\s*{_CURRENCY}{_NUMBER}",
    re.I,
)
_MIN_PRICE = re.compile(
    rf"\b(?:over|above|more than|at least|from|min(?:imum)?)\s*{_CURRENCY}{_NUMBER}", re.I
)
_CHEAP = re.compile(r"\b(?:cheap(?:er|est)?|inexpensive|budget|affordable|bargains?)\b", re.I)


class QueryError(ValueError):
    """A query the guide cannot work with; the message says why."""


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    filters: Filters
    constraints: tuple[str, ...]
    cheap: bool = False  # the lower half of the best matches' prices, decided once matched


def _price(text: str) -> str:
    return f"{float(text):g}"


def parse_query(query: str, base: Filters) -> ParsedQuery:
    """Price bounds found in the words become filters; the rest is matched as text."""
    if not query.strip():
        raise QueryError("query is empty")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"query is longer than {MAX_QUERY_LENGTH} characters")
    low: str | None = None
    high: str | None = None
    text = query
    if match := _RANGE.search(text):
        bounds = [g for g in match.groups() if g is not None]
        low, high = sorted(bounds, key=float)
        text = _RANGE.sub(" ", text)
    if high is None and (match := _MAX_PRICE.search(text)):
        high = match.group(1)
    if low is None and (match := _MIN_PRICE.search(text)):
        low = match.group(1)
    text = _MIN_PRICE.sub(" ", _MAX_PRICE.sub(" ", text))
    cheap = bool(_CHEAP.search(text))
    text = _CHEAP.sub(" ", text)
    filters = base
    constraints: list[str] = []
    if high is not None:
        filters = replace(filters, max_price=float(high))
        constraints.append(f"price <= {_price(high)}")
    if low is not None:
        filters = replace(filters, min_price=float(low))
        constraints.append(f"price >= {_price(low)}")
    return ParsedQuery(text, filters, tuple(constraints), cheap)


def _unit(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Scaled to [0, 1]; all equal is all 1 (nothing to tell them apart)."""
    if not len(values):
        return values
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.ones_like(values)
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


# Per loaded model, the folded words of each category name: tokenized once, on first use.
_CATEGORY_WORDS: weakref.WeakKeyDictionary[
    ServingModel, tuple[npt.NDArray[np.str_], npt.NDArray[np.int64]]
] = weakref.WeakKeyDictionary()


def _category_words(model: ServingModel) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int64]]:
    if (known := _CATEGORY_WORDS.get(model)) is not None:
        return known
    assert model.catalog is not None
    tokens, parents = tokenize(pa.array(model.catalog.category_names.tolist(), pa.string()))
    words = np.asarray(fold(tokens.cast(pa.string())).to_pylist(), np.str_)
    _CATEGORY_WORDS[model] = (words, parents)
    return words, parents


def named_categories(model: ServingModel, words: list[str]) -> npt.NDArray[np.int64]:
    """The catalogue's categories whose every word is among the query's (folded) words."""
    assert model.catalog is not None
    n = len(model.catalog.category_names)
    tokens, parents = _category_words(model)
    if not len(tokens) or not words:
        return np.empty(0, np.int64)
    present = np.isin(tokens, fold(pa.array(words, pa.string())).to_pylist())
    missing = np.bincount(parents, weights=~present, minlength=n)
    has_words = np.bincount(parents, minlength=n) > 0
    return np.flatnonzero(has_words & (missing == 0)).astype(np.int64)


def _category_names(model: ServingModel, categories: npt.NDArray[np.int64]) -> str:
    """The named categories, one per folded spelling ("lights", not also "light")."""
    assert model.catalog is not None
    names = [str(c) for c in model.catalog.category_names[categories]]
    folded = fold(pa.array(names, pa.string())).to_pylist()
    return ", ".join(name for i, name in enumerate(names) if folded[i] not in folded[:i])


def _secondary(
    model: ServingModel, user_id: str | None
) -> tuple[npt.NDArray[np.float32], sp.csr_matrix | None, bool]:
    """The personal scores of a known user (and their history), else popularity."""
    if user_id is not None:
        user = model.users.one(user_id)
        if user >= 0:
            row = model._history_row(user)
            personal = model._dense_scores(model._user_vector(user, row), row)
            if personal is not None:
                return np.asarray(personal, np.float32), row, True
            return model.model.popularity.astype(np.float32), row, False
    return model.model.popularity.astype(np.float32), None, False


def guide(
    model: ServingModel, query: str, user_id: str | None, k: int, base: Filters
) -> dict[str, Any]:
    if model.text_index is None or model.catalog is None:
        raise QueryError("this model was trained without a catalogue: no guided queries")
    parsed = parse_query(query, base)
    words = tokenize_words(parsed.text)
    found = model.text_index.search.match(words)
    if not found.words:
        raise QueryError(f"no word of {query!r} appears in the catalogue")
    constraints = list(parsed.constraints)
    named = named_categories(model, words)
    if len(named):
        constraints.append("category first: " + _category_names(model, named))
    secondary, row, personal_used = _secondary(model, user_id)

    allowed = parsed.filters.mask(model.catalog, len(model.item_ids))
    if row is not None:
        allowed[row.indices] = False  # already bought
    keep = allowed[found.items]
    items, coverage, relevance = found.items[keep], found.coverage[keep], found.relevance[keep]
    if parsed.cheap and len(items):
        # Cheap for what was asked: at most the median price of the items that match best.
        prices = model.catalog.price[items[coverage == coverage.max()]]
        prices = prices[np.isfinite(prices)]
        if len(prices):
            bound = float(np.median(prices))
            cheap = model.catalog.price[items] <= bound
            items, coverage, relevance = items[cheap], coverage[cheap], relevance[cheap]
            constraints.append(f"price <= {bound:.2f} (cheap: the lower half of the matches)")
    preferred = np.zeros(len(items), np.float64)
    if len(named):
        indicator = np.zeros(len(model.catalog.category_names), np.float32)
        indicator[named] = 1.0
        preferred = ((model.catalog.categories @ indicator)[items] > 0).astype(np.float64)
    blended = (1 - SECONDARY_SHARE) * _unit(relevance) + SECONDARY_SHARE * _unit(secondary[items])
    # Lexicographic (coverage, in a named category, blended) as one key: blended is at most 1,
    # a named category adds 2, each word covered 4. A partial sort keeps this O(candidates).
    key = 4.0 * coverage + 2.0 * preferred + blended
    top_k = min(k, len(key))
    best = np.argpartition(-key, top_k - 1)[:top_k] if top_k else np.empty(0, np.int64)
    order = best[np.argsort(-key[best], kind="stable")]
    top = items[order]
    score = (coverage[order] + (preferred[order] + blended[order]) / 2) / (len(found.words) + 1)
    return {
        "query": query,
        "matched_words": sorted(found.words),
        "constraints": constraints,
        "personalized": personal_used,
        "model_version": model.version,
        "items": [
            _entry(model, int(item), float(s), words_of, row)
            for item, s, words_of in zip(top, score, found.words_of(top), strict=True)
        ],
    }


def _entry(
    model: ServingModel, item: int, score: float, matched: list[str], row: sp.csr_matrix | None
) -> dict[str, Any]:
    assert model.catalog is not None
    entry: dict[str, Any] = {
        "item_id": str(model.item_ids[item]),
        "title": _describe(model, item),
        "score": round(score, 6),
        "matched": matched,
    }
    price = model.catalog.price[item]
    if np.isfinite(price):
        entry["price"] = round(float(price), 2)
    if row is not None:
        because = _similarity_to_history(model, row, item)
        if because is not None:
            entry["because_you_bought"] = _describe(model, because)
    return entry


def tokenize_words(text: str) -> list[str]:
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
