"""The algorithms, their hyperparameters, and fitting them with `implicit`.

Each parameter is declared once with its type, default, bounds and search space, so that the
command line, the hyperparameter search and (through the CRD) the operator agree on them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import ConfigError
from .model import Model, item_weighting

Value = int | float | str


@dataclass(frozen=True)
class Param:
    name: str
    default: Value
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    search: tuple[Value, ...] = ()
    help: str = ""

    def parse(self, raw: Value) -> Value:
        """Coerce to the default's type and check bounds; errors name the parameter."""
        value: Value
        if isinstance(self.default, int):
            text = str(raw).strip()
            if isinstance(raw, float) and raw.is_integer():
                value = int(raw)
            elif text.lstrip("+-").isdigit():
                value = int(text)
            else:
                raise ConfigError(f"{self.name} must be an integer, got {raw!r}")
        elif isinstance(self.default, float):
            try:
                value = float(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{self.name} must be a number, got {raw!r}") from exc
        else:
            value = str(raw)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(self.choices)}, got {raw!r}")
        if isinstance(value, int | float):
            if not np.isfinite(value):
                raise ConfigError(f"{self.name} must be finite, got {raw!r}")
            if self.low is not None and value < self.low:
                raise ConfigError(f"{self.name} must be >= {self.low}, got {raw!r}")
            if self.high is not None and value > self.high:
                raise ConfigError(f"{self.name} must be <= {self.high}, got {raw!r}")
        return value


_FACTORS = Param("factors", 64, 1, 1024, search=(32, 64, 128, 192), help="latent dimensions")
_WEIGHTING = Param(
    "weighting",
    "none",
    choices=("none", "bm25", "tfidf"),
    search=("none", "bm25"),
    help="re-weight the user x item confidences before fitting",
)

ALGORITHMS: dict[str, tuple[Param, ...]] = {
    "als": (
        _FACTORS,
        Param("iterations", 15, 1, 500, search=(10, 15, 25)),
        Param("regularization", 0.01, 0.0, 1000.0, search=(0.001, 0.01, 0.1, 1.0, 10.0)),
        Param("alpha", 1.0, 0.0, 1e6, search=(0.5, 1.0, 2.0, 5.0, 20.0)),
        _WEIGHTING,
    ),
    "bpr": (
        _FACTORS,
        Param("iterations", 100, 1, 10_000, search=(50, 100, 200)),
        Param("learning_rate", 0.01, 1e-6, 10.0, search=(0.005, 0.01, 0.05, 0.1)),
        Param("regularization", 0.01, 0.0, 100.0, search=(0.0001, 0.001, 0.01, 0.1)),
        _WEIGHTING,
    ),
    "itemknn": (
        Param("similarity", "bm25", choices=("cosine", "bm25", "tfidf"), search=("cosine", "bm25")),
        Param("neighbours", 50, 1, 10_000, search=(20, 50, 100, 200, 400)),
        Param("k1", 1.2, 0.0, 100.0, search=(0.6, 1.2, 2.0, 5.0)),
        Param("b", 0.75, 0.0, 1.0, search=(0.25, 0.5, 0.75, 1.0)),
    ),
    "ease": (
        Param(
            "regularization",
            50.0,
            0.0,
            1e7,
            search=(10.0, 20.0, 50.0, 100.0, 200.0, 500.0),
            help="lambda: the ridge penalty on the item-item weights",
        ),
        # Fewer weights kept generalise better on Online Retail: nDCG@10 0.273 dense, 0.278 at
        # 500, 0.281 at 200, 0.286 at 50, 0.290 at 20 (lambda 50, mean of three seeds).
        Param(
            "neighbours",
            50,
            1,
            10_000,
            search=(10, 20, 50, 100, 200),
            help="weights kept per item (the largest by magnitude) in the stored model",
        ),
        Param(
            "binary",
            "true",
            choices=("true", "false"),
            search=("true", "false"),
            help="fit on 0/1 interactions instead of the weighted counts",
        ),
    ),
}


