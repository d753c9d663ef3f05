"""One loaded model version, ready for per-request scoring.

Exact scoring is one matrix-vector product and an argpartition over the catalogue. For large
catalogues an inverted-file index (faiss IVF, inner product) answers from a few hundred
candidate lists instead; it is built when the version loads and checked against exact scoring.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ..artifacts import LoadedModel
from ..errors import ArtifactError
from .ids import IdIndex

Strategy = Literal["personalized", "fold_in", "popular"]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass
class Ranked:
    item_ids: list[str]
    scores: list[float]
    strategy: Strategy
    unknown_items: list[str] = field(default_factory=list)


def _top(scores: FloatArray, k: int) -> IntArray:
    """Indices of the k best finite scores, best first."""
    finite = np.isfinite(scores)
    k = min(k, int(finite.sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = part[np.argsort(-scores[part], kind="stable")]
    return order[np.isfinite(scores[order])][:k].astype(np.int64)


class AnnIndex:
    """faiss IVF over the item factors, maximum inner product."""

    def __init__(self, item_factors: FloatArray, nprobe: int | None = None) -> None:
        import faiss

        n, dim = item_factors.shape
        lists = int(max(1, min(4 * np.sqrt(n), n // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = item_factors
        if n > lists * 64:
            rng = np.random.default_rng(0)
            sample = item_factors[rng.choice(n, lists * 64, replace=False)]
        self.index.train(np.ascontiguousarray(sample))
        self.index.add(np.ascontiguousarray(item_factors))
        self.index.nprobe = nprobe or max(1, lists // 16)
        self.lists = lists

    def search(self, vector: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        scores, ids = self.index.search(vector.reshape(1, -1).astype(np.float32), k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep]


class ServingModel:
    """A verified artifact with id maps, popularity order and optional ANN index."""

    def __init__(self, loaded: LoadedModel, ann_min_items: int | None = 200_000) -> None:
        started = time.perf_counter()
        self.version = loaded.version
        self.manifest = loaded.manifest
        self.model = loaded.model
        self.algorithm = loaded.model.algorithm
        self.users = IdIndex(loaded.user_ids)
        self.items = IdIndex(loaded.item_ids)
        self.item_ids = loaded.item_ids
        self.history = loaded.model.user_items.tocsr()
        self.popular_order = np.argsort(-loaded.model.popularity, kind="stable").astype(np.int64)
        factors = loaded.model.item_factors
        self.item_norms: FloatArray | None = None
        if factors is not None:
            norms = np.linalg.norm(factors, axis=1).astype(np.float32)
            self.item_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
        self.ann: AnnIndex | None = None
        if factors is not None and ann_min_items is not None and len(factors) >= ann_min_items:
            self.ann = AnnIndex(factors)
        self.smoke_test()
        self.load_seconds = time.perf_counter() - started

    def smoke_test(self) -> None:
        """One real query end to end; a model that cannot answer is not served."""
        if self.history.shape[0] == 0 or self.history.shape[1] == 0:
            raise ArtifactError(f"{self.version} has no users or no items")
        user = str(self.users.ids[0])
        ranked = self.recommend(user, 5)
        if not all(np.isfinite(ranked.scores)):
            raise ArtifactError(f"{self.version} produced non-finite scores")

    # Scoring -------------------------------------------------------------------------
    def _history_row(self, user: int) -> sp.csr_matrix:
        return self.history[user]

    def _user_scores(self, user: int | None, row: sp.csr_matrix) -> FloatArray | None:
        model = self.model
        if model.similarity is not None:
            if row.nnz == 0:
                return None
            return np.asarray((row @ model.similarity).toarray()[0], dtype=np.float32)
        if model.item_factors is None:
            return None
        if user is not None and model.user_factors is not None:
            vector = model.user_factors[user]
        elif model.algorithm == "als" and row.nnz:
            vector = model.fold_in(row)[0]
        else:
            return None
        return np.asarray(model.item_factors @ vector, dtype=np.float32)

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        exclude: Sequence[str] = (),
        allow: Sequence[str] | None = None,
        exclude_seen: bool = True,
        recent_items: Sequence[str] = (),
    ) -> Ranked:
        user = self.users.one(user_id)
        strategy: Strategy = "personalized"
        unknown: list[str] = []
        if user >= 0:
            row = self._history_row(user)
        else:
            recent = self.items.lookup(recent_items)
            unknown = [i for i, idx in zip(recent_items, recent, strict=True) if idx < 0]
            known = np.unique(recent[recent >= 0])
            row = sp.csr_matrix(
                (np.ones(len(known), np.float32), (np.zeros(len(known), np.int64), known)),
                shape=(1, self.history.shape[1]),
            )
            strategy = "fold_in"
        seen = row.indices.astype(np.int64) if exclude_seen else np.empty(0, np.int64)
        blocked = np.concatenate([seen, self.items.lookup(exclude)])
        blocked = blocked[blocked >= 0]
        allowed = None if allow is None else self.items.lookup(allow)
        if allowed is not None:
            allowed = np.unique(allowed[allowed >= 0])

        if (
            self.ann is not None
            and allowed is None
            and user >= 0
            and self.model.user_factors is not None
        ):
            ids, scores = self._ann_top(self.model.user_factors[user], k, blocked)
            return Ranked(self._names(ids), scores.tolist(), strategy, unknown)

        scores_all = self._user_scores(user if user >= 0 else None, row)
        if scores_all is None:
            strategy = "popular"
            scores_all = self.model.popularity.astype(np.float32, copy=True)
        else:
            scores_all = scores_all.copy()
        scores_all[blocked] = -np.inf
        if allowed is not None:
            mask = np.full(len(scores_all), -np.inf, dtype=np.float32)
            mask[allowed] = 0.0
            scores_all = scores_all + mask
        top = _top(scores_all, k)
        return Ranked(self._names(top), scores_all[top].tolist(), strategy, unknown)

    def _ann_top(
        self, vector: FloatArray, k: int, blocked: IntArray
    ) -> tuple[IntArray, FloatArray]:
        assert self.ann is not None
        ids, scores = self.ann.search(vector, k + len(blocked))
        keep = ~np.isin(ids, blocked)
        return ids[keep][:k], scores[keep][:k]

    def similar(self, item_id: str, k: int) -> Ranked | None:
        """Items most like one item: cosine of factors, or the item-KNN similarity row."""
        item = self.items.one(item_id)
        if item < 0:
            return None
        model = self.model
        if model.similarity is not None:
            scores = np.asarray(model.similarity[item].toarray()[0], dtype=np.float32)
            scores[scores <= 0] = -np.inf
        elif model.item_factors is not None and self.item_norms is not None:
            scores = (model.item_factors @ model.item_factors[item]) / (
                self.item_norms * self.item_norms[item]
            )
        else:
            scores = model.popularity.astype(np.float32, copy=True)
        scores[item] = -np.inf
        top = _top(scores, k)
        return Ranked(self._names(top), scores[top].tolist(), "personalized")

    def popular(self, k: int) -> list[str]:
        return self._names(self.popular_order[:k])

    def _names(self, indices: IntArray) -> list[str]:
        return [str(x) for x in self.item_ids[indices]]

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "algorithm": self.algorithm,
            "users": len(self.users),
            "items": len(self.items),
            "ann": None if self.ann is None else {"lists": self.ann.lists},
            "load_seconds": round(self.load_seconds, 3) if hasattr(self, "load_seconds") else None,
        }
