"""BM25 over the catalogue's text index: what the guided query matches first.

The index keeps, per item, the weighted counts of its words (title once, each category
CATEGORY_WEIGHT times, attribute values once), so one pseudo-document per item stands for
BM25F over those fields. Words are folded with Harman's S-stemmer ("lights" and "light",
"candles" and "candle" are one term), on the vocabulary once, never per item.

A query is answered from the postings of its few terms: the items that contain each term and
their BM25 weights, summed per item (sorted postings when they are few, dense arrays when a
word is common). Cost grows with the postings of the query's terms; there is no loop over items
at query time. Coverage (how many of the query's terms an item contains) comes out of the same
pass: the guide ranks items that contain every word above items that contain some.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

# The usual BM25 constants (Robertson & Zaragoza, 2009); titles are short, so length
# normalisation matters little either way.
K1 = 1.2
B = 0.75
_NO_ITEMS = np.empty(0, np.int64)
# Postings beyond 1/32 of the catalogue are counted in dense arrays rather than sorted.
_DENSE_SHARE = 32


def fold(words: pa.Array) -> pa.Array:
    """Harman's S-stemmer (1991), vectorised: ies -> y (not eies, aies), es -> e (not aes,
    ees, oes), s -> '' (not us, ss); one rule per word, words under four letters kept."""
    long = pc.greater_equal(pc.utf8_length(words), 4)
    folded = pc.replace_substring_regex(words, "([^ea])ies$", r"\1y")
    changed = pc.not_equal(folded, words)
    es = pc.replace_substring_regex(words, "([^aeo])es$", r"\1e")
    folded = pc.if_else(changed, folded, es)
    changed = pc.not_equal(folded, words)
    s = pc.replace_substring_regex(words, "([^us])s$", r"\1")
    folded = pc.if_else(changed, folded, s)
    return pc.if_else(long, folded, words)


@dataclass(frozen=True)
class TextMatch:
    """The items a query's words reach: each with its coverage and BM25 relevance."""

    words: list[str]  # the query's terms found in the index, as the catalogue spells them
    items: npt.NDArray[np.int64]  # every item that contains at least one of them, ascending
    coverage: npt.NDArray[np.int64]  # how many of `words` each item contains
    relevance: npt.NDArray[np.float32]  # BM25, summed over the words it contains
    postings: list[npt.NDArray[np.int64]]  # per word, the items that contain it (ascending)

    def words_of(self, items: npt.NDArray[np.int64]) -> list[list[str]]:
        """For each of `items`, the query's words it contains."""
        contains = [_contains(rows, items) for rows in self.postings]
        return [
            [w for w, hit in zip(self.words, column, strict=True) if hit]
            for column in (np.stack(contains, axis=1) if contains else np.zeros((len(items), 0)))
        ]


def _contains(rows: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Which of `items` are in the ascending `rows`: a binary search each, whatever len(rows)."""
    if not len(rows):
        return np.zeros(len(items), bool)
    position = np.minimum(np.searchsorted(rows, items), len(rows) - 1)
    found: npt.NDArray[np.bool_] = rows[position] == items
    return found


class Bm25Index:
    """BM25 weights per (item, folded term), column-major so a term's postings are a slice."""

    def __init__(self, vocabulary: npt.NDArray[np.str_], counts: sp.csr_matrix) -> None:
        n_items = counts.shape[0]
        folded = np.asarray(fold(pa.array(vocabulary.tolist(), pa.string())).to_pylist(), np.str_)
        self.terms, group = np.unique(folded, return_inverse=True)
        merge = sp.csr_matrix(
            (np.ones(len(vocabulary), np.float32), (np.arange(len(vocabulary)), group)),
            shape=(len(vocabulary), len(self.terms)),
        )
        tf = sp.csr_matrix(counts @ merge, dtype=np.float32)
        # What a query is told it matched: the spelling most items carry ("lantern", not
        # "lanterns"; "christmas", never the stem "christma").
        raw_df = np.diff(sp.csc_matrix(counts).indptr)
        order = np.lexsort((-raw_df, group))
        first = np.ones(len(order), bool)
        first[1:] = group[order][1:] != group[order][:-1]
        self.display = vocabulary[order[first]]

        length = np.asarray(tf.sum(axis=1), np.float32).ravel()
        average = float(length.mean()) if n_items and length.mean() > 0 else 1.0
        df = np.diff(tf.tocsc().indptr).astype(np.float32)
        idf = np.log1p((n_items - df + 0.5) / (df + 0.5)).astype(np.float32)
        rows = np.repeat(np.arange(n_items), np.diff(tf.indptr))
        saturation = tf.data * (K1 + 1) / (tf.data + K1 * (1 - B + B * length[rows] / average))
        tf.data = (idf[tf.indices] * saturation).astype(np.float32)
        self.weights = sp.csc_matrix(tf)
        self.weights.sort_indices()
        self.n_items = n_items

    def columns(self, words: list[str]) -> list[int]:
        """The folded term of each word that the index has, once each, in query order."""
        if not words or not len(self.terms):
            return []
        folded = fold(pa.array(words, pa.string())).to_pylist()
        position = np.minimum(np.searchsorted(self.terms, folded), len(self.terms) - 1)
        out: list[int] = []
        for p, term in zip(position.tolist(), folded, strict=True):
            if self.terms[p] == term and p not in out:
                out.append(p)
        return out

    def match(self, words: list[str]) -> TextMatch:
        columns = self.columns(words)
        indptr, indices, data = self.weights.indptr, self.weights.indices, self.weights.data
        postings = [indices[indptr[c] : indptr[c + 1]].astype(np.int64) for c in columns]
        if not postings:
            return TextMatch([], _NO_ITEMS, _NO_ITEMS, np.empty(0, np.float32), [])
        weights = [data[indptr[c] : indptr[c + 1]] for c in columns]
        if sum(len(p) for p in postings) * _DENSE_SHARE < self.n_items:
            # Few postings: sort them; the cost stays with the query, not the catalogue.
            items, position = np.unique(np.concatenate(postings), return_inverse=True)
            coverage = np.bincount(position, minlength=len(items))
            relevance = np.bincount(position, weights=np.concatenate(weights),
                                    minlength=len(items))  # fmt: skip
        else:
            # A common word: scatter into dense arrays, one term at a time (a term's postings
            # name each item once), cheaper than sorting hundreds of thousands of postings.
            dense_coverage = np.zeros(self.n_items, np.int16)
            dense_relevance = np.zeros(self.n_items, np.float32)
            for rows, values in zip(postings, weights, strict=True):
                dense_coverage[rows] += 1
                dense_relevance[rows] += values
            items = np.flatnonzero(dense_coverage)
            coverage, relevance = dense_coverage[items], dense_relevance[items]
        return TextMatch(
            words=[str(self.display[c]) for c in columns],
            items=items.astype(np.int64),
            coverage=coverage.astype(np.int64),
            relevance=relevance.astype(np.float32),
            postings=postings,
        )
