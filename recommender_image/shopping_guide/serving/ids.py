"""Id to index lookup without a Python object per id.

A sorted copy of the ids and the permutation back: lookups are a binary search in C, and a
million ids cost a few tens of megabytes instead of a dict's hundreds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


class IdIndex:
    def __init__(self, ids: npt.NDArray[np.str_]) -> None:
        self.ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Index of each id, -1 where unknown."""
        if not len(ids):
            return np.empty(0, dtype=np.int64)
        wanted = np.asarray(ids, dtype=self._sorted.dtype if len(self._sorted) else np.str_)
        # An id longer than every stored one is truncated by the cast above: compare the
        # originals, not the truncated copies.
        position = np.searchsorted(self._sorted, wanted)
        position = np.minimum(position, max(len(self._sorted) - 1, 0))
        if not len(self._sorted):
            return np.full(len(ids), -1, dtype=np.int64)
        found = np.fromiter(
            (self._sorted[p] == i for p, i in zip(position, ids, strict=True)),
            dtype=bool,
            count=len(ids),
        )
        return np.where(found, self._order[position], -1).astype(np.int64)

    def one(self, item: str) -> int:
        return int(self.lookup([item])[0])
