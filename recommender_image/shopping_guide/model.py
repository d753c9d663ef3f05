"""A trained model: the arrays an artifact stores, and scoring with them.

Scoring is plain numpy/scipy over the stored arrays (factor dot products or history x item
similarity), so evaluation and serving score exactly what was saved, batch by batch, with
bounded memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .errors import ArtifactError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def item_weighting(
    matrix: sp.csr_matrix, kind: str, idf: FloatArray | None = None, avg_len: float | None = None
) -> tuple[sp.csr_matrix, FloatArray | None, float | None]:
    """BM25 or TF-IDF re-weighting of user x item confidences.

    Item idf and the mean history length come from the training matrix and are stored, so a
    user folded in at serving time is weighted exactly as during training.
    """
    if kind == "none":
        return matrix, None, None
    coo = matrix.tocoo()
    n_users = max(matrix.shape[0], 1)
    if idf is None:
        idf = (np.log(n_users) - np.log1p(np.bincount(coo.col, minlength=matrix.shape[1]))).astype(
            np.float32
        )
    data = coo.data.astype(np.float32)
    if kind == "tfidf":
        weighted = np.sqrt(data) * idf[coo.col]
    else:
        k1, b = 100.0, 0.8
        lengths = np.bincount(coo.row, minlength=matrix.shape[0]).astype(np.float32)
        if avg_len is None:
            avg_len = float(lengths.mean()) if len(lengths) else 1.0
        norm = (1.0 - b) + b * lengths / max(avg_len, 1e-9)
        weighted = data * (k1 + 1.0) / (k1 * norm[coo.row] + data) * idf[coo.col]
    out = sp.csr_matrix((weighted.astype(np.float32), (coo.row, coo.col)), shape=matrix.shape)
    return out, idf, avg_len


@dataclass
class Model:
    """Either factors (ALS, BPR) or an item x item similarity (item-KNN, EASE), plus what any model
    needs to serve: the training history and item popularity."""

    algorithm: str
    params: dict[str, Any]
    user_items: sp.csr_matrix
    user_factors: FloatArray | None = None
    item_factors: FloatArray | None = None
    similarity: sp.csr_matrix | None = None
    idf: FloatArray | None = None
    avg_len: float | None = None
    ann_index: npt.NDArray[np.uint8] | None = None
    # Item x item content similarity and its share of a blended (hybrid) score.
    content_similarity: sp.csr_matrix | None = None
    content_weight: float = 0.0
    # Item x item weights of what is bought together (from baskets), when trained with them.
    bought_together: sp.csr_matrix | None = None
    popularity: FloatArray = field(init=False)
    _yty: npt.NDArray[np.float64] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_items = self.user_items.tocsr()
        counts = np.diff(self.user_items.tocsc().indptr).astype(np.float32)
        self.popularity = counts

    # Construction -----------------------------------------------------------------------
    @classmethod
    def from_factors(
        cls,
        algorithm: str,
        params: Mapping[str, Any],
        user_factors: Any,
        item_factors: Any,
        user_items: sp.csr_matrix,
        idf: FloatArray | None = None,
        avg_len: float | None = None,
    ) -> Model:
        return cls(
            algorithm,
            dict(params),
            user_items,
            user_factors=np.ascontiguousarray(user_factors, dtype=np.float32),
            item_factors=np.ascontiguousarray(item_factors, dtype=np.float32),
            idf=idf,
            avg_len=avg_len,
        )

    @classmethod
    def from_similarity(
        cls,
        algorithm: str,
        params: Mapping[str, Any],
        similarity: sp.spmatrix,
        user_items: sp.csr_matrix,
    ) -> Model:
        return cls(algorithm, dict(params), user_items, similarity=sp.csr_matrix(similarity))

    @classmethod
    def popularity_baseline(cls, user_items: sp.csr_matrix) -> Model:
        return cls("popularity", {}, user_items)

    @property
    def n_users(self) -> int:
        return int(self.user_items.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.user_items.shape[1])

    # Persistence ------------------------------------------------------------------------
    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        put_sparse(out, "user_items", self.user_items)
        out["popularity"] = self.popularity
        if self.user_factors is not None and self.item_factors is not None:
            out["user_factors"] = self.user_factors
            out["item_factors"] = self.item_factors
        if self.similarity is not None:
            put_sparse(out, "similarity", self.similarity)
        if self.idf is not None:
            out["idf"] = self.idf
        if self.ann_index is not None:
            out["ann_index"] = self.ann_index
        if self.content_similarity is not None:
            put_sparse(out, "content_similarity", self.content_similarity)
            out["content_weight"] = np.asarray([self.content_weight], dtype=np.float64)
        if self.bought_together is not None:
            put_sparse(out, "bought_together", self.bought_together)
        return out

    @classmethod
    def from_arrays(
        cls,
        algorithm: str,
        params: dict[str, Any],
        arrays: Mapping[str, npt.NDArray[Any]],
        avg_len: float | None = None,
    ) -> Model:
        user_items = get_sparse(arrays, "user_items")
        model = cls(
            algorithm,
            params,
            user_items,
            user_factors=arrays.get("user_factors"),
            item_factors=arrays.get("item_factors"),
            similarity=get_sparse(arrays, "similarity") if "similarity_data" in arrays else None,
            idf=arrays.get("idf"),
            avg_len=avg_len,
            ann_index=arrays.get("ann_index"),
        )
        if "content_similarity_data" in arrays:
            model.content_similarity = get_sparse(arrays, "content_similarity")
            model.content_weight = float(arrays["content_weight"][0])
        if "bought_together_data" in arrays:
            model.bought_together = get_sparse(arrays, "bought_together")
        model.check()
        return model

    def check(self) -> None:
        """Shapes agree and every value is finite; raises ArtifactError otherwise."""
        n_users, n_items = self.user_items.shape
        if self.algorithm in ("als", "bpr"):
            if self.user_factors is None or self.item_factors is None:
                raise ArtifactError(f"{self.algorithm} model lacks its factors")
            if self.user_factors.shape[0] != n_users or self.item_factors.shape[0] != n_items:
                raise ArtifactError(
                    f"factor shapes {self.user_factors.shape} / {self.item_factors.shape} do not "
                    f"match {n_users} users x {n_items} items"
                )
            if self.user_factors.shape[1] != self.item_factors.shape[1]:
                raise ArtifactError("user and item factors differ in width")
            for name, values in (("user", self.user_factors), ("item", self.item_factors)):
                if not np.isfinite(values).all():
                    raise ArtifactError(f"{name} factors hold non-finite values")
        if self.algorithm in ("itemknn", "ease"):
            if self.similarity is None or self.similarity.shape != (n_items, n_items):
                raise ArtifactError(f"similarity must be {n_items} x {n_items}")
            if not np.isfinite(self.similarity.data).all():
                raise ArtifactError("similarity holds non-finite values")
        if self.bought_together is not None:
            if self.bought_together.shape != (n_items, n_items):
                raise ArtifactError(f"bought-together weights must be {n_items} x {n_items}")
            if not np.isfinite(self.bought_together.data).all():
                raise ArtifactError("bought-together weights hold non-finite values")

    # Scoring ----------------------------------------------------------------------------
    def fold_in(self, history: sp.csr_matrix) -> FloatArray:
        """User factors from item histories alone: ALS's exact least-squares step.

        For each user: (YtY + reg I + sum_i (c_i - 1) y_i y_i^T) x = sum_i c_i y_i, with
        confidences c = alpha x (weighted) history, as implicit computes them in training.
        """
        if self.algorithm != "als" or self.item_factors is None:
            raise ArtifactError(f"{self.algorithm} cannot fold in new users")
        weighted, _, _ = item_weighting(
            sp.csr_matrix(history, dtype=np.float32),
            self.params.get("weighting", "none"),
            self.idf,
            self.avg_len,
        )
        weighted = weighted.tocsr()
        factors = self.item_factors.astype(np.float64)
        if self._yty is None:
            self._yty = factors.T @ factors
        regularized = self._yty + float(self.params["regularization"]) * np.eye(factors.shape[1])
        alpha = float(self.params["alpha"])
        out = np.zeros((weighted.shape[0], factors.shape[1]), dtype=np.float32)
        for row in range(weighted.shape[0]):
            lo, hi = weighted.indptr[row], weighted.indptr[row + 1]
            if lo == hi:
                continue
            rows = factors[weighted.indices[lo:hi]]
            confidence = alpha * weighted.data[lo:hi].astype(np.float64)
            a = regularized + (rows.T * (confidence - 1.0)) @ rows
            out[row] = np.linalg.solve(a, confidence @ rows)
        return out

    def score(
        self,
        users: IntArray | None,
        history: sp.csr_matrix,
        user_vectors: FloatArray | None = None,
    ) -> FloatArray:
        """Dense scores for a block of users: rows of `history` align with `users`.

        A hybrid model blends the collaborative score with the content score of the user's
        history, each scaled to [0, 1] per user first so the weight means the same for every
        user; items nobody interacted with yet get their score from content alone.
        """
        collaborative = self._collaborative_scores(users, history, user_vectors)
        if self.content_similarity is None or self.content_weight <= 0:
            return collaborative
        seen = history.copy()
        seen.data[:] = 1.0
        content = np.asarray((seen @ self.content_similarity).toarray(), dtype=np.float32)
        w = self.content_weight
        return (1.0 - w) * _unit_scale(collaborative) + w * _unit_scale(content)

    def _collaborative_scores(
        self,
        users: IntArray | None,
        history: sp.csr_matrix,
        user_vectors: FloatArray | None,
    ) -> FloatArray:
        if self.similarity is not None:
            return np.asarray((history @ self.similarity).toarray(), dtype=np.float32)
        if self.item_factors is not None:
            if user_vectors is None:
                assert self.user_factors is not None and users is not None
                user_vectors = self.user_factors[users]
            return np.asarray(user_vectors @ self.item_factors.T, dtype=np.float32)
        return np.broadcast_to(self.popularity, (history.shape[0], self.n_items)).copy()

    def recommend_dense(
        self,
        users: IntArray | None,
        history: sp.csr_matrix,
        k: int,
        *,
        exclude_seen: bool = True,
        candidates: npt.NDArray[np.bool_] | None = None,
        fold_in: bool = False,
    ) -> tuple[IntArray, FloatArray]:
        """Top-k through dense score blocks: hybrid models, and ranking within `candidates`."""
        history = sp.csr_matrix(history, dtype=np.float32)
        n, k = history.shape[0], min(k, self.n_items)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        block = max(1, (1 << 22) // max(self.n_items, 1))
        vectors = self.fold_in(history) if fold_in else None
        for start in range(0, n, block):
            stop = min(start + block, n)
            rows = history[start:stop]
            dense = self.score(
                None if users is None else users[start:stop],
                rows,
                None if vectors is None else vectors[start:stop],
            )
            if exclude_seen:
                r, c = rows.nonzero()
                dense[r, c] = -np.inf
            if candidates is not None:
                dense[:, ~candidates] = -np.inf
            part = np.argpartition(-dense, k - 1, axis=1)[:, :k]
            part_scores = np.take_along_axis(dense, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)
            top_scores = np.take_along_axis(part_scores, order, axis=1)
            top[~np.isfinite(top_scores)] = -1
            ids[start:stop], scores[start:stop] = top, top_scores
        return ids, scores

    def recommend(
        self,
        users: IntArray | None,
        history: sp.csr_matrix,
        k: int,
        *,
        exclude_seen: bool = True,
        fold_in: bool = False,
    ) -> tuple[IntArray, FloatArray]:
        """Top-k item indices (-1 where fewer exist) and scores, for many users at once.

        `users` index the model's own users; pass None with `fold_in` (ALS) or for
        history-based models to score users the model has never seen. Ranking runs in
        implicit's native top-k (batched BLAS and a heap, no dense score matrix).
        """
        from implicit.cpu.topk import topk

        if self.content_similarity is not None and self.content_weight > 0:
            return self.recommend_dense(
                users, history, k, exclude_seen=exclude_seen, fold_in=fold_in
            )
        history = sp.csr_matrix(history, dtype=np.float32)
        n, k = history.shape[0], min(k, self.n_items)
        if self.similarity is not None:
            return self._recommend_by_similarity(history, k, exclude_seen)
        if self.item_factors is not None:
            if fold_in:
                vectors = self.fold_in(history)
            else:
                assert self.user_factors is not None and users is not None
                vectors = self.user_factors[users]
            items = self.item_factors
        else:
            vectors = np.ones((n, 1), dtype=np.float32)
            items = self.popularity.reshape(-1, 1)
        ids, scores = topk(
            items,
            np.ascontiguousarray(vectors, dtype=np.float32),
            k,
            filter_query_items=history if exclude_seen else None,
        )
        return _mark_missing(ids, scores)

    def _recommend_by_similarity(
        self, history: sp.csr_matrix, k: int, exclude_seen: bool
    ) -> tuple[IntArray, FloatArray]:
        from implicit._nearest_neighbours import NearestNeighboursScorer

        assert self.similarity is not None
        scorer = NearestNeighboursScorer(self.similarity)
        n = history.shape[0]
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        indptr, indices, data = history.indptr, history.indices, history.data
        for row in range(n):
            lo, hi = indptr[row], indptr[row + 1]
            if lo == hi:
                continue
            got_ids, got_scores = scorer.recommend(
                np.array([0, hi - lo], dtype=indptr.dtype),
                indices[lo:hi],
                data[lo:hi],
                K=k + (hi - lo if exclude_seen else 0),
                remove_own_likes=exclude_seen,
            )
            # The scorer pads short lists with zero-scored items, seen ones included.
            keep = got_scores > 0
            if exclude_seen:
                keep &= ~np.isin(got_ids, indices[lo:hi])
            got_ids, got_scores = got_ids[keep][:k], got_scores[keep][:k]
            ids[row, : len(got_ids)] = got_ids
            scores[row, : len(got_ids)] = got_scores
        return ids, scores


def _unit_scale(scores: FloatArray) -> FloatArray:
    """Each row mapped to [0, 1] by its own minimum and maximum (constant rows to 0)."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.0).astype(
        np.float32
    )


