"""Hyperparameter search: defaults first, fixed params kept, budget respected."""

from __future__ import annotations

import itertools
from pathlib import Path

from shopping_guide.algorithms import resolve_params
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import build_interactions
from shopping_guide.tuning import candidates, search


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
