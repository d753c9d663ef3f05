"""The exact top-k kernel answers what a plain numpy ranking does: the same items in the same
order, equal scores in item order, blocked and non-candidate items never returned, whatever the
catalogue's size against the tile, the number of queries against the product's row bound, and
the tiled copy or the factors as given."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from shopping_guide.serving.exact import MAX_ROWS, TILE_ITEMS, ExactTopK

IntArray = npt.NDArray[np.int64]


def _expected(
    queries: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    k: int,
    blocked: IntArray,
    candidates: npt.NDArray[np.bool_] | None = None,
) -> list[int]:
    """Brute force, one query: float64 scores would rank near-ties differently, so the
    kernel's own float32 product is the reference (same BLAS, same sums)."""
    scores = (queries @ items.T).astype(np.float32)
    scores[blocked] = -np.inf
    if candidates is not None:
        scores[~candidates] = -np.inf
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[np.isfinite(scores[order])][:k]]


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("n_items", [1, 7, TILE_ITEMS - 1, TILE_ITEMS, 2 * TILE_ITEMS + 5])
def test_the_same_ranking_as_a_brute_force_with_blocked_items(n_items: int, tiled: bool) -> None:
    rng = np.random.default_rng(n_items)
    items = rng.standard_normal((n_items, 8)).astype(np.float32)
    exact = ExactTopK(items, tiled=tiled)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    ks = [1, 3, 10, n_items, n_items + 4]
    blocked = [rng.integers(0, n_items, size) for size in (0, 1, 3, n_items // 2)]
    blocked.append(np.arange(n_items))
    found = exact.search(queries, ks, blocked)
    for row, (ids, scores) in enumerate(found):
        expected = _expected(queries[row], items, ks[row], blocked[row])
        assert ids.tolist() == expected, row
        assert ids.dtype == np.int64
        np.testing.assert_allclose(scores, (items[ids] @ queries[row]), rtol=1e-5, atol=1e-5)
    assert found[4][0].size == 0  # every item blocked: nothing, not padding or -1 ids


def test_equal_scores_rank_in_item_order_across_the_k_boundary() -> None:
    """Integer scores tie by the hundred; the heap must keep the lowest items among the
    equal ones at the k-th place, and a smaller k must be a prefix of a larger one."""
    rng = np.random.default_rng(3)
    n = 3 * TILE_ITEMS + 100
    items = rng.integers(0, 3, (n, 2)).astype(np.float32)
    exact = ExactTopK(items)
    queries = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    ks = [5, 1_000, 50]  # the 1,000th place is among the 3s, with 713 4s found all along
    found = exact.search(queries, ks, [np.empty(0, np.int64)] * 3)
    for row in range(3):
        expected = _expected(queries[row], items, ks[row], np.empty(0, np.int64))
        assert found[row][0].tolist() == expected, row
    # All scores zero: the first 50 items, in order.
    assert found[2][0].tolist() == list(range(50))
    shorter = exact.search(queries[1:2], [37], [np.empty(0, np.int64)])[0][0]
    assert shorter.tolist() == found[1][0][:37].tolist()
    # The better items all come last: every equal one taken first must stay in place of
    # those after it.
    ramp = np.repeat(np.array([[1.0], [2.0]], np.float32), [TILE_ITEMS, 30], axis=0)
    ids, _ = ExactTopK(ramp).search(np.ones((1, 1), np.float32), [35], [np.empty(0, np.int64)])[0]
    assert ids.tolist() == list(range(TILE_ITEMS, TILE_ITEMS + 30)) + list(range(5))


def test_candidates_and_more_queries_than_one_product_holds() -> None:
    rng = np.random.default_rng(11)
    n = TILE_ITEMS + 333
    items = rng.standard_normal((n, 16)).astype(np.float32)
    candidates = rng.random(n) < 0.3
    rows = 2 * MAX_ROWS + 3
    queries = rng.standard_normal((rows, 16)).astype(np.float32)
    blocked = [rng.integers(0, n, 25) for _ in range(rows)]
    ks = [int(k) for k in rng.integers(1, 40, rows)]
    for tiled in (True, False):
        found = ExactTopK(items, tiled=tiled).search(queries, ks, blocked, candidates)
        assert len(found) == rows
        for row, (ids, _) in enumerate(found):
            expected = _expected(queries[row], items, ks[row], blocked[row], candidates)
            assert ids.tolist() == expected, (tiled, row)
            assert candidates[ids].all()


def test_a_query_of_the_wrong_width_is_refused() -> None:
    exact = ExactTopK(np.ones((10, 4), np.float32))
    with pytest.raises(ValueError, match="4 factors"):
        exact.search(np.ones((1, 5), np.float32), [3], [np.empty(0, np.int64)])
