"""Hyperparameter search: defaults first, fixed params kept, budget respected."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from shopping_guide.algorithms import AUTO_FAMILIES, resolve_params
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import build_interactions
from shopping_guide.tuning import candidates, search, search_families


def test_defaults_come_first_and_fixed_params_stay() -> None:
    drawn = list(itertools.islice(candidates("als", {"factors": 16}, "random", seed=0), 12))
    assert drawn[0] == resolve_params("als", {"factors": 16})
    assert all(c["factors"] == 16 for c in drawn)
    assert len({tuple(sorted(c.items())) for c in drawn}) == len(drawn)


def test_grid_is_exhaustive_and_finite() -> None:
    grid = list(candidates("itemknn", {"similarity": "cosine", "k1": 1.2, "b": 0.75}, "grid", 0))
    assert len(grid) == 5  # the five neighbour counts, defaults (50) among them
    assert sorted(c["neighbours"] for c in grid) == [20, 50, 100, 200, 400]


def test_budget_stops_the_search_after_the_first_trial(two_taste_csv: Path) -> None:
    data = build_interactions(load_events(two_taste_csv, EventSchema()))
    ticks = itertools.count(step=100.0)
    found = search(
        "itemknn",
        {},
        data,
        split_kind="random",
        fraction=0.2,
        metric="ndcg@5",
        k=5,
        seed=0,
        budget_seconds=150.0,
        max_trials=50,
        clock=lambda: next(ticks),
    )
    assert len(found.trials) == 1 and found.stopped_by_budget
    assert found.best == resolve_params("itemknn", {})


def test_auto_tries_every_family_and_keeps_the_best(two_taste_csv: Path) -> None:
    data = build_interactions(load_events(two_taste_csv, EventSchema()))
    options: dict[str, Any] = {
        "split_kind": "random", "fraction": 0.2, "metric": "ndcg@5", "k": 5, "seed": 0,
    }  # fmt: skip
    found = search_families(
        AUTO_FAMILIES, data, budget_seconds=600.0, max_trials=len(AUTO_FAMILIES) * 2, **options
    )
    assert set(found.families) == set(AUTO_FAMILIES)
    assert all(f["trials"] == 2 for f in found.families.values())
    best = max(AUTO_FAMILIES, key=lambda f: found.families[f]["best_validation"])
    assert found.algorithm == best
    assert round(found.best_score, 6) == max(f["best_validation"] for f in found.families.values())
    # The winner's parameters are its own family's, the same search would choose them alone.
    alone = search(best, {}, data, budget_seconds=600.0, max_trials=2, **options)
    assert found.best == alone.best


def test_a_short_budget_still_tries_each_familys_defaults(two_taste_csv: Path) -> None:
    data = build_interactions(load_events(two_taste_csv, EventSchema()))
    ticks = itertools.count(step=100.0)
    found = search_families(
        AUTO_FAMILIES, data, budget_seconds=1.0, max_trials=40, clock=lambda: next(ticks),
        split_kind="random", fraction=0.2, metric="ndcg@5", k=5, seed=0,
    )  # fmt: skip
    assert [f["trials"] for f in found.families.values()] == [1] * len(AUTO_FAMILIES)
    assert found.stopped_by_budget
    assert found.best == resolve_params(found.algorithm, {})
