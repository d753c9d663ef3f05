"""EASE: the closed form as the paper writes it, the pruning, and the memory refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from shopping_guide.cli import main
from shopping_guide.ease import check_fits, fit_ease, required_bytes
from shopping_guide.errors import ConfigError


def _interactions(users: int, items: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.15) * rng.integers(1, 4, (users, items))
    return sp.csr_matrix(dense.astype(np.float32))


def _textbook(x: npt.NDArray[np.float64], lam: float) -> npt.NDArray[np.float64]:
    """Steck (2019), equation 8, with a plain dense inverse."""
    gram = x.T @ x + lam * np.eye(x.shape[1])
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def test_unpruned_weights_are_the_closed_form() -> None:
    # More items than one block of the blocked Gram matrix, so the blocks are exercised.
    matrix = _interactions(1500, 1100, seed=1)
    weights = fit_ease(matrix, regularization=10.0, neighbours=1100, binary=True)
    binary = (matrix.toarray() > 0).astype(np.float64)
    np.testing.assert_allclose(weights.toarray(), _textbook(binary, 10.0), atol=1e-6)
    assert np.all(weights.diagonal() == 0)


def test_counts_are_used_when_not_binary() -> None:
    matrix = _interactions(300, 40, seed=2)
    weights = fit_ease(matrix, regularization=3.0, neighbours=40, binary=False)
    np.testing.assert_allclose(
        weights.toarray(), _textbook(matrix.toarray().astype(np.float64), 3.0), atol=1e-5
    )


def test_pruning_keeps_the_largest_weights_of_each_row() -> None:
    matrix = _interactions(400, 60, seed=3)
    full = fit_ease(matrix, regularization=5.0, neighbours=60, binary=True).toarray()
    pruned = fit_ease(matrix, regularization=5.0, neighbours=7, binary=True)
    assert pruned.getnnz(axis=1).max() == 7
    for row in range(60):
        kept = pruned[row].toarray()[0]
        threshold = np.sort(np.abs(full[row]))[-7]
        assert np.all(np.abs(full[row][kept != 0]) >= threshold - 1e-7)
        np.testing.assert_allclose(kept[kept != 0], full[row][kept != 0], rtol=1e-6)


def test_a_catalogue_that_does_not_fit_is_refused_with_the_limit_and_its_source() -> None:
    gib = 1 << 30
    check_fits(10_000, 4 * gib, "test")  # 1.2 GB of 4 GiB fits
    with pytest.raises(ConfigError) as refused:
        check_fits(100_000, 16 * gib, "the container's memory limit")
    message = str(refused.value)
    assert f"{required_bytes(100_000) / gib:.1f} GiB for 100000 items" in message
    assert "16.0 GiB available (the container's memory limit)" in message
    assert "at most about 31656 items fit" in message


def test_training_refuses_before_fitting_when_memory_is_short(
    two_taste_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SHOPPING_GUIDE_MEMORY_BYTES", "1000")
    store = tmp_path / "store"
    code = main(["train", "--events", str(two_taste_csv), "--model-store", str(store),
                 "--algorithm", "ease"])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "ease needs about" in err and "(SHOPPING_GUIDE_MEMORY_BYTES)" in err
    assert not store.exists() or not any(store.iterdir())
