"""The approximate index: recall against exact scoring, and its trip through the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopping_guide.ann import AnnIndex
from shopping_guide.artifacts import ModelStore
from shopping_guide.cli import main
from shopping_guide.serving.scorer import ServingModel


def test_recall_at_10_against_exact_inner_product() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((5000, 32), dtype=np.float32)
    queries = rng.standard_normal((200, 32), dtype=np.float32)
    index = AnnIndex.from_bytes(AnnIndex.build(items).to_bytes())
    assert index.size == 5000
    hits = 0
    for query in queries:
        exact = set(np.argsort(-(items @ query))[:10].tolist())
        found, scores = index.search(query, 10)
        hits += len(exact & set(found.tolist()))
        np.testing.assert_allclose(scores, items[found] @ query, rtol=1e-4)
    assert hits / 2000 >= 0.95


def test_trainer_stores_the_index_and_the_server_uses_it(
    two_taste_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "models"
    args = ["train", "--events", str(two_taste_csv), "--model-store", str(store), "--param",
            "factors=4", "--param", "regularization=0.1", "--ann-min-items", "10"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (Path(result["artifact"]) / "ann_index.npy").is_file()
    loaded = ModelStore(store).load(result["version"])
    approximate = ServingModel(loaded)
    loaded.model.ann_index = None
    exact = ServingModel(loaded, ann_min_items=None)
    assert approximate.ann is not None and exact.ann is None
    for user in ("a-user-0", "a-user-3", "b-user-7"):
        assert approximate.recommend(user, 1).item_ids == exact.recommend(user, 1).item_ids
