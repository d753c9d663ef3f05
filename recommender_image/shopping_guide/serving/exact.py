"""Exact top-k over the item factors: the scoring kernel of factor models.

Scores are matrix products, queries x items.T, and a heap per query. Three choices make a
small batch cheap, which is what the micro-batcher mostly scores:

- The item factors are kept in tiles of TILE_ITEMS items, each tile item-minor and contiguous
  (factors x items, 512 KB at 64 factors). BLAS packs whatever operand it is given before
  multiplying; packing a whole 100k-item matrix, item-major or item-minor with rows 400 KB
  apart, reads and writes it all again, and for a few queries costs more than the product.
  A tile is packed from one contiguous block that stays in cache. At 100k items x 64
  factors, one thread: 4 users in 2.9 ms instead of 11.2 (item-minor) or 5.0 (item-major),
  8 users in 3.0 instead of 12.5 or 5.9, 64 users in 12.5 instead of 22.2 or 16.6.
- The tiles hold the items by norm, largest first, and the scan stops early. A score is at
  most |query| x |item| (Cauchy-Schwarz), so once a query's k-th best score so far is above
  |query| x the largest norm of the tiles left, no item there can enter its top k. Trained
  models give the items shoppers choose the larger factors, and those are what top-k lists
  hold, so much of a catalogue is never read (`searched` and `scored` count it). The scan is
  two products: the first tile for every query, then as far as the largest bound its k-th
  best leaves reaches, for the queries it leaves any (the k-th best only rises, so a second
  check could only have stopped sooner). How much is skipped depends on the model: the
  serving benchmark's synthetic 100k items (norms falling with popularity) are scored 17-21 %,
  4 users in 0.7-0.9 ms instead of 3.1; an ALS model of Online Retail (64 factors) leaves 45 %
  to score at item granularity, a BPR one 78 %; a model whose norms are all alike is scored
  whole, as before, for the cost of one more product call.
- The heap is faiss's (`HeapArray`), one call per product. Equal scores rank in item order, as
  everywhere in the server, whatever order the scan meets them in: the heaps hold one place
  more than asked, and a query whose k-th score ties with that extra place (equal scores may
  have been met out of item order and turned away) is scored again over every item and its
  tie settled in item order (`rescored` counts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

TILE_ITEMS = 2048
# Queries scored per matrix product: bounds the score buffer (64 rows x items floats, 26 MB at
# 100k items) and gains nothing past it, the product being compute-bound there already.
MAX_ROWS = 64
# A float32 product may exceed |query| x |item| by a rounding error of about factors x 2^-24
# of it (4e-6 at 64 factors); the bound is widened well past that, so rounding never prunes an
# item that belongs in the top k.
BOUND_SLACK = 1e-4
EMPTY = -np.finfo(np.float32).max  # faiss's empty heap place


def _nothing() -> tuple[IntArray, FloatArray]:
    return np.empty(0, np.int64), np.empty(0, np.float32)


class ExactTopK:
    """Exact top-k searches over the item factors: by default over a private tiled copy sorted
    by norm (items x factors x 4 bytes, rounded up to a whole tile), which prunes; with
    `tiled=False` over the factors as given, without a copy and without pruning, for models
    that score exactly only now and then (those with an ANN index, whose item matrix is large
    and shared between workers) and for small candidate subsets."""

    def __init__(self, factors: FloatArray, tiled: bool = True) -> None:
        n, dim = factors.shape
        self.n_items = n
        self.dim = dim
        # Work done, for benchmarks and the tests of pruning: queries searched, items scored for
        # them (at most queries x items), and queries scored again to settle a tie. Plain
        # counters: several scoring threads at once may lose a count, never an answer.
        self.searched = 0
        self.scored = 0
        self.rescored = 0
        self._factors: FloatArray | None = None
        self._tiles: FloatArray | None = None
        if tiled:
            norms = np.sqrt(np.einsum("ij,ij->i", factors, factors, dtype=np.float64))
            order = np.argsort(-norms, kind="stable")  # equal norms keep item order
            tiles = max(1, -(-n // TILE_ITEMS))
            width = tiles * TILE_ITEMS
            padded = np.zeros((width, dim), np.float32)
            padded[:n] = factors[order]
            # tiles x factors x items-of-the-tile
            self._tiles = np.ascontiguousarray(
                padded.reshape(tiles, TILE_ITEMS, dim).swapaxes(1, 2)
            )
            self._tile_items = TILE_ITEMS
            # The largest norm of each tile: its first, the items being sorted.
            self._tile_norms = np.zeros(tiles)
            self._tile_norms[: -(-n // TILE_ITEMS)] = norms[order][::TILE_ITEMS]
            self._ids = np.zeros(width, np.int64)  # the item at each place of the scan
            self._ids[:n] = order
            self._places: IntArray | None = np.empty(n, np.int64)  # and each item's place
            self._places[order] = np.arange(n)
        else:
            self._factors = factors
            width = max(n, 1)
            self._tile_items = width  # one run over everything, in item order
            self._tile_norms = np.full(1, np.inf)
            self._ids = np.arange(width, dtype=np.int64)
            self._places = None

    def search(
        self,
        queries: FloatArray,
        ks: Sequence[int],
        blocked: Sequence[IntArray],
        candidates: npt.NDArray[np.bool_] | None = None,
    ) -> list[tuple[IntArray, FloatArray]]:
        """For each query row, the indices and scores of its `ks[row]` best items, best first,
        equal scores in item order; never an item of `blocked[row]`, nor, given `candidates`,
        an item outside it. Fewer when fewer items are left."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be rows of {self.dim} factors")
        out: list[tuple[IntArray, FloatArray]] = []
        for start in range(0, len(queries), MAX_ROWS):
            end = min(len(queries), start + MAX_ROWS)
            out += self._search(queries[start:end], ks[start:end], blocked[start:end], candidates)
        return out

    def _place_of(self, items: IntArray) -> IntArray:
        """Where the scan meets each of `items`: its place in the norm order when tiled."""
        return self._places[items] if self._places is not None else items

    def _scores(
        self,
        queries: FloatArray,
        first: int,
        last: int,
        blocked_rows: IntArray,
        blocked_places: IntArray,
        candidates: npt.NDArray[np.bool_] | None,
    ) -> FloatArray:
        """Scores of `queries` for the places of tiles first..last-1, -inf where an item may not
        be returned (padding, blocked, not a candidate); `blocked_rows` index `queries`."""
        rows, per_tile = len(queries), self._tile_items
        begin, end = first * per_tile, last * per_tile
        scores = np.empty((rows, end - begin), np.float32)
        if self._tiles is not None:
            # Each tile's product lands in its columns of the rows: one score row per query.
            by_tile = scores.reshape(rows, last - first, per_tile).swapaxes(0, 1)
            np.matmul(queries, self._tiles[first:last], out=by_tile)
        else:
            assert self._factors is not None
            np.matmul(queries, self._factors.T, out=scores[:, : self.n_items])
        if end > self.n_items:
            scores[:, max(0, self.n_items - begin) :] = -np.inf
        if candidates is not None:
            allowed = candidates[self._ids[begin : min(end, self.n_items)]]
            scores[:, : len(allowed)][:, ~allowed] = -np.inf
        inside = (blocked_places >= begin) & (blocked_places < end)
        scores[blocked_rows[inside], blocked_places[inside] - begin] = -np.inf
        return scores

    def _search(
        self,
        queries: FloatArray,
        ks: Sequence[int],
        blocked: Sequence[IntArray],
        candidates: npt.NDArray[np.bool_] | None,
    ) -> list[tuple[IntArray, FloatArray]]:
        import faiss

        rows = len(queries)
        top = min(max(ks, default=0), self.n_items)
        if top <= 0:
            return [_nothing() for _ in range(rows)]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.searched += rows
        # One place more than asked: how ties are told apart (see the module's docstring).
        depth = min(top + 1, self.n_items)
        values = np.empty((rows, depth), np.float32)
        ids = np.empty((rows, depth), np.int64)
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = rows, depth
        heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(ids)
        heaps.heapify()
        blocked_rows = np.repeat(np.arange(rows), [len(items) for items in blocked])
        blocked_items = np.concatenate(blocked).astype(np.int64, copy=False)
        places = self._place_of(blocked_items)
        bounds = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        bounds *= 1 + BOUND_SLACK
        # The first tile, for every query; then, as far as the largest bound reaches, for those
        # it leaves open. The tiles a query needs are those whose largest norm could still beat
        # its k-th best so far (its heap's top): as that only rises, the second run is the last.
        first = self._scores(queries, 0, 1, blocked_rows, places, candidates)
        self.scored += first.size
        self._push(values, ids, np.arange(rows), first, 0)
        tiles = len(self._tile_norms)
        if tiles > 1:
            tops = values[:, 0]  # each query's k-th best so far
            # A query of norm 0 scores 0 everywhere: its heap is all ties, settled below.
            with np.errstate(divide="ignore", invalid="ignore"):
                reach = np.where(tops > EMPTY, tops / bounds, -np.inf)
            reach = np.where(np.isnan(reach), np.inf, reach)
            need = np.searchsorted(-self._tile_norms, -reach, side="right")
            open_rows = np.flatnonzero(need > 1)
            if open_rows.size:
                last = int(need.max())
                local = np.full(rows, -1)
                local[open_rows] = np.arange(len(open_rows))
                mine = local[blocked_rows] >= 0
                mine_rows, mine_places = local[blocked_rows[mine]], places[mine]
                rest = self._scores(queries[open_rows], 1, last, mine_rows, mine_places, candidates)
                self.scored += rest.size
                self._push(values, ids, open_rows, rest, self._tile_items)
        heaps.reorder()
        # reorder leaves equal scores in heap order: sort every row by (score, item) at once, so
        # a shorter k is a prefix. Empty places (id -1, the lowest score) sort last.
        order = np.lexsort((ids, -values))
        ids, values = np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)
        filled = (ids >= 0).sum(axis=1)
        # A full heap turned scores away; if the k-th ties with the extra place, an equal score
        # of a lower item may have been among them.
        full = (filled == depth) & (depth < self.n_items)
        out: list[tuple[IntArray, FloatArray]] = []
        for row in range(rows):
            k = min(ks[row], int(filled[row]))
            if k <= 0:
                out.append(_nothing())
                continue
            kth = values[row, k - 1]
            if full[row] and kth == values[row, -1]:
                out.append(self._settle(queries[row], k, kth, blocked[row], candidates))
            else:
                out.append((ids[row, :k], values[row, :k]))
        return out

    def _push(
        self, values: FloatArray, ids: IntArray, rows: IntArray, scores: FloatArray, begin: int
    ) -> None:
        """Offers `scores` (one row per entry of `rows`, from scan place `begin` on) to those
        rows' heaps."""
        import faiss

        subset = len(rows) < len(values)
        val = np.ascontiguousarray(values[rows]) if subset else values
        idx = np.ascontiguousarray(ids[rows]) if subset else ids
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = len(rows), values.shape[1]
        heaps.val, heaps.ids = faiss.swig_ptr(val), faiss.swig_ptr(idx)
        # -inf never enters: a heap place is replaced only by a greater score. id stride 0:
        # every row takes the same ids, the items at those places of the scan.
        width = scores.shape[1]
        place_ids = np.ascontiguousarray(self._ids[begin : begin + width])
        heaps.addn_with_ids(width, faiss.swig_ptr(scores), faiss.swig_ptr(place_ids), 0)
        if subset:
            values[rows], ids[rows] = val, idx

    def _settle(
        self,
        query: FloatArray,
        k: int,
        kth: float,
        blocked: IntArray,
        candidates: npt.NDArray[np.bool_] | None,
    ) -> tuple[IntArray, FloatArray]:
        """A query whose k-th score ties with a score outside its top k: every item scored,
        and those at or above the k-th score ranked by (score, item). The scores are those of
        another product shape, which may round differently, hence the tolerance."""
        self.rescored += 1
        places = self._place_of(blocked)
        tiles = len(self._tile_norms)
        rows = np.zeros(len(blocked), np.int64)
        scores = self._scores(query[None], 0, tiles, rows, places, candidates)[0]
        self.scored += scores.size
        at = np.flatnonzero(scores >= kth - 1e-6 * max(1.0, abs(kth)))
        items, found = self._ids[at], scores[at]
        order = np.lexsort((items, -found))[:k]
        return items[order], found[order]
