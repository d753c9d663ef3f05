"""Scoring many requests together answers each exactly as it would be answered alone, and as a
plain numpy ranking does: same items, same order, each user's own exclusions and filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from shopping_guide.algorithms import fit
from shopping_guide.ann import EF_SEARCH
from shopping_guide.artifacts import LoadedModel
from shopping_guide.catalog import Catalog
from shopping_guide.model import Model
from shopping_guide.serving.scorer import Filters, Query, Ranked, ServingModel, _top

N_USERS, N_ITEMS, FACTORS = 300, 600, 16


def _history(rng: np.random.Generator) -> sp.csr_matrix:
    rows = np.repeat(np.arange(N_USERS), 12)
    cols = rng.integers(0, N_ITEMS, rows.size)
    history = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), (N_USERS, N_ITEMS))
    history.sum_duplicates()
    return history


def _catalog(item_ids: npt.NDArray[np.str_], rng: np.random.Generator) -> Catalog:
    names = np.array(["garden", "kitchen", "lighting"])
    category = rng.integers(0, len(names), N_ITEMS)
    return Catalog(
        item_ids=item_ids,
        titles=np.array([f"item {i}" for i in range(N_ITEMS)]),
        categories=sp.csr_matrix(
            (np.ones(N_ITEMS, np.float32), (np.arange(N_ITEMS), category)),
            shape=(N_ITEMS, len(names)),
        ),
        category_names=names,
        attributes=None,
        price=rng.uniform(1, 20, N_ITEMS).astype(np.float32),
        in_stock=rng.random(N_ITEMS) > 0.3,
    )


def _loaded(model: Model, catalog: Catalog | None = None) -> LoadedModel:
    return LoadedModel(
        version="v-test",
        path=Path("/nonexistent"),
        manifest={},
        model=model,
        user_ids=np.array([f"u{i}" for i in range(N_USERS)]),
        item_ids=np.array([f"i{i}" for i in range(N_ITEMS)]),
        extras={} if catalog is None else catalog.to_arrays(),
    )


@pytest.fixture(scope="module")
def als() -> ServingModel:
    rng = np.random.default_rng(3)
    model = Model.from_factors(
        "als",
        {"regularization": 0.1, "alpha": 1.0},
        rng.standard_normal((N_USERS, FACTORS), dtype=np.float32),
        rng.standard_normal((N_ITEMS, FACTORS), dtype=np.float32),
        _history(rng),
    )
    item_ids = np.array([f"i{i}" for i in range(N_ITEMS)])
    return ServingModel(_loaded(model, _catalog(item_ids, rng)), ann_min_items=None)


def _queries(model: ServingModel) -> list[Query]:
    """Known users with different k and exclusions, beside every path that scores alone."""
    rng = np.random.default_rng(11)
    users = [f"u{u}" for u in rng.integers(0, N_USERS, 40)]
    some = tuple(f"i{i}" for i in range(0, N_ITEMS, 7))
    queries = [Query(u, [1, 5, 10, 40][n % 4]) for n, u in enumerate(users)]
    queries += [
        Query(users[0], 10, exclude=("i1", "i2", "nope", *some[:20])),
        Query(users[1], 10, exclude_seen=False),
        Query(users[2], 25, exclude=some[:5], exclude_seen=False),
        Query(users[3], 10, allow=some),
        Query(users[4], 10, allow=some, exclude=some[:3]),
        Query(users[5], 8, filters=Filters(categories=("kitchen",), max_price=10.0)),
        Query(users[6], 8, filters=Filters(in_stock_only=True, min_price=5.0)),
        Query(users[8], 5, allow=("nope", "i1")),
        Query(users[9], 5, allow=("nope",)),  # nothing left to recommend
        Query("stranger", 6, recent_items=("i3", "i4", "i5", "unknown-item")),
        Query("stranger", 6, recent_items=("i3", "i4", "i5"), exclude_seen=False),
        Query("stranger", 6, recent_items=("i3", "i9"), allow=some, exclude=some[:2]),
        Query("nobody", 5),
        Query(users[7], N_ITEMS + 50),  # more than there are items
    ]
    return queries


def _reference(model: ServingModel, query: Query) -> tuple[list[str], str]:
    """The ranking spelled out in numpy: every item's score, the blocked ones removed."""
    m = model.model
    assert m.item_factors is not None and m.user_factors is not None
    user = int(model.users.lookup([query.user_id])[0])
    if user >= 0:
        seen = model.history[user].indices
        scores, strategy = m.item_factors @ m.user_factors[user], "personalized"
    else:
        known = model.items.lookup(query.recent_items)
        seen = np.unique(known[known >= 0])
        row = sp.csr_matrix((np.ones(len(seen), np.float32), seen, [0, len(seen)]), (1, N_ITEMS))
        if len(seen):
            scores, strategy = m.item_factors @ m.fold_in(row)[0], "fold_in"
        else:
            scores, strategy = m.popularity.astype(np.float32), "popular"
    scores = scores.astype(np.float64)
    if query.exclude_seen:
        scores[seen] = -np.inf
    excluded = model.items.lookup(query.exclude)
    scores[excluded[excluded >= 0]] = -np.inf
    candidates = model.candidates(query.allow, query.filters)
    if candidates is not None:
        scores[~candidates] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][: query.k]
    return [f"i{i}" for i in order], strategy


