"""Holdout splits of an interaction matrix, per user, vectorised.

Both splits hold out a fraction of each user's items (at least one, and never all: a user
needs history to be recommended for). `random` picks them at random; `time` picks each user's
most recent items, which is how a model meets the future in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from .errors import ConfigError
from .interactions import Interactions

SplitKind = Literal["random", "time"]
SPLITS: tuple[SplitKind, ...] = ("random", "time")


@dataclass
class Split:
    train: Interactions
    test: sp.csr_matrix

    @property
    def test_users(self) -> npt.NDArray[np.int64]:
        return np.flatnonzero(np.diff(self.test.indptr))


def _row_of_each_cell(matrix: sp.csr_matrix) -> npt.NDArray[np.int64]:
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def split(
    data: Interactions, kind: SplitKind = "random", fraction: float = 0.2, seed: int = 0
) -> Split:
    if not 0 < fraction < 1:
        raise ConfigError(f"test fraction must be between 0 and 1, got {fraction}")
    matrix = data.matrix
    rng = np.random.default_rng(seed)
    rows = _row_of_each_cell(matrix)
    tiebreak = rng.random(matrix.nnz)
    if kind == "time":
        if data.last_seen is None:
            raise ConfigError("the time split needs a time column (--time-col)")
        # Newest first within each row; random among equal times.
        order = np.lexsort((tiebreak, -data.last_seen, rows))
    elif kind == "random":
        # Rows are already ascending: row + a [0, 1) key orders each row at random in one sort.
        order = np.argsort(rows + tiebreak)
    else:
        raise ConfigError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")
    counts = np.diff(matrix.indptr)
    # round(), not floor(): 4 items at 20 % hold out 1, as papers do; at least 1 when possible.
    n_test = np.where(counts >= 2, np.maximum(1, np.rint(counts * fraction)), 0)
    n_test = np.minimum(n_test, counts - 1).astype(np.int64)
    rank = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    in_test = np.empty(matrix.nnz, dtype=bool)
    in_test[order] = rank < n_test[rows[order]]

    def part(mask: npt.NDArray[np.bool_]) -> sp.csr_matrix:
        return sp.csr_matrix(
            (matrix.data[mask], (rows[mask], matrix.indices[mask])), shape=matrix.shape
        )

    train = part(~in_test)
    train.sort_indices()
    last_seen = None
    if data.last_seen is not None:
        # Rebuild through the same (row, col) order the CSR constructor produced.
        stamps = sp.csr_matrix(
            (
                data.last_seen[~in_test].astype(np.float64),
                (rows[~in_test], matrix.indices[~in_test]),
            ),
            shape=matrix.shape,
        )
        stamps.sort_indices()
        last_seen = stamps.data.astype(np.int64)
    return Split(train=data.with_matrix(train, last_seen), test=part(in_test))
