"""Aggregating events into a user x item matrix with id maps.

Ids are dictionary-encoded by Arrow and pairs are summed by Arrow's hash aggregation, so the
cost is a few vectorised passes whatever the row count. Each (user, item) cell also keeps the
time of its latest event, which the time-based split needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .errors import DataError
from .events import Events

Scale = Literal["raw", "log1p", "binary"]
SCALES: tuple[Scale, ...] = ("raw", "log1p", "binary")
_DAY = 86_400.0


@dataclass
class Interactions:
    """A CSR matrix of confidences (float32) with its id maps.

    `last_seen` is aligned with `matrix.data`: epoch seconds of each cell's latest event, or
    None when the events had no time column.
    """

    matrix: sp.csr_matrix
    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    last_seen: npt.NDArray[np.int64] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[no-any-return]

    @property
    def nnz(self) -> int:
        return int(self.matrix.nnz)

    def fingerprint(self) -> str:
        """Content hash of the aggregated data: same data, same fingerprint."""
        digest = hashlib.sha256()
        for array in (self.matrix.indptr, self.matrix.indices, self.matrix.data):
            digest.update(np.ascontiguousarray(array).tobytes())
        for ids in (self.user_ids, self.item_ids):
            digest.update("\x1f".join(ids.tolist()).encode())
        return digest.hexdigest()[:16]

    def with_matrix(
        self, matrix: sp.csr_matrix, last_seen: npt.NDArray[np.int64] | None
    ) -> Interactions:
        return Interactions(matrix, self.user_ids, self.item_ids, last_seen)


def _to_numpy_str(values: pa.Array) -> npt.NDArray[np.str_]:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.str_)


def build_interactions(
    events: Events,
    *,
    exclude_items: Sequence[str] = (),
    min_user_items: int = 1,
    half_life_days: float | None = None,
    scale: Scale = "raw",
) -> Interactions:
    """Aggregate valid events into confidences: sum of weights per (user, item).

    Time decay multiplies each event by 0.5 ** (age / half-life), age measured from the newest
    event. Users with fewer than `min_user_items` distinct items are dropped (one pass).
    """
    users, items, weight, stamp = events.users, events.items, events.weight, events.timestamp
    if exclude_items:
        keep = pc.invert(pc.is_in(items, value_set=pa.array(list(exclude_items), pa.string())))
        keep_np = np.asarray(keep)
        users, items = pc.filter(users, keep), pc.filter(items, keep)
        weight = weight[keep_np]
        stamp = None if stamp is None else stamp[keep_np]
    if half_life_days is not None:
        if stamp is None:
            raise DataError("time decay needs a time column (--time-col)")
        age_days = (stamp.max() - stamp).astype(np.float64) / _DAY
        weight = weight * np.exp2(-age_days / half_life_days)

    user_codes = pc.dictionary_encode(users)
    item_codes = pc.dictionary_encode(items)
    u = np.asarray(user_codes.indices, dtype=np.int32)
    i = np.asarray(item_codes.indices, dtype=np.int32)
    shape = (len(user_codes.dictionary), len(item_codes.dictionary))
    # scipy's COO -> CSR conversion sums duplicate cells in linear time and leaves the
    # result canonical (rows in order, columns sorted within each row).
    matrix = sp.coo_matrix((weight, (u, i)), shape=shape).tocsr()
    last_seen = None if stamp is None else _latest_per_cell(matrix, u, i, stamp)

    user_keep = np.ones(shape[0], dtype=bool)
    if min_user_items > 1:
        user_keep = np.diff(matrix.indptr) >= min_user_items
        if not user_keep.any():
            raise DataError(f"no user has at least {min_user_items} distinct items")
        if not user_keep.all():
            cells = np.repeat(user_keep, np.diff(matrix.indptr))
            matrix = matrix[user_keep]
            last_seen = None if last_seen is None else last_seen[cells]
    item_keep = np.bincount(matrix.indices, minlength=shape[1]) > 0
    if not item_keep.all():
        # Renumber columns densely: filtering users can leave items without interactions.
        new_column = np.cumsum(item_keep) - 1
        matrix = sp.csr_matrix(
            (matrix.data, new_column[matrix.indices], matrix.indptr),
            shape=(matrix.shape[0], int(item_keep.sum())),
        )
    matrix.data = _scale(matrix.data.astype(np.float64), scale).astype(np.float32)
    index_type = np.int32 if matrix.nnz < np.iinfo(np.int32).max else np.int64
    matrix.indices = matrix.indices.astype(index_type)
    matrix.indptr = matrix.indptr.astype(index_type)
    user_ids = _to_numpy_str(user_codes.dictionary.filter(pa.array(user_keep)))
    item_ids = _to_numpy_str(item_codes.dictionary.filter(pa.array(item_keep)))
    return Interactions(matrix, user_ids, item_ids, last_seen)


def _latest_per_cell(
    matrix: sp.csr_matrix,
    u: npt.NDArray[np.int32],
    i: npt.NDArray[np.int32],
    stamp: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Newest event time of each stored cell, aligned with matrix.data.

    Sorting the events by (row, column) puts them in the canonical CSR's cell order, so one
    reduceat over the run boundaries yields each cell's maximum.
    """
    keys = u.astype(np.int64) * np.int64(matrix.shape[1]) + i
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    latest = np.maximum.reduceat(stamp[order], starts)
    if len(latest) != matrix.nnz:  # pragma: no cover - scipy keeps every summed cell
        raise AssertionError("cell count differs from the aggregated matrix")
    return latest.astype(np.int64)


def _scale(values: npt.NDArray[np.float64], scale: Scale) -> npt.NDArray[np.float64]:
    if scale == "log1p":
        return np.log1p(values)
    if scale == "binary":
        return np.ones_like(values)
    return values
