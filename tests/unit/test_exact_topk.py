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


def _decaying(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """Factors whose norms fall with popularity, as trained models' do."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(1 + np.arange(n) / 500)).astype(np.float32)[:, None]
    return rng.standard_normal((n, dim)).astype(np.float32) * scale


def test_the_scan_stops_where_no_item_left_can_enter_and_answers_the_same() -> None:
    """Norms falling with popularity: most of the catalogue is never scored, and every answer,
    with blocked items, candidates and mixed k, is the brute force's."""
    n, dim = 20 * TILE_ITEMS + 77, 32
    items = _decaying(n, dim, 5)
    rng = np.random.default_rng(6)
    rows = 40
    queries = rng.standard_normal((rows, dim)).astype(np.float32)
    blocked = [rng.integers(0, 3_000, 20) for _ in range(rows)]
    ks = [int(k) for k in rng.integers(1, 60, rows)]
    exact = ExactTopK(items)
    found = exact.search(queries, ks, blocked)
    assert exact.scored < 0.3 * rows * n, exact.scored / (rows * n)
    for row, (ids, scores) in enumerate(found):
        assert ids.tolist() == _expected(queries[row], items, ks[row], blocked[row]), row
        np.testing.assert_allclose(scores, items[ids] @ queries[row], rtol=1e-5, atol=1e-5)
    candidates = rng.random(n) < 0.5
    for row, (ids, _) in enumerate(exact.search(queries, ks, blocked, candidates)):
        assert ids.tolist() == _expected(queries[row], items, ks[row], blocked[row], candidates)


def test_queries_the_bound_cannot_prune_scan_everything() -> None:
    """A query whose best scores are negative, a zero query (every score ties at 0), and
    items of equal norms: all scanned whole, answers as the brute force's."""
    n, dim = 3 * TILE_ITEMS + 9, 8
    items = _decaying(n, dim, 9)
    items[n // 2 :] = 0.0  # items never trained: zero factors, scores of 0
    best = items[np.argmax(np.linalg.norm(items, axis=1))]
    queries = np.stack([-best * 100, np.zeros(dim, np.float32)]).astype(np.float32)
    allowed = np.zeros(n, bool)
    allowed[: n // 2] = True  # no zero item: every score the negative query gets is below 0
    exact = ExactTopK(items)
    none = [np.empty(0, np.int64)] * 2
    found = exact.search(queries, [10, 10], none, allowed)
    assert found[0][0].tolist() == _expected(queries[0], items, 10, none[0], allowed)
    assert found[1][0].tolist() == list(range(10))  # all tie at 0: the first items
    unit = np.ones((n, dim), np.float32) / np.sqrt(dim)
    unit *= np.where(np.arange(n) % 2, 1, -1)[:, None].astype(np.float32)
    alike = ExactTopK(unit)
    got = alike.search(np.ones((1, dim), np.float32), [5], none[:1])[0][0]
    assert got.tolist() == list(range(1, 11, 2))
    assert alike.scored >= n


def test_ties_met_out_of_item_order_are_settled_in_item_order() -> None:
    """Equal scores from items of different norms reach the heap in norm order, not item
    order: such a tie at the k-th place is scored again and settled by item."""
    items = np.zeros((TILE_ITEMS * 2, 2), np.float32)
    items[:, 0] = 1.0
    items[:TILE_ITEMS, 1] = 0.0  # norm 1: scanned last
    items[TILE_ITEMS:, 1] = 5.0  # norm ~5.1: scanned first; every item scores 1 on [1, 0]
    exact = ExactTopK(items)
    ids, _ = exact.search(np.array([[1.0, 0.0]], np.float32), [3], [np.empty(0, np.int64)])[0]
    assert ids.tolist() == [0, 1, 2]
    assert exact.rescored == 1


def test_an_item_at_its_bound_is_found_in_the_last_tile() -> None:
    """The bound is reached: the best item is parallel to the query and scanned last, behind
    two tiles of larger items that all score just below it. Any tighter bound misses it."""
    rng = np.random.default_rng(2)
    dim = 8
    big = rng.standard_normal((2 * TILE_ITEMS, dim)).astype(np.float32)
    big[:, -1] = 0.0
    big *= 3.0 / np.linalg.norm(big, axis=1, keepdims=True)
    big[:, -1] = 0.49 - rng.random(len(big)) / 100  # scores 0.48-0.49 on e_last, norm ~3
    small = rng.standard_normal((TILE_ITEMS, dim)).astype(np.float32)
    small[:, -1] = 0.0
    small *= 0.3 / np.linalg.norm(small, axis=1, keepdims=True)
    small[77] = 0.0
    small[77, -1] = 0.5  # norm 0.5, the largest of the last tile, and score 0.5
    items = np.concatenate([big, small])
    query = np.zeros((1, dim), np.float32)
    query[0, -1] = 1.0
    exact = ExactTopK(items)
    ids, scores = exact.search(query, [2], [np.empty(0, np.int64)])[0]
    assert ids.tolist() == [2 * TILE_ITEMS + 77, int(np.argmax(big[:, -1]))]
    assert scores[0] == np.float32(0.5)
    assert exact.rescored == 0
