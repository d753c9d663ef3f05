"""Model quality on the real Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.online_retail import train_json

pytestmark = pytest.mark.quality


@pytest.mark.parametrize("algorithm", ["als", "itemknn", "ease"])
def test_beats_popularity_three_times_on_ndcg(algorithm: str, tmp_path: Path) -> None:
    result = train_json(tmp_path, "--algorithm", algorithm)
    ndcg = result["metrics"]["ndcg@10"]  # type: ignore[index]
    popular = result["baseline"]["popularity"]["ndcg@10"]  # type: ignore[index]
    assert popular > 0.03  # the baseline is real, not a broken zero
    assert ndcg >= 3 * popular, (ndcg, popular)
    data = result["data"]
    assert data["users"] > 4000 and data["items"] > 3500  # type: ignore[index]
    assert data["skipped_by_reason"] == {"CustomerID: missing value": 135_080}  # type: ignore[index]


def test_bought_together_beats_popularity_and_similar_items_on_held_out_baskets(
    tmp_path: Path,
) -> None:
    result = train_json(tmp_path, "--algorithm", "als", "--basket-col", "InvoiceNo")
    found: dict[str, Any] = result["bought_together"]  # type: ignore[assignment]
    ours, baseline = found["metrics"], found["baseline"]
    assert found["test_baskets"] > 3000
    # Measured: hit rate@10 0.374 (EASE over baskets) vs popularity 0.053 and ALS's similar
    # items 0.192; nDCG@10 0.241 vs 0.028 and 0.119.
    assert ours["hit_rate@10"] > 0.33, ours
    assert ours["hit_rate@10"] > 5 * baseline["popularity"]["hit_rate@10"]
    assert ours["ndcg@10"] > 1.5 * baseline["similar_items"]["ndcg@10"]
