"""The model store: atomic versions, verification on load, retention."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shopping_guide.algorithms import fit
from shopping_guide.artifacts import ModelStore
from shopping_guide.errors import ArtifactError
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import Interactions, build_interactions
from shopping_guide.model import Model


@pytest.fixture
def data(two_taste_csv: Path) -> Interactions:
    return build_interactions(load_events(two_taste_csv, EventSchema()))


@pytest.fixture
def model(data: Interactions) -> Model:
    return fit("als", {"factors": 4, "iterations": 3}, data.matrix, 0)


def write(store: ModelStore, model: Model, data: Interactions, version: str | None = None) -> str:
    return store.write(model, data.user_ids, data.item_ids, {"metrics": {}}, version)[0]


def test_manifest_lists_every_file_with_its_checksum(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    store = ModelStore(tmp_path)
    version = write(store, model, data)
    manifest = json.loads((tmp_path / version / "manifest.json").read_text())
    files = {p.name for p in (tmp_path / version).iterdir()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert {"user_factors.npy", "item_factors.npy", "user_ids.npy", "popularity.npy"} <= files
    assert manifest["counts"] == {"users": 60, "items": 24, "interactions": data.nnz}
    assert manifest["algorithm"] == "als" and manifest["created_at"]


def test_a_failed_write_leaves_nothing_visible(
    tmp_path: Path, model: Model, data: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    calls = {"n": 0}
    real_save = np.save

    def failing_save(file: Any, array: Any, allow_pickle: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_save(file, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        write(store, model, data)
    assert store.versions() == []
    assert list(store.root.iterdir()) == []


def test_readers_ignore_incomplete_directories(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / ".incoming-v1-123").mkdir()
    (tmp_path / "v0-no-manifest").mkdir()
    version = write(store, model, data)
    assert store.versions() == [version]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "bytes, manifest says"),
        ("flip", "does not match its sha256"),
        ("delete", "is missing"),
        ("manifest", "unreadable manifest"),
    ],
)
def test_corrupt_artifacts_fail_with_a_clear_error(
    tmp_path: Path, model: Model, data: Interactions, damage: str, message: str
) -> None:
    store = ModelStore(tmp_path)
    version = write(store, model, data)
    target = tmp_path / version / "item_factors.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-16])
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "delete":
        target.unlink()
    else:
        (tmp_path / version / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=message):
        store.load(version)


def test_non_finite_factors_are_rejected(tmp_path: Path, model: Model, data: Interactions) -> None:
    assert model.item_factors is not None
    model.item_factors[0, 0] = np.nan
    store = ModelStore(tmp_path)
    version = write(store, model, data)
    with pytest.raises(ArtifactError, match="non-finite"):
        store.load(version)


def test_unknown_version(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        ModelStore(tmp_path).load("v-nope")


def test_retention_keeps_newest_and_protected(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    store = ModelStore(tmp_path)
    names = [write(store, model, data, f"v2026010{i}-000000-aaaaaa") for i in range(1, 7)]
    removed = store.prune(keep=2, protect=[names[0]])
    assert removed == names[1:4]
    assert store.versions() == [names[0], names[4], names[5]]
    assert not list(tmp_path.glob(".incoming-*"))
    with pytest.raises(ArtifactError):
        store.prune(keep=0)