# `--algorithm auto`: tune every family and keep the best on the inner validation split.
# Cheapest first, so a short budget still sees the strongest candidates on Online Retail.
AUTO = "auto"
AUTO_FAMILIES = ("ease", "itemknn", "als", "bpr")


def params_of(algorithm: str) -> tuple[Param, ...]:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[algorithm]


def resolve_params(algorithm: str, given: Mapping[str, Value]) -> dict[str, Value]:
    """Defaults overlaid with the given values, each validated; unknown names are errors."""
    spec = {p.name: p for p in params_of(algorithm)}
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ConfigError(
            f"{algorithm} has no parameter {', '.join(unknown)}; it takes {', '.join(spec)}"
        )
    return {name: p.parse(given.get(name, p.default)) for name, p in spec.items()}


def _threads() -> int:
    return int(os.environ.get("SHOPPING_GUIDE_THREADS", "0"))


def fit(algorithm: str, params: Mapping[str, Value], user_items: sp.csr_matrix, seed: int) -> Model:
    """Fit one model on a user x item confidence matrix (already validated params)."""
    # Import first: a BLAS that loads inside the limit below would escape it.
    import implicit.cpu.als
    import implicit.cpu.bpr
    import implicit.nearest_neighbours  # noqa: F401
    from threadpoolctl import threadpool_limits

    resolved = resolve_params(algorithm, params)
    matrix = user_items.astype(np.float32)
    # implicit parallelises itself; a multi-threaded BLAS underneath only oversubscribes.
    # Its item-KNN converts its own COO intermediate and warns about it: not ours to act on.
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        if algorithm == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            als = AlternatingLeastSquares(
                factors=int(resolved["factors"]),
                iterations=int(resolved["iterations"]),
                regularization=float(resolved["regularization"]),
                alpha=float(resolved["alpha"]),
                random_state=seed,
                num_threads=_threads(),
            )
            weighted, idf, avg_len = item_weighting(matrix, str(resolved["weighting"]))
            als.fit(weighted, show_progress=False)
            return Model.from_factors(
                algorithm, resolved, als.user_factors, als.item_factors, user_items, idf, avg_len
            )
        if algorithm == "bpr":
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            bpr = BayesianPersonalizedRanking(
                factors=int(resolved["factors"]),
                iterations=int(resolved["iterations"]),
                learning_rate=float(resolved["learning_rate"]),
                regularization=float(resolved["regularization"]),
                random_state=seed,
                num_threads=_threads(),
            )
            weighted, idf, avg_len = item_weighting(matrix, str(resolved["weighting"]))
            bpr.fit(weighted, show_progress=False)
            return Model.from_factors(
                algorithm, resolved, bpr.user_factors, bpr.item_factors, user_items, idf, avg_len
            )
        if algorithm == "itemknn":
            from implicit.nearest_neighbours import (
                BM25Recommender,
                CosineRecommender,
                TFIDFRecommender,
            )

            neighbours = int(resolved["neighbours"])
            knn = {
                "cosine": lambda: CosineRecommender(K=neighbours, num_threads=_threads()),
                "tfidf": lambda: TFIDFRecommender(K=neighbours, num_threads=_threads()),
                "bm25": lambda: BM25Recommender(
                    K=neighbours,
                    K1=float(resolved["k1"]),
                    B=float(resolved["b"]),
                    num_threads=_threads(),
                ),
            }[str(resolved["similarity"])]()
            knn.fit(matrix, show_progress=False)
            return Model.from_similarity(algorithm, resolved, knn.similarity, user_items)
    if algorithm == "ease":
        from .ease import fit_ease

        weights = fit_ease(
            matrix,
            float(resolved["regularization"]),
            int(resolved["neighbours"]),
            resolved["binary"] == "true",
        )
        return Model.from_similarity(algorithm, resolved, weights, user_items)
    raise ConfigError(f"unknown algorithm {algorithm!r}")  # pragma: no cover - params_of checks
