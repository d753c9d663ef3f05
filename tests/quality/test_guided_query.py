"""The guided query on the real Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33):
precision@5 over a labelled query set, beside the ranking the guide had before (TF-IDF cosine,
category words as a hard filter, half the score personal), computed here on the same model."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from benchmarks.online_retail import train_json
from shopping_guide.artifacts import ModelStore
from shopping_guide.serving.guide import guide, parse_query, tokenize_words
from shopping_guide.serving.scorer import Filters, ServingModel

pytestmark = pytest.mark.quality

QUERIES = Path(__file__).with_name("guided_queries.yaml")
CUSTOMER = "14911"  # the demo's customer: thousands of purchases, a strong personal signal
K = 5
# Measured on this sample: 0.94 anonymous, 0.91 for the customer; the previous ranking 0.66
# and 0.58. The bounds keep a margin below both.
FLOOR = 0.85
MIN_GAIN = 0.2


@dataclass(frozen=True)
class Labelled:
    query: str
    words: tuple[str, ...]
    min_price: float = -np.inf
    max_price: float = np.inf

    def relevant(self, titles: npt.NDArray[np.str_], prices: npt.NDArray[np.float32]) -> set[int]:
        patterns = [re.compile(rf"\b{re.escape(w)}", re.I) for w in self.words]
        return {
            i
            for i, (title, price) in enumerate(zip(titles, prices, strict=True))
            if all(p.search(str(title)) for p in patterns)
            and self.min_price <= price <= self.max_price
        }


def labelled() -> list[Labelled]:
    rows: list[dict[str, Any]] = yaml.safe_load(QUERIES.read_text())
    return [
        Labelled(r["query"], tuple(r["words"]), r.get("min_price", -np.inf),
                 r.get("max_price", np.inf))
        for r in rows
    ]  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    """The demo's guide (examples/online-retail.yaml): ALS with BM25 weighting and content."""
    store = tmp_path_factory.mktemp("guided")
    result = train_json(store, "--algorithm", "als", "--param", "factors=64",
                        "--param", "iterations=15", "--param", "weighting=bm25",
                        "--catalog-from-events", "Description,UnitPrice",
                        "--content-weight", "0.3")  # fmt: skip
    return ServingModel(ModelStore(store).load(str(result["version"])))


def previous_ranking(model: ServingModel, query: str, user_id: str | None, k: int) -> list[int]:
    """The guide's ranking before BM25, kept here as the baseline it must beat."""
    assert model.text_index is not None and model.catalog is not None
    index, catalog = model.text_index, model.catalog
    parsed = parse_query(query, Filters())
    words = tokenize_words(parsed.text)
    position = np.minimum(np.searchsorted(index.vocabulary, words), len(index.vocabulary) - 1)
    hits = [int(p) for p, w in zip(position, words, strict=True) if index.vocabulary[p] == w]
    vector = np.zeros(len(index.vocabulary), np.float32)
    for p in hits:
        vector[p] += index.idf[p]
    scores = np.asarray(index.matrix @ (vector / max(float(np.linalg.norm(vector)), 1e-12)))
    scores = scores.astype(np.float32)
    named = tuple(str(c) for c in catalog.category_names if c in set(words))
    filters = parsed.filters
    if named:
        filters = Filters(named, filters.min_price, filters.max_price)
    if not hits:
        scores = np.ones_like(scores)
    mask = (scores > 0) & filters.mask(catalog, len(scores))
    scores[~mask] = -np.inf
    user = -1 if user_id is None else model.users.one(user_id)
    if user >= 0:
        row = model._history_row(user)
        personal = model._dense_scores(model._user_vector(user, row), row)
        if personal is not None:
            scores = 0.5 * unit(scores) + 0.5 * unit(personal)
            scores[~mask] = -np.inf
            scores[row.indices] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(scores[i])]


def unit(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    finite = values[np.isfinite(values)]
    if not len(finite) or finite.max() <= finite.min():
        return np.where(np.isfinite(values), 1.0, values).astype(np.float32)
    scaled: npt.NDArray[np.float32] = (values - finite.min()) / (finite.max() - finite.min())
    return scaled.astype(np.float32)


def precision(ranked: list[int], relevant: set[int]) -> float:
    """Hits in the top K over min(K, |relevant|): a query with 4 relevant items can reach 1."""
    return len(set(ranked[:K]) & relevant) / min(K, len(relevant))


def served(model: ServingModel, query: str, user_id: str | None) -> list[int]:
    answer = guide(model, query, user_id, K, Filters())
    return [model.items.one(i["item_id"]) for i in answer["items"]]


@pytest.mark.parametrize("user_id", [None, CUSTOMER])
def test_precision_at_5_over_the_labelled_queries(model: ServingModel, user_id: str | None) -> None:
    assert model.catalog is not None
    queries = labelled()
    assert len(queries) >= 20
    bought: set[int] = set()
    if user_id is not None:
        bought = set(model._history_row(model.users.one(user_id)).indices.tolist())
    now, before, lines = [], [], []
    for q in queries:
        relevant = q.relevant(model.catalog.titles, model.catalog.price)
        assert relevant, f"{q.query!r}: no item of the catalogue is relevant"
        # Bought items are never suggested to their buyer: they leave the answer key.
        relevant -= bought
        if not relevant:
            lines.append(f"     -     -  {q.query} (the customer bought every relevant item)")
            continue
        now.append(precision(served(model, q.query, user_id), relevant))
        before.append(precision(previous_ranking(model, q.query, user_id, K), relevant))
        lines.append(f"  {now[-1]:.2f}  {before[-1]:.2f}  {q.query}")
    new, old = statistics.mean(now), statistics.mean(before)
    title = f"precision@5 ({user_id or 'anonymous'}): guide {new:.3f}, previous ranking {old:.3f}"
    report = "\n".join([title, "  guide previous query", *lines])
    print(report)
    assert new >= FLOOR, report
    assert new >= old + MIN_GAIN, report


def test_christmas_lights_under_5_are_christmas_lights(model: ServingModel) -> None:
    """The query the demo prints: every answer is a Christmas light within the bound."""
    answer = guide(model, "christmas lights under 5", CUSTOMER, K, Filters())
    assert answer["constraints"][0] == "price <= 5"
    titles = [i["title"] for i in answer["items"]]
    assert len(titles) == K, titles
    assert all(re.search(r"\bchristmas\b", t, re.I) for t in titles), titles
    assert all(re.search(r"\blights?\b|t-lights?\b|\d+light\b", t, re.I) for t in titles), titles
    assert all(i["price"] <= 5 for i in answer["items"])
    assert all(sorted(i["matched"]) == ["christmas", "light"] for i in answer["items"])
