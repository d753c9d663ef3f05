"""Aggregation into a CSR matrix, filters, decay, and the holdout splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from shopping_guide.errors import ConfigError, DataError
from shopping_guide.events import Events
from shopping_guide.interactions import build_interactions
from shopping_guide.splits import split


def make_events(
    pairs: list[tuple[str, str]],
    weights: list[float] | None = None,
    stamps: list[int] | None = None,
) -> Events:
    return Events(
        users=pa.array([u for u, _ in pairs]),
        items=pa.array([i for _, i in pairs]),
        weight=np.asarray(weights or [1.0] * len(pairs), dtype=np.float64),
        timestamp=None if stamps is None else np.asarray(stamps, dtype=np.int64),
        rows_read=len(pairs),
        skipped=Counter(),
        filtered=0,
    )


def dense(data: object) -> dict[tuple[str, str], float]:
    out = {}
    coo = data.matrix.tocoo()  # type: ignore[attr-defined]
    for r, c, v in zip(coo.row, coo.col, coo.data, strict=True):
        out[(data.user_ids[r], data.item_ids[c])] = float(v)  # type: ignore[attr-defined]
    return out


def test_sums_duplicate_pairs_and_keeps_string_ids() -> None:
    events = make_events([("u1", "007"), ("u1", "007"), ("u2", "x")], [1.0, 2.5, 4.0])
    data = build_interactions(events)
    assert dense(data) == {("u1", "007"): 3.5, ("u2", "x"): 4.0}
    assert data.matrix.dtype == np.float32
    assert data.item_ids.dtype.kind == "U"


def test_exclude_items_and_min_user_items() -> None:
    pairs = [("u1", "a"), ("u1", "b"), ("u1", "POST"), ("u2", "a"), ("u2", "POST")]
    data = build_interactions(make_events(pairs), exclude_items=["POST"], min_user_items=2)
    assert dense(data) == {("u1", "a"): 1.0, ("u1", "b"): 1.0}
    assert list(data.user_ids) == ["u1"]


def test_time_decay_halves_weight_per_half_life() -> None:
    day = 86_400
    events = make_events([("u", "old"), ("u", "new")], stamps=[0, 10 * day])
    data = build_interactions(events, half_life_days=10)
    assert dense(data) == pytest.approx({("u", "old"): 0.5, ("u", "new"): 1.0})
    assert sorted(data.last_seen.tolist()) == [0, 10 * day]  # type: ignore[union-attr]


def test_decay_without_time_is_an_error() -> None:
    with pytest.raises(DataError, match="time column"):
        build_interactions(make_events([("u", "i")]), half_life_days=3)


def test_scales() -> None:
    events = make_events([("u", "i")], [7.0])
    assert dense(build_interactions(events, scale="binary")) == {("u", "i"): 1.0}
    assert dense(build_interactions(events, scale="log1p")) == pytest.approx(
        {("u", "i"): np.log(8.0)}
    )


def test_fingerprint_depends_on_content_only() -> None:
    a = build_interactions(make_events([("u", "i"), ("v", "j")]))
    b = build_interactions(make_events([("u", "i"), ("v", "j")]))
    c = build_interactions(make_events([("u", "i"), ("v", "k")]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def _many(users: int = 50, items_per_user: int = 10) -> Events:
    pairs = [(f"u{u}", f"i{(u + j) % 40}") for u in range(users) for j in range(items_per_user)]
    stamps = [j for _ in range(users) for j in range(items_per_user)]
    return make_events(pairs, stamps=stamps)


def test_random_split_holds_out_a_fraction_of_each_user() -> None:
    data = build_interactions(_many())
    parts = split(data, "random", 0.2, seed=1)
    assert parts.train.nnz + parts.test.nnz == data.nnz
    assert (np.diff(parts.test.indptr) == 2).all()  # 20 % of 10
    overlap = parts.train.matrix.multiply(parts.test)
    assert overlap.nnz == 0
    again = split(data, "random", 0.2, seed=1)
    assert (again.test != parts.test).nnz == 0  # seeded
    other = split(data, "random", 0.2, seed=2)
    assert (other.test != parts.test).nnz > 0


def test_single_item_users_stay_in_training() -> None:
    data = build_interactions(make_events([("solo", "a"), ("u", "a"), ("u", "b")]))
    parts = split(data, "random", 0.5, seed=0)
    solo = list(data.user_ids).index("solo")
    assert parts.test[solo].nnz == 0 and parts.train.matrix[solo].nnz == 1


def test_time_split_holds_out_the_latest_items() -> None:
    data = build_interactions(_many())
    parts = split(data, "time", 0.2, seed=0)
    # Every user's items were stamped 0..9 in order: the held-out ones are those at 8 and 9.
    train_stamps = parts.train.last_seen
    assert train_stamps is not None and train_stamps.max() == 7
    assert len(train_stamps) == parts.train.nnz


def test_time_split_needs_time() -> None:
    data = build_interactions(make_events([("u", "a"), ("u", "b")]))
    with pytest.raises(ConfigError, match="time column"):
        split(data, "time")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split(data, "random", 1.5)
