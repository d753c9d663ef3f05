"""Trending now: the items whose rate of interactions rises fastest, from event timestamps.

The recent window (hours to days) is set against the baseline window just before it: an item
trends when it was interacted with more often lately than its own baseline rate predicts,

    score = (recent + prior) / (baseline * window / baseline_window + prior),

by at least `min_lift` (a steady item's score wobbles around 1), and at least `min_count`
times in the window, so that two clicks on a quiet item do not trend.
The prior damps new items (no baseline): they need several interactions to rise far. The
window ends at the newest event of the data, not the wall clock, so a run is reproducible.

The result is a small array set in the model version's artifacts (`trending_*`), recomputed
by `shopping-guide refresh-trending` from fresher events without a retrain
(`trending_refresh.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError

HOUR = 3600
DEFAULT_WINDOW_HOURS = 168.0
DEFAULT_BASELINE_HOURS = 672.0
DEFAULT_MIN_COUNT = 10
DEFAULT_PRIOR = 5.0
# How far above its usual rate an item must be: a steady item wobbles around 1.
DEFAULT_MIN_LIFT = 1.5
# How many trending items a version keeps (its artifact stays small).
MAX_ITEMS = 1000
PREFIX = "trending_"


@dataclass(frozen=True)
class TrendingConfig:
    window_hours: float = DEFAULT_WINDOW_HOURS
    baseline_hours: float = DEFAULT_BASELINE_HOURS
    min_count: int = DEFAULT_MIN_COUNT
    prior: float = DEFAULT_PRIOR
    min_lift: float = DEFAULT_MIN_LIFT

    def __post_init__(self) -> None:
        if not 0 < self.window_hours <= 24 * 365:
            raise ConfigError("trending window must be between 0 and 8760 hours")
        if self.baseline_hours <= 0:
            raise ConfigError("trending baseline window must be positive")
        if self.min_count < 1:
            raise ConfigError("trending min count must be at least 1")
        if self.prior <= 0:
            raise ConfigError("trending prior must be positive")
        if self.min_lift < 1:
            raise ConfigError("trending min lift must be at least 1")


@dataclass(frozen=True)
class Trending:
    """Trending items, best first: item indices, scores, and the counts behind them."""

    items: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    recent: npt.NDArray[np.int64]
    baseline: npt.NDArray[np.int64]
    window_end: int  # unix seconds: the newest event
    window_hours: float

    def __len__(self) -> int:
        return len(self.items)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{PREFIX}items": self.items,
            f"{PREFIX}scores": self.scores,
            f"{PREFIX}recent": self.recent,
            f"{PREFIX}baseline": self.baseline,
            f"{PREFIX}window": np.array([self.window_end, self.window_hours], np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> Trending | None:
        if f"{PREFIX}items" not in arrays:
            return None
        window = arrays[f"{PREFIX}window"]
        return cls(
            items=arrays[f"{PREFIX}items"].astype(np.int64),
            scores=arrays[f"{PREFIX}scores"].astype(np.float32),
            recent=arrays[f"{PREFIX}recent"].astype(np.int64),
            baseline=arrays[f"{PREFIX}baseline"].astype(np.int64),
            window_end=int(window[0]),
            window_hours=float(window[1]),
        )


def compute(
    items: npt.NDArray[np.int64],
    timestamps: npt.NDArray[np.int64],
    n_items: int,
    config: TrendingConfig,
    end: int | None = None,
) -> Trending:
    """Trending items of events (`items[i]` at `timestamps[i]`; negative items are ignored),
    for the window that ends at `end` (default: the newest event)."""
    known = items >= 0
    items, timestamps = items[known], timestamps[known]
    if end is None:
        end = int(timestamps.max()) if len(timestamps) else 0
    window = config.window_hours * HOUR
    start = end - window
    base_start = start - config.baseline_hours * HOUR
    in_recent = (timestamps > start) & (timestamps <= end)
    in_base = (timestamps > base_start) & (timestamps <= start)
    recent = np.bincount(items[in_recent], minlength=n_items).astype(np.int64)
    baseline = np.bincount(items[in_base], minlength=n_items).astype(np.int64)
    expected = baseline * (config.window_hours / config.baseline_hours)
    scores = ((recent + config.prior) / (expected + config.prior)).astype(np.float32)
    rising = (recent >= config.min_count) & (scores >= config.min_lift)
    chosen = np.flatnonzero(rising)
    # Best first; ties by the larger recent count, then by index (stable across runs).
    order = np.lexsort((chosen, -recent[chosen], -scores[chosen]))[:MAX_ITEMS]
    chosen = chosen[order].astype(np.int64)
    return Trending(
        chosen, scores[chosen], recent[chosen], baseline[chosen], end, config.window_hours
    )


def evaluate(
    items: npt.NDArray[np.int64],
    timestamps: npt.NDArray[np.int64],
    n_items: int,
    config: TrendingConfig,
    top: int = 20,
) -> dict[str, Any]:
    """Does trending foresee the next window? Trending is computed as of one window before
    the data's end, and so is popularity (all interactions up to then); then, for the top
    `top` of each, the interactions per item in the window that followed, and that count
    over the item's count in the window before (below 1: the item cooled down)."""
    known = items >= 0
    items, timestamps = items[known], timestamps[known]
    if not len(timestamps):
        return {"items": 0}
    end = int(timestamps.max())
    cutoff = end - int(config.window_hours * HOUR)
    past = timestamps <= cutoff
    found = compute(items[past], timestamps[past], n_items, config, end=cutoff)
    popular = np.argsort(-np.bincount(items[past], minlength=n_items), kind="stable")[:top]
    in_base = past & (timestamps > cutoff - (config.window_hours + config.baseline_hours) * HOUR)
    in_base &= timestamps <= cutoff - config.window_hours * HOUR
    base_rate = np.bincount(items[in_base], minlength=n_items) * (
        config.window_hours / config.baseline_hours
    )
    following = np.bincount(items[~past], minlength=n_items)
    picked = found.items[:top]

    def rate(chosen: npt.NDArray[np.int64]) -> float:
        return round(float(following[chosen].mean()), 3) if len(chosen) else 0.0

    def lift(chosen: npt.NDArray[np.int64]) -> float:
        expected = float(base_rate[chosen].sum()) + config.prior * len(chosen)
        return round(float(following[chosen].sum()) / expected, 3) if len(chosen) else 0.0

    return {
        "items": len(found),
        "top": len(picked),
        "next_window_per_item": {"trending": rate(picked), "popular": rate(popular)},
        "next_window_lift": {"trending": lift(picked), "popular": lift(popular)},
    }
