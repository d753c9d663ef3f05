"""Frequently bought together: baskets from events, Jaccard and EASE weights, the held-out
basket evaluation, and the trainer's result and artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from shopping_guide.artifacts import ModelStore
from shopping_guide.baskets import (
    BasketHoldout,
    basket_matrix,
    evaluate_baskets,
    fit_bought_together,
    jaccard,
    popularity_scorer,
    split_baskets,
)
from shopping_guide.cli import main


def test_baskets_from_rows_skip_missing_ids_and_unknown_items() -> None:
    baskets = pa.array(["o1", "o1", "o1", None, "o2", "o2"])
    items = pa.array(["a", "b", "a", "c", "c", "zz"])
    found = basket_matrix(baskets, items, np.array(["a", "b", "c"]))
    assert found.matrix.toarray().tolist() == [[1, 1, 0], [0, 0, 1]]
    assert found.of_row.tolist() == [0, 0, 0, -1, 1, -1]


def test_jaccard_weights_pairs_by_their_shared_baskets_not_by_popularity() -> None:
    # "hit" is in every basket; "hook" and "hanger" are bought together whenever bought.
    rows = [["hit", "hook", "hanger"]] * 3 + [["hit", "mug"]] * 2 + [["hit", "hook"]]
    rows += [["hit", "plate"], ["hit", "mug", "plate"]]
    names = np.array(["hit", "hook", "hanger", "mug", "plate"])
    matrix = _matrix(rows, names)
    weights = jaccard(matrix, neighbours=10, min_count=1).toarray()
    hook = 1
    assert weights[hook].argmax() == 2  # hanger (3 of 4 hook baskets), not the bestseller
    np.testing.assert_allclose(weights[hook, 2], 3 / 4)
    np.testing.assert_allclose(weights[hook, 0], 4 / 8)
    assert np.all(np.diag(weights) == 0)
    # Pairs seen together fewer than min_count times carry no weight; rows keep their best.
    assert jaccard(matrix, neighbours=10, min_count=2).toarray()[3, 4] == 0
    assert jaccard(matrix, neighbours=1, min_count=1).getnnz(axis=1).max() == 1


def test_auto_is_ease_when_it_fits_and_jaccard_when_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [["a", "b"], ["a", "b", "c"], ["b", "c"], ["c", "d"], ["a", "d"]] * 4
    matrix = _matrix(rows, np.array(["a", "b", "c", "d"]))
    weights, kind = fit_bought_together(matrix, "auto", neighbours=3)
    assert kind == "ease" and weights.shape == (4, 4)
    monkeypatch.setenv("SHOPPING_GUIDE_MEMORY_BYTES", "10")
    _, kind = fit_bought_together(matrix, "auto", neighbours=3)
    assert kind == "jaccard"


def test_held_out_baskets_hide_one_of_their_own_items() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((200, 30)) < 0.1).astype(np.float32)
    dense[:20] = 0
    dense[:20, 0] = 1  # baskets of a single item are never held out
    matrix = sp.csr_matrix(dense)
    holdout = split_baskets(matrix, 0.25, seed=3)
    eligible = int((dense.sum(axis=1) >= 2).sum())
    assert len(holdout.test) == int(eligible * 0.25) and np.all(holdout.test >= 20)
    assert holdout.train.shape[0] == 200 - len(holdout.test)
    for row, basket in enumerate(holdout.test):
        assert dense[basket, holdout.hidden[row]] == 1
        assert holdout.rest[row, holdout.hidden[row]] == 0
        assert holdout.rest[row].nnz == dense[basket].sum() - 1
    again = split_baskets(matrix, 0.25, seed=3)
    assert np.array_equal(again.hidden, holdout.hidden)


def test_the_evaluation_scores_the_hidden_item_by_its_rank() -> None:
    rest = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    holdout = BasketHoldout(rest, rest, np.array([2, 3]), np.array([0, 1]))
    # Item 2 ranks first for basket 0, item 3 second for basket 1 (behind item 2).
    scores = popularity_scorer(np.array([0, 0, 5, 4], dtype=np.float32))
    metrics = evaluate_baskets(scores, holdout, k=2)
    assert metrics["hit_rate@2"] == 1.0
    np.testing.assert_allclose(metrics["ndcg@2"], (1 + 1 / np.log2(3)) / 2)
    assert evaluate_baskets(scores, holdout, k=1)["hit_rate@1"] == 0.5


def test_training_with_baskets_reports_and_stores_bought_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each order holds one of three sets: a lamp with its shade and bulb, and so on; users
    # buy across sets, so user taste alone cannot tell which items share an order.
    rng = np.random.default_rng(1)
    sets = [["lamp", "shade", "bulb"], ["pen", "ink", "nib"], ["cup", "saucer", "spoon"]]
    lines = ["order,user,item"]
    for order in range(300):
        user = f"u{rng.integers(40)}"
        for item in sets[order % 3]:
            if rng.random() < 0.8:
                lines.append(f"o{order},{user},{item}")
    events = tmp_path / "events.csv"
    events.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    code = main(["train", "--events", str(events), "--model-store", str(store), "--user-col",
                 "user", "--item-col", "item", "--basket-col", "order", "--algorithm", "als",
                 "--param", "factors=4", "--k", "2"])  # fmt: skip
    assert code == 0
    found = json.loads(capsys.readouterr().out)["bought_together"]
    assert found["model"] == "ease" and found["test_baskets"] > 40
    ours, baseline = found["metrics"], found["baseline"]
    assert ours["hit_rate@2"] > 0.9
    assert ours["hit_rate@2"] > baseline["popularity"]["hit_rate@2"] + 0.3
    assert ours["hit_rate@2"] >= baseline["similar_items"]["hit_rate@2"]
    loaded = ModelStore(store).load(_only_version(store))
    names = list(loaded.item_ids)
    weights = loaded.model.bought_together
    assert weights is not None
    partners = {names[j] for j in np.argsort(-weights[names.index("lamp")].toarray()[0])[:2]}
    assert partners == {"shade", "bulb"}


def _only_version(store: Path) -> str:
    (version,) = ModelStore(store).versions()
    return version


def _matrix(rows: list[list[str]], names: np.ndarray) -> sp.csr_matrix:
    index = {n: i for i, n in enumerate(names)}
    dense = np.zeros((len(rows), len(names)), dtype=np.float32)
    for r, basket in enumerate(rows):
        for item in basket:
            dense[r, index[item]] = 1
    return sp.csr_matrix(dense)
