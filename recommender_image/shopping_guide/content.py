"""Content-based similarity: TF-IDF over titles, categories and attributes.

Tokenizing and weighting are Arrow and scipy operations (no per-item Python loop). Item x item
similarity keeps the top neighbours of each item, computed in blocks so memory stays bounded
whatever the catalogue size. The same index, with its weighted word counts, answers the guided
query through BM25 (text_search.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .catalog import STOPWORDS, Catalog
from .model import get_sparse, put_sparse
from .text_search import Bm25Index, TextMatch

_BLOCK_CELLS = 1 << 22
CATEGORY_WEIGHT = 2.0


def tokenize(texts: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, npt.NDArray[np.int64]]:
    """Lower-cased word tokens of each text and the index of the text each came from."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    clean = pc.replace_substring_regex(
        pc.utf8_lower(pc.fill_null(pc.cast(texts, pa.string()), "")), "[^a-z0-9]+", " "
    )
    lists = pc.utf8_split_whitespace(clean)
    tokens = pc.list_flatten(lists)
    parents = np.asarray(pc.list_parent_indices(lists), dtype=np.int64)
    useful = pc.and_(
        pc.greater_equal(pc.utf8_length(tokens), 2),
        pc.invert(pc.is_in(tokens, value_set=pa.array(STOPWORDS))),
    )
    mask = np.asarray(useful)
    return pc.filter(tokens, pa.array(mask)), parents[mask]


@dataclass
class TextIndex:
    vocabulary: npt.NDArray[np.str_]
    idf: npt.NDArray[np.float32]
    matrix: sp.csr_matrix  # item x term, TF-IDF, rows of unit length (content similarity)
    # item x term, the weighted counts (BM25's term frequencies); None in artifacts of earlier
    # releases, where the words each item has are read off `matrix`, each counted once.
    counts: sp.csr_matrix | None = None

    @cached_property
    def search(self) -> Bm25Index:
        if self.counts is not None:
            return Bm25Index(self.vocabulary, self.counts)
        present = self.matrix.copy()
        present.data[:] = 1.0
        return Bm25Index(self.vocabulary, present)

    def match(self, text: str) -> TextMatch:
        """The items that contain the text's words, with coverage and BM25 relevance."""
        tokens, _ = tokenize(pa.array([text]))
        return self.search.match([str(w) for w in tokens.to_pylist()])

    def scores(self, text: str) -> tuple[npt.NDArray[np.float32], list[str]]:
        """Dense BM25 scores over all items, and the words matched."""
        found = self.match(text)
        dense = np.zeros(self.matrix.shape[0], np.float32)
        dense[found.items] = found.relevance
        return dense, sorted(found.words)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {
            "text_vocabulary": self.vocabulary,
            "text_idf": self.idf,
        }
        put_sparse(out, "text_matrix", self.matrix)
        if self.counts is not None:
            put_sparse(out, "text_counts", self.counts)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> TextIndex | None:
        """The stored index, its BM25 postings built now: loading is off the request path."""
        if "text_vocabulary" not in arrays:
            return None
        counts = get_sparse(arrays, "text_counts") if "text_counts_data" in arrays else None
        index = cls(arrays["text_vocabulary"], arrays["text_idf"],
                    get_sparse(arrays, "text_matrix"), counts)  # fmt: skip
        _ = index.search
        return index


def build_text_index(catalog: Catalog) -> TextIndex:
    title_tokens, title_rows = tokenize(pa.array(catalog.titles))
    parts: list[tuple[pa.Array, npt.NDArray[np.int64], float]] = [(title_tokens, title_rows, 1.0)]
    if catalog.categories.nnz:
        coo = catalog.categories.tocoo()
        names = pa.array(catalog.category_names[coo.col])
        tokens, parents = tokenize(names)
        parts.append((tokens, coo.row[parents].astype(np.int64), CATEGORY_WEIGHT))
    if catalog.attributes:
        values = [" ".join(a.values()) for a in catalog.attributes]
        tokens, parents = tokenize(pa.array(values))
        parts.append((tokens, parents, 1.0))
    terms = pa.concat_arrays([p[0].cast(pa.string()) for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    weights = np.concatenate([np.full(len(p[1]), p[2], np.float32) for p in parts])
    vocabulary, columns = np.unique(np.asarray(terms.to_pylist(), dtype=np.str_),
                                    return_inverse=True)  # fmt: skip
    counts = sp.csr_matrix(
        (weights, (rows, columns)), shape=(len(catalog), len(vocabulary)), dtype=np.float32
    )
    document_frequency = np.diff(counts.tocsc().indptr).astype(np.float32)
    idf = (np.log((1.0 + len(catalog)) / (1.0 + document_frequency)) + 1.0).astype(np.float32)
    weighted = counts.copy()
    weighted.data = np.log1p(weighted.data) * idf[weighted.indices]
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1))).ravel()
    weighted = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ weighted
    return TextIndex(vocabulary, idf, sp.csr_matrix(weighted, dtype=np.float32), counts)


def content_similarity(index: TextIndex, neighbours: int = 100) -> sp.csr_matrix:
    """Item x item cosine similarity of the TF-IDF rows, top `neighbours` per item, no self."""
    matrix = index.matrix
    n = matrix.shape[0]
    k = min(neighbours, max(n - 1, 0))
    block = max(1, _BLOCK_CELLS // max(n, 1))
    rows, cols, values = [], [], []
    transposed = matrix.T.tocsc()
    for start in range(0, n, block):
        stop = min(start + block, n)
        dense = np.asarray((matrix[start:stop] @ transposed).toarray(), dtype=np.float32)
        dense[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if k == 0:
            continue
        top = np.argpartition(-dense, k - 1, axis=1)[:, :k]
        top_values = np.take_along_axis(dense, top, axis=1)
        keep = top_values > 0
        rows.append(np.repeat(np.arange(start, stop), k)[keep.ravel()])
        cols.append(top[keep])
        values.append(top_values[keep])
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
        dtype=np.float32,
    )
