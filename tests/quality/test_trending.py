"""Trending now on the real Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.online_retail import train_json

pytestmark = pytest.mark.quality


def test_trending_items_keep_rising_where_popular_ones_do_not(tmp_path: Path) -> None:
    result = train_json(tmp_path, "--algorithm", "itemknn", "--time-col", "InvoiceDate")
    found = result["trending"]
    assert isinstance(found, dict)
    # Measured at the defaults (a week against the four before it, at least 10 lines): 114
    # items trend in the last week; as of the week before, the top 20 trending items went
    # on at 2.3 times their old rate the next week, the 20 most popular at 0.67 of theirs.
    assert 50 <= found["items"] <= 300, found
    lift = found["evaluation"]["next_window_lift"]
    assert lift["trending"] > 1.5 and lift["trending"] > 2 * lift["popular"], lift