def _mark_missing(ids: Any, scores: Any) -> tuple[IntArray, FloatArray]:
    """implicit marks filtered slots with the lowest float; we use -1 and -inf."""
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    missing = scores <= np.finfo(np.float32).min / 2
    ids[missing] = -1
    scores[missing] = -np.inf
    return ids, scores


def put_sparse(out: dict[str, npt.NDArray[Any]], name: str, matrix: sp.spmatrix) -> None:
    csr = sp.csr_matrix(matrix)
    out[f"{name}_data"] = csr.data
    out[f"{name}_indices"] = csr.indices
    out[f"{name}_indptr"] = csr.indptr
    out[f"{name}_shape"] = np.asarray(csr.shape, dtype=np.int64)


def get_sparse(arrays: Mapping[str, npt.NDArray[Any]], name: str) -> sp.csr_matrix:
    try:
        shape = tuple(int(x) for x in arrays[f"{name}_shape"])
        matrix = sp.csr_matrix(
            (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
            shape=shape,
        )
        matrix.check_format(full_check=True)
    except KeyError as exc:
        raise ArtifactError(f"artifact lacks {exc.args[0]}") from exc
    except ValueError as exc:
        raise ArtifactError(f"{name} is not a valid sparse matrix: {exc}") from exc
    return matrix
