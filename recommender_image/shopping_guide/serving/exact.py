"""Exact top-k over the item factors: the scoring kernel of factor models.

Scores are one matrix product, queries x items.T, and a heap per query. Two choices make a
small batch cheap, which is what the micro-batcher mostly scores:

- The item factors are kept in tiles of TILE_ITEMS items, each tile item-minor and contiguous
  (factors x items, 512 KB at 64 factors). BLAS packs whatever operand it is given before
  multiplying; packing a whole 100k-item matrix, item-major or item-minor with rows 400 KB
  apart, reads and writes it all again, and for a few queries costs more than the product.
  A tile is packed from one contiguous block that stays in cache. At 100k items x 64
  factors, one thread: 4 users in 2.9 ms instead of 11.2 (item-minor) or 5.0 (item-major),
  8 users in 3.0 instead of 12.5 or 5.9, 64 users in 12.5 instead of 22.2 or 16.6.
- The heap is faiss's (`HeapArray`), one call over each query's whole score row. Equal
  scores keep item order, as everywhere in the server: faiss evicts the lowest id among equal
  scores first, so ids go in reversed.
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


class ExactTopK:
    """Exact top-k searches over the item factors: by default over a private tiled copy
    (items x factors x 4 bytes, rounded up to a whole tile); with `tiled=False` over the
    factors as given, without a copy, for models that score exactly only now and then (those
    with an ANN index, whose item matrix is large and shared between workers)."""

    def __init__(self, factors: FloatArray, tiled: bool = True) -> None:
        n, dim = factors.shape
        self.n_items = n
        self.dim = dim
        self._factors: FloatArray | None = None
        self._tiles: FloatArray | None = None
        if tiled:
            tiles = max(1, -(-n // TILE_ITEMS))
            padded = np.zeros((tiles * TILE_ITEMS, dim), np.float32)
            padded[:n] = factors
            # tiles x factors x items-of-the-tile
            self._tiles = np.ascontiguousarray(
                padded.reshape(tiles, TILE_ITEMS, dim).swapaxes(1, 2)
            )
            self._width = tiles * TILE_ITEMS
        else:
            self._factors = factors
            self._width = n
        self._reversed = np.arange(self._width - 1, -1, -1, dtype=np.int64)

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

    def _search(
        self,
        queries: FloatArray,
        ks: Sequence[int],
        blocked: Sequence[IntArray],
        candidates: npt.NDArray[np.bool_] | None,
    ) -> list[tuple[IntArray, FloatArray]]:
        import faiss

        rows = len(queries)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((rows, self._width), np.float32)
        if self._tiles is not None:
            tiles = self._tiles.shape[0]
            # Each tile's product lands in its columns of the rows: one score row per query.
            by_tile = scores.reshape(rows, tiles, TILE_ITEMS).swapaxes(0, 1)
            np.matmul(queries, self._tiles, out=by_tile)
            scores[:, self.n_items :] = -np.inf  # the padding of the last tile
        else:
            assert self._factors is not None
            np.matmul(queries, self._factors.T, out=scores)
        if candidates is not None:
            scores[:, : self.n_items][:, ~candidates] = -np.inf
        if any(len(items) for items in blocked):
            rows_of = np.repeat(np.arange(rows), [len(items) for items in blocked])
            scores[rows_of, np.concatenate(blocked)] = -np.inf
        k = min(max(ks, default=0), self.n_items)
        if k <= 0:
            return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in range(rows)]
        values = np.empty((rows, k), np.float32)
        ids = np.empty((rows, k), np.int64)
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = rows, k
        heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(ids)
        heaps.heapify()
        # -inf never enters: the heaps start full of -FLT_MAX, and only a greater score does.
        # id stride 0: every row takes the same ids.
        heaps.addn_with_ids(self._width, faiss.swig_ptr(scores), faiss.swig_ptr(self._reversed), 0)
        heaps.reorder()
        # Empty places (id -1, score -FLT_MAX) sort last. reorder leaves equal scores in heap
        # order, so every row is sorted again, all at once: a shorter k is then a prefix.
        items = self._width - 1 - ids
        order = np.lexsort((items, -values))
        items, values = np.take_along_axis(items, order, 1), np.take_along_axis(values, order, 1)
        filled = (ids >= 0).sum(axis=1)
        return [
            (items[row, : min(ks[row], filled[row])], values[row, : min(ks[row], filled[row])])
            for row in range(rows)
        ]
