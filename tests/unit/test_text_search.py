"""BM25 over the text index, word folding, and the guided query's price words."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from shopping_guide.catalog import Catalog
from shopping_guide.content import TextIndex, build_text_index
from shopping_guide.serving.guide import QueryError, parse_query
from shopping_guide.serving.scorer import Filters
from shopping_guide.text_search import fold


def catalog(titles: list[str], categories: list[str]) -> Catalog:
    names = sorted(set(categories))
    matrix = sp.csr_matrix(
        (np.ones(len(titles), np.float32),
         (np.arange(len(titles)), [names.index(c) for c in categories])),
        shape=(len(titles), len(names)),
    )  # fmt: skip
    return Catalog(
        item_ids=np.array([f"i{n}" for n in range(len(titles))]),
        titles=np.array(titles),
        categories=matrix,
        category_names=np.array(names),
        attributes=None,
        price=np.ones(len(titles), np.float32),
        in_stock=np.ones(len(titles), bool),
    )


SHOP = catalog(
    [
        "Set of 6 pink butterfly t-lights",  # 0: lights only
        "Christmas lights 10 reindeer",  # 1: both words
        "Christmas bauble",  # 2: christmas only
        "Rose botanical t-lights",  # 3: lights only
        "Christmas tree t-light holder",  # 4: both, singular
        "Ceramic mug",  # 5: neither
    ],
    ["lights", "reindeer", "bauble", "lights", "holder", "mug"],
)


def test_fold_is_harmans_s_stemmer() -> None:
    words = ["lights", "candles", "doilies", "boxes", "glass", "dress", "bus", "gas", "pies",
             "shoes", "christmas", "mug"]  # fmt: skip
    assert fold(pa.array(words)).to_pylist() == [
        "light", "candle", "doily", "boxe", "glass", "dress", "bus", "gas", "py", "shoe",
        "christma", "mug",
    ]  # fmt: skip


def test_coverage_counts_distinct_words_and_ranks_full_matches_first() -> None:
    index = build_text_index(SHOP)
    found = index.match("christmas lights")
    assert found.words == ["christmas", "lights"]  # the spelling more items carry
    coverage = dict(zip(found.items.tolist(), found.coverage.tolist(), strict=True))
    assert coverage == {0: 1, 1: 2, 2: 1, 3: 1, 4: 2}
    order = found.items[np.lexsort((-found.relevance, -found.coverage))]
    assert set(order[:2].tolist()) == {1, 4}
    # The same word twice, or in two spellings, is one word of the query.
    again = index.match("light lights christmas christmas")
    assert again.coverage.max() == 2
    assert again.words_of(np.array([1, 0, 5])) == [again.words, [again.words[0]], []]


def test_bm25_weighs_rare_words_and_category_membership() -> None:
    index = build_text_index(SHOP)
    scores, matched = index.scores("bauble")
    assert matched == ["bauble"] and np.flatnonzero(scores).tolist() == [2]
    # "lights" is a word of items 0, 1 and 3 and the category of 0 and 3: those rank first.
    scores, _ = index.scores("lights")
    assert scores[0] > scores[1] and scores[3] > scores[1] > 0
    # A rarer word outweighs a commoner one.
    scores, _ = index.scores("reindeer")
    assert scores[1] > index.scores("christmas")[0][1]


def test_no_known_word_matches_nothing() -> None:
    found = build_text_index(SHOP).match("quantum flux")
    assert found.words == [] and len(found.items) == 0
    assert found.words_of(np.array([0, 1])) == [[], []]


def test_artifacts_without_counts_still_answer() -> None:
    """Versions trained before the counts were stored: each word counts once."""
    arrays = build_text_index(SHOP).to_arrays()
    assert "text_counts_data" in arrays
    old = {k: v for k, v in arrays.items() if not k.startswith("text_counts")}
    index = TextIndex.from_arrays(old)
    assert index is not None and index.counts is None
    found = index.match("christmas lights")
    assert sorted(found.items[found.coverage == 2].tolist()) == [1, 4]
    loaded = TextIndex.from_arrays(arrays)
    assert loaded is not None and loaded.counts is not None
    assert (loaded.counts != build_text_index(SHOP).counts).nnz == 0


@pytest.mark.parametrize(
    ("query", "low", "high", "text"),
    [
        ("christmas lights under 5", None, 5.0, "christmas lights"),
        ("mugs between £2 and £4", 2.0, 4.0, "mugs"),
        ("mugs between 4 and 2", 2.0, 4.0, "mugs"),
        ("candles from 1.50 to 3", 1.5, 3.0, "candles"),
        ("lanterns £2-£4.50", 2.0, 4.5, "lanterns"),
        ("lanterns $2 to $4", 2.0, 4.0, "lanterns"),
        ("a gift over 10", 10.0, None, "a gift"),
        ("a bag cheaper than 3", None, 3.0, "a bag"),
        ("at least 2 and at most 6 mugs", 2.0, 6.0, "and mugs"),
        ("6 mugs", None, None, "6 mugs"),
    ],
)
def test_price_words(query: str, low: float | None, high: float | None, text: str) -> None:
    parsed = parse_query(query, Filters())
    assert (parsed.filters.min_price, parsed.filters.max_price) == (low, high)
    assert parsed.text.split() == text.split()
    assert not parsed.cheap


def test_cheap_is_a_word_of_price_not_of_the_text() -> None:
    parsed = parse_query("a cheap lunch bag", Filters(categories=("bags",)))
    assert parsed.cheap and parsed.text.split() == ["a", "lunch", "bag"]
    assert parsed.filters.categories == ("bags",) and parsed.constraints == ()


@pytest.mark.parametrize(("query", "message"), [(" ", "empty"), ("x" * 501, "longer than 500")])
def test_unusable_queries(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(query, Filters())
