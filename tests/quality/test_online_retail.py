"""Model quality on the real Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33)."""

from __future__ import annotations

from pathlib import Path

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
