"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

A closed-form item-item model: with the Gram matrix G = X^T X of the user x item matrix,

    P = (G + lambda I)^-1,    B = -P / diag(P)  (column-wise),    diag(B) = 0,

and a user's scores are their history times B. The fit is one dense n x n inversion, so it
needs memory quadratic in the item count; `required_bytes` says how much, and `fit_ease`
refuses a catalogue that would not fit before it allocates anything. The stored model keeps
the `neighbours` largest weights (by magnitude) of each item's row, so it serves through the
same sparse item-item path as item-KNN.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp

from .errors import ConfigError

# The fit holds the float64 Gram matrix (built a block of columns at a time and inverted in
# place) and the float32 copy of B that is pruned a block of rows at a time: 8 + 4 bytes per
# entry of an n x n matrix, and blocks of _BLOCK rows or columns beside it.
_BYTES_PER_ENTRY = 8 + 4
_BLOCK = 1024
# Share of the memory available that the fit may take: the rest is the process, the events
# and the evaluation that follows.
_MEMORY_SHARE = 0.7
_CGROUP_MAX = Path("/sys/fs/cgroup/memory.max")
_MEMINFO = Path("/proc/meminfo")


def required_bytes(n_items: int) -> int:
    return _BYTES_PER_ENTRY * n_items * n_items


def available_bytes() -> tuple[int, str]:
    """Memory this process may use and where that figure comes from: the container's cgroup
    limit when it has one, else the machine's available memory. SHOPPING_GUIDE_MEMORY_BYTES
    overrides both (a budget smaller than the pod's limit, or a test)."""
    override = os.environ.get("SHOPPING_GUIDE_MEMORY_BYTES")
    if override:
        return int(override), "SHOPPING_GUIDE_MEMORY_BYTES"
    try:
        limit = _CGROUP_MAX.read_text().strip()
        if limit != "max":
            return int(limit), f"the container's memory limit ({_CGROUP_MAX})"
    except (OSError, ValueError):
        pass
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, f"MemAvailable in {_MEMINFO}"
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62, "no known limit"


def ease_fits(n_items: int) -> bool:
    available, _ = available_bytes()
    return required_bytes(n_items) <= _MEMORY_SHARE * available


def check_fits(n_items: int, available: int, source: str) -> None:
    need = required_bytes(n_items)
    if need > _MEMORY_SHARE * available:
        gib = 1 << 30
        largest = int((_MEMORY_SHARE * available / _BYTES_PER_ENTRY) ** 0.5)
        raise ConfigError(
            f"ease needs about {need / gib:.1f} GiB for {n_items} items (dense {n_items} x "
            f"{n_items} matrices, {_BYTES_PER_ENTRY} bytes per entry), more than "
            f"{_MEMORY_SHARE:.0%} of the {available / gib:.1f} GiB available ({source}); "
            f"at most about {largest} items fit: raise the memory limit, filter the catalogue "
            "(minUserItems, excludeItems) or choose als, bpr or itemknn"
        )


def fit_ease(
    user_items: sp.csr_matrix, regularization: float, neighbours: int, binary: bool
) -> sp.csr_matrix:
    """The pruned item x item weights B (row i: what item i adds to every other item)."""
    n_items = user_items.shape[1]
    check_fits(n_items, *available_bytes())
    x = user_items.astype(np.float64)
    if binary:
        x = x.copy()
        x.data[:] = 1.0
    xt = x.T.tocsr()
    x = x.tocsc()
    gram = np.empty((n_items, n_items), dtype=np.float64)
    for start in range(0, n_items, _BLOCK):
        # X^T X of a dense catalogue is dense: never hold it in sparse form as well.
        gram[:, start : start + _BLOCK] = (xt @ x[:, start : start + _BLOCK]).toarray()
    gram[np.diag_indices(n_items)] += regularization
    # Positive definite for lambda > 0; inverted in place (LU), no second n x n copy.
    try:
        precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise ConfigError(
            f"ease: X^T X + {regularization} I is singular; use a regularization above 0"
        ) from exc
    precision /= -np.diag(precision).copy()
    weights = precision.astype(np.float32)
    del precision, gram
    np.fill_diagonal(weights, 0.0)
    return _prune(weights, neighbours)


def _prune(weights: npt.NDArray[np.float32], neighbours: int) -> sp.csr_matrix:
    """Keep the `neighbours` largest-magnitude weights of each row."""
    n_items = weights.shape[0]
    keep = min(neighbours, n_items)
    blocks = []
    for start in range(0, n_items, _BLOCK):
        block = weights[start : start + _BLOCK]
        if keep < n_items:
            columns = np.argpartition(-np.abs(block), keep - 1, axis=1)[:, :keep]
        else:
            columns = np.broadcast_to(np.arange(n_items), block.shape)
        values = np.take_along_axis(block, columns, axis=1)
        rows = np.repeat(np.arange(len(block)), columns.shape[1])
        blocks.append(
            sp.csr_matrix((values.ravel(), (rows, columns.ravel())), shape=(len(block), n_items))
        )
    pruned = sp.vstack(blocks, format="csr")
    pruned.eliminate_zeros()
    return pruned
