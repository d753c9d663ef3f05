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
    columns = {
        "u": user_codes.indices,
        "i": item_codes.indices,
        "w": pa.array(weight, pa.float64()),
    }
    aggregations = [("w", "sum")]
    if stamp is not None:
        columns["t"] = pa.array(stamp, pa.int64())
        aggregations.append(("t", "max"))
    pairs = pa.table(columns).group_by(["u", "i"], use_threads=True).aggregate(aggregations)

    u = np.asarray(pairs.column("u"), dtype=np.int64)
    i = np.asarray(pairs.column("i"), dtype=np.int64)
    w = np.asarray(pairs.column("w_sum"), dtype=np.float64)
    t = np.asarray(pairs.column("t_max"), dtype=np.int64) if stamp is not None else None

    if min_user_items > 1:
        per_user = np.bincount(u, minlength=len(user_codes.dictionary))
        keep_pairs = per_user[u] >= min_user_items
        u, i, w = u[keep_pairs], i[keep_pairs], w[keep_pairs]
        t = None if t is None else t[keep_pairs]
    if len(u) == 0:
        raise DataError(f"no user has at least {min_user_items} distinct items")

    # Renumber densely: filtering may have emptied some users and items.
    user_used, u = np.unique(u, return_inverse=True)
    item_used, i = np.unique(i, return_inverse=True)
    order = np.lexsort((i, u))
    u, i, w = u[order], i[order], w[order]
    t = None if t is None else t[order]
    w = _scale(w, scale)

    index_type = np.int32 if len(w) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(len(user_used) + 1, dtype=index_type)
    np.cumsum(np.bincount(u, minlength=len(user_used)), out=indptr[1:])
    matrix = sp.csr_matrix(
        (w.astype(np.float32), i.astype(index_type), indptr), shape=(len(user_used), len(item_used))
    )
    user_ids = _to_numpy_str(user_codes.dictionary.take(pa.array(user_used)))
    item_ids = _to_numpy_str(item_codes.dictionary.take(pa.array(item_used)))
    return Interactions(matrix, user_ids, item_ids, t)


def _scale(values: npt.NDArray[np.float64], scale: Scale) -> npt.NDArray[np.float64]:
    if scale == "log1p":
        return np.log1p(values)
    if scale == "binary":
        return np.ones_like(values)
    return values
