"""Trending now: rising rates against each item's own baseline, with a floor on counts."""

from __future__ import annotations

import numpy as np
import pytest

from shopping_guide.errors import ConfigError
from shopping_guide.trending import HOUR, Trending, TrendingConfig, compute, evaluate

DAY = 24 * HOUR
END = 100 * DAY


def events(*groups: tuple[int, int, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(item, count, first day, last day) groups: `count` events spread over those days."""
    items, stamps = [], []
    for item, count, first, last in groups:
        items += [item] * count
        stamps += list(np.linspace(END - first * DAY, END - last * DAY, count).astype(np.int64))
    return np.asarray(items, np.int64), np.asarray(stamps, np.int64)


CONFIG = TrendingConfig(window_hours=24 * 7, baseline_hours=24 * 28, min_count=5, prior=1.0)


def test_an_item_rising_over_its_own_baseline_trends_and_a_steady_bestseller_does_not() -> None:
    items, stamps = events(
        (0, 400, 35, 0),  # bestseller, steady: ~80 a week all along
        (1, 8, 34, 8), (1, 40, 6.9, 0),  # quiet, then 40 this week: trends
        (2, 4, 6, 0),  # new and rising, but below the floor of 5
    )  # fmt: skip
    found = compute(items, stamps, 3, CONFIG)
    assert found.items.tolist() == [1]
    assert found.recent.tolist() == [40] and found.baseline.tolist() == [8]
    # (40 + 1) / (8 * 7/28 + 1): the window's count over the baseline's weekly rate.
    assert found.scores[0] == pytest.approx(41 / 3)
    assert found.window_end == END


def test_items_are_ranked_by_how_fast_they_rise_and_ignore_unknown_items() -> None:
    items, stamps = events(
        (0, 28, 35, 8), (0, 30, 6, 0),  # 7 a week before, 30 now
        (1, 28, 35, 8), (1, 60, 6, 0),  # 7 a week before, 60 now
        (-1, 500, 6, 0),  # items the model left out never count
    )  # fmt: skip
    found = compute(items, stamps, 2, CONFIG)
    assert found.items.tolist() == [1, 0]
    assert found.scores[0] > found.scores[1] > 1


def test_the_window_is_configurable() -> None:
    items, stamps = events((0, 84, 42, 0), (0, 10, 1.5, 0))  # 2 a day, and a burst of 10
    short = compute(items, stamps, 1, TrendingConfig(48, 24 * 28, 5, 1.0))
    long = compute(items, stamps, 1, TrendingConfig(24 * 14, 24 * 28, 5, 1.0))
    assert short.items.tolist() == [0]
    # Over two weeks the burst is about the item's usual rate: nothing trends.
    assert long.items.tolist() == []


def test_the_arrays_round_trip() -> None:
    items, stamps = events((0, 8, 35, 8), (0, 40, 6, 0))
    found = compute(items, stamps, 1, CONFIG)
    back = Trending.from_arrays(found.to_arrays())
    assert back is not None
    assert back.items.tolist() == found.items.tolist()
    assert back.window_end == END and back.window_hours == 168.0
    assert Trending.from_arrays({}) is None


def test_evaluation_compares_the_next_window_with_popularity() -> None:
    items, stamps = events(
        (0, 500, 42, 0),  # steady bestseller
        (1, 8, 42, 15), (1, 40, 13.9, 7), (1, 45, 6.9, 0),  # rose last week, still high
    )  # fmt: skip
    report = evaluate(items, stamps, 2, CONFIG, top=1)
    assert report["items"] == 1
    assert report["next_window_per_item"]["trending"] == 45
    # Item 1 kept far above its old rate; the bestseller stayed at its own.
    assert report["next_window_lift"]["trending"] > 5
    assert report["next_window_lift"]["popular"] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_hours": 0},
        {"min_count": 0},
        {"baseline_hours": -1},
        {"prior": 0},
        {"min_lift": 0.5},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TrendingConfig(**kwargs)  # type: ignore[arg-type]
