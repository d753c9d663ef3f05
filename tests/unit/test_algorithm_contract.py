"""One contract, run against every algorithm, on data with a known right answer."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from shopping_guide.algorithms import ALGORITHMS, Value, fit, resolve_params
from shopping_guide.artifacts import ModelStore
from shopping_guide.errors import ConfigError
from shopping_guide.evaluation import evaluate, sample_users
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import Interactions, build_interactions
from shopping_guide.model import Model
from shopping_guide.splits import split


@pytest.fixture
def two_tastes(two_taste_csv: Path) -> Interactions:
    return build_interactions(load_events(two_taste_csv, EventSchema()))


class AlgorithmContract:
    algorithm: ClassVar[str]
    params: ClassVar[dict[str, Value]] = {}

    def fit(self, data: Interactions, seed: int = 7) -> Model:
        return fit(self.algorithm, self.params, data.matrix, seed)

    def test_recommends_the_missing_item_of_the_users_own_taste(
        self, two_tastes: Interactions
    ) -> None:
        model = self.fit(two_tastes)
        users = np.arange(two_tastes.shape[0])
        ids, scores = model.recommend(users, two_tastes.matrix, k=1)
        groups = np.array([u[0] for u in two_tastes.user_ids])
        top = np.array([two_tastes.item_ids[i][0] for i in ids[:, 0]])
        assert (top == groups).mean() == 1.0
        assert np.isfinite(scores).all()

    def test_never_recommends_seen_items(self, two_tastes: Interactions) -> None:
        model = self.fit(two_tastes)
        users = np.arange(two_tastes.shape[0])
        ids, _ = model.recommend(users, two_tastes.matrix, k=5)
        seen = two_tastes.matrix[users[:, None], np.maximum(ids, 0)].toarray()
        assert not seen[ids >= 0].any()

    def test_same_seed_same_model(self, two_tastes: Interactions) -> None:
        users = np.arange(two_tastes.shape[0])
        first, _ = self.fit(two_tastes).recommend(users, two_tastes.matrix, k=3)
        second, _ = self.fit(two_tastes).recommend(users, two_tastes.matrix, k=3)
        assert (first == second).all()

    def test_beats_popularity_on_a_holdout(self, two_tastes: Interactions) -> None:
        parts = split(two_tastes, "random", 0.2, seed=3)
        users = sample_users(parts, None, 0)
        model = fit(self.algorithm, self.params, parts.train.matrix, 7)
        ours = evaluate(model, parts, users, 5)
        popular = evaluate(Model.popularity_baseline(parts.train.matrix), parts, users, 5)
        assert ours["ndcg@5"] > popular["ndcg@5"]

    def test_store_round_trip_scores_identically(
        self, two_tastes: Interactions, tmp_path: Path
    ) -> None:
        model = self.fit(two_tastes)
        store = ModelStore(tmp_path)
        version, _ = store.write(model, two_tastes.user_ids, two_tastes.item_ids, {})
        loaded = store.load(version)
        users = np.arange(two_tastes.shape[0])
        before = model.recommend(users, two_tastes.matrix, k=4)
        after = loaded.model.recommend(users, two_tastes.matrix, k=4)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_allclose(before[1], after[1])
        assert list(loaded.item_ids) == list(two_tastes.item_ids)
        assert loaded.manifest["params"] == resolve_params(self.algorithm, self.params)


class TestALS(AlgorithmContract):
    algorithm = "als"
    params: ClassVar[dict[str, Value]] = {"factors": 4, "iterations": 15, "regularization": 0.1}

    def test_fold_in_matches_the_trained_users(self, two_tastes: Interactions) -> None:
        model = self.fit(two_tastes)
        users = np.arange(two_tastes.shape[0])
        trained, _ = model.recommend(users, two_tastes.matrix, k=1)
        folded, _ = model.recommend(None, two_tastes.matrix, k=1, fold_in=True)
        assert (trained == folded).mean() > 0.95


class TestALSWithBM25(TestALS):
    params: ClassVar[dict[str, Value]] = {
        "factors": 4,
        "iterations": 15,
        "regularization": 0.1,
        "weighting": "bm25",
    }


class TestBPR(AlgorithmContract):
    algorithm = "bpr"
    params: ClassVar[dict[str, Value]] = {"factors": 8, "iterations": 300, "learning_rate": 0.05}

    @pytest.fixture(autouse=True)
    def one_thread(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # BPR's SGD is only reproducible on one thread (Hogwild updates race otherwise).
        monkeypatch.setenv("SHOPPING_GUIDE_THREADS", "1")


class TestItemKNNCosine(AlgorithmContract):
    algorithm = "itemknn"
    params: ClassVar[dict[str, Value]] = {"similarity": "cosine", "neighbours": 20}


class TestItemKNNBM25(AlgorithmContract):
    algorithm = "itemknn"
    params: ClassVar[dict[str, Value]] = {"similarity": "bm25", "neighbours": 20}


class TestEASE(AlgorithmContract):
    algorithm = "ease"
    params: ClassVar[dict[str, Value]] = {"regularization": 5.0, "neighbours": 20}


class TestEASEOnCounts(AlgorithmContract):
    algorithm = "ease"
    params: ClassVar[dict[str, Value]] = {"regularization": 5.0, "binary": "false"}


@pytest.mark.parametrize(
    ("algorithm", "params", "message"),
    [
        ("als", {"factors": "many"}, "factors must be an integer"),
        ("als", {"factors": "0"}, "factors must be >= 1"),
        ("als", {"alpha": "nan"}, "alpha must be finite"),
        ("als", {"neighbours": "5"}, "als has no parameter neighbours"),
        ("itemknn", {"similarity": "jaccard"}, "similarity must be one of cosine, bm25, tfidf"),
        ("ease", {"binary": "yes"}, "binary must be one of true, false"),
        ("ease", {"factors": 8}, "ease has no parameter factors"),
        ("svd", {}, "unknown algorithm 'svd'"),
    ],
)
def test_parameters_are_validated_with_clear_messages(
    algorithm: str, params: dict[str, Value], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_params(algorithm, params)


def test_every_algorithm_has_a_search_space() -> None:
    for algorithm, params in ALGORITHMS.items():
        assert any(p.search for p in params), algorithm
        for p in params:
            for value in p.search:
                assert p.parse(value) == value