def _same(a: Ranked, b: Ranked) -> None:
    assert a.item_ids == b.item_ids
    assert a.strategy == b.strategy and a.unknown_items == b.unknown_items
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_batched_answers_equal_alone_and_the_numpy_ranking(als: ServingModel) -> None:
    queries = _queries(als)
    batched = als.recommend_many(queries)
    assert len(batched) == len(queries)
    for query, together in zip(queries, batched, strict=True):
        alone = als.recommend_many([query])[0]
        _same(together, alone)
        expected, strategy = _reference(als, query)
        assert together.item_ids == expected, query
        assert together.strategy == strategy
    assert batched[-1].item_ids and len(batched[-1].item_ids) <= N_ITEMS
    fold_in = batched[-5]
    assert fold_in.strategy == "fold_in" and fold_in.unknown_items == ["unknown-item"]


def test_an_answer_does_not_depend_on_what_else_is_in_the_batch(als: ServingModel) -> None:
    queries = _queries(als)
    forward = als.recommend_many(queries)
    backward = als.recommend_many(queries[::-1])[::-1]
    for a, b in zip(forward, backward, strict=True):
        _same(a, b)
    # The one-request wrapper goes the same way.
    for q, expected in list(zip(queries, forward, strict=True))[-14:]:
        alone = als.recommend(
            q.user_id, q.k, exclude=q.exclude, allow=q.allow, exclude_seen=q.exclude_seen,
            recent_items=q.recent_items, filters=q.filters,
        )  # fmt: skip
        _same(alone, expected)


def test_filters_without_a_catalogue_fail_only_their_own_query() -> None:
    rng = np.random.default_rng(5)
    model = Model.from_factors(
        "als",
        {"regularization": 0.1, "alpha": 1.0},
        rng.standard_normal((N_USERS, FACTORS), dtype=np.float32),
        rng.standard_normal((N_ITEMS, FACTORS), dtype=np.float32),
        _history(rng),
    )
    plain = ServingModel(_loaded(model), ann_min_items=None)
    assert plain.recommend_many([Query("u1", 3)])[0].item_ids
    from shopping_guide.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no filters"):
        plain.recommend_many([Query("u1", 3), Query("u2", 3, filters=Filters(max_price=5.0))])


def test_ann_batched_answers_equal_alone() -> None:
    rng = np.random.default_rng(8)
    n_items, width = 3000, FACTORS
    items = rng.standard_normal((n_items, width), dtype=np.float32)
    rows = np.repeat(np.arange(N_USERS), 12)
    history = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows, rng.integers(0, n_items, rows.size))),
        shape=(N_USERS, n_items),
    )
    model = Model.from_factors(
        "als",
        {"regularization": 0.1, "alpha": 1.0},
        rng.standard_normal((N_USERS, width), dtype=np.float32),
        items,
        history,
    )
    loaded = _loaded(model)
    loaded.item_ids = np.array([f"i{i}" for i in range(n_items)])
    served = ServingModel(loaded, ann_min_items=0)
    exact = ServingModel(loaded, ann_min_items=None)
    assert served.ann is not None
    queries = [Query(f"u{u}", [3, 10, 50][u % 3]) for u in range(0, 120)]
    queries += [
        Query("u1", 10, exclude=tuple(f"i{i}" for i in range(0, 3000, 11))),  # beyond efSearch
        Query("u2", EF_SEARCH + 20),
        Query("u3", 10, exclude_seen=False),
        Query("stranger", 5, recent_items=("i1", "i2")),  # folded in: exact, as alone
    ]
    batched = served.recommend_many(queries)
    hits = 0
    for query, together in zip(queries, batched, strict=True):
        _same(together, served.recommend_many([query])[0])
        blocked = set(query.exclude) | (
            {f"i{i}" for i in history[int(query.user_id[1:])].indices}
            if query.user_id.startswith("u") and query.exclude_seen
            else set()
        )
        assert not blocked & set(together.item_ids)
        assert len(together.item_ids) == query.k
        hits += len(set(together.item_ids) & set(exact.recommend_many([query])[0].item_ids))
    assert hits / sum(q.k for q in queries) > 0.9  # still a good approximation


@pytest.mark.parametrize("algorithm", ["itemknn", "bpr"])
def test_other_models_score_alone_inside_a_batch(algorithm: str) -> None:
    rng = np.random.default_rng(2)
    history = _history(rng)
    params = {"neighbours": 20} if algorithm == "itemknn" else {"factors": 8, "iterations": 5}
    model = fit(algorithm, params, history, seed=1)
    served = ServingModel(_loaded(model), ann_min_items=None)
    queries = [Query(f"u{u}", 5, exclude=("i1",)) for u in range(30)]
    queries += [Query("stranger", 5, recent_items=("i1", "i2")), Query("nobody", 4)]
    batched = served.recommend_many(queries)
    for query, together in zip(queries, batched, strict=True):
        _same(together, served.recommend_many([query])[0])
        assert "i1" not in together.item_ids
    if algorithm == "bpr":  # a BPR model cannot fold in: the popular fallback
        assert batched[-2].strategy == "popular"
    else:
        assert batched[-2].strategy == "fold_in"
    assert batched[-1].strategy == "popular"


def test_hybrid_models_score_alone_inside_a_batch(als: ServingModel) -> None:
    rng = np.random.default_rng(4)
    content = sp.random(N_ITEMS, N_ITEMS, density=0.02, random_state=4, dtype=np.float32)
    model = Model.from_factors(
        "als",
        {"regularization": 0.1, "alpha": 1.0},
        rng.standard_normal((N_USERS, FACTORS), dtype=np.float32),
        rng.standard_normal((N_ITEMS, FACTORS), dtype=np.float32),
        _history(rng),
    )
    model.content_similarity, model.content_weight = sp.csr_matrix(content), 0.5
    served = ServingModel(_loaded(model), ann_min_items=None)
    queries = [Query(f"u{u}", 7) for u in range(20)]
    batched = served.recommend_many(queries)
    for query, together in zip(queries, batched, strict=True):
        _same(together, served.recommend_many([query])[0])
        user = int(query.user_id[1:])
        dense = model.score(np.array([user]), served.history[user])[0]
        dense[served.history[user].indices] = -np.inf
        assert together.item_ids[0] == f"i{int(np.argmax(dense))}"


def test_equal_scores_rank_in_item_order_on_every_cpu() -> None:
    """numpy's selection leaves ties in an order its SIMD kernels choose, which differs from
    one CPU to another: a model must answer the same on every node."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, 5_000).astype(np.float32)  # counts: thousands of ties
    scores[rng.integers(0, 5_000, 50)] = -np.inf
    for k in (1, 10, 100, 1_300):
        top = _top(scores, k)
        expected = np.argsort(-scores, kind="stable")[:k]
        assert top.tolist() == expected.tolist(), k
