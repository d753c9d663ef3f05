"""The model store: atomic versions, verification on load, retention, one directory per guide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shopping_guide.algorithms import fit
from shopping_guide.artifacts import ModelStore, forget_user, forgotten_users
from shopping_guide.errors import ArtifactError, ConfigError
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


def test_guides_sharing_a_store_prune_only_their_own(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    # Two guides of one name in two namespaces, and a second guide: one claim for all three.
    mine, same_name, other = (
        ModelStore(tmp_path, g) for g in ("shop/storefront", "outlet/storefront", "shop/b2b")
    )
    theirs = {
        store.guide: [write(store, model, data) for _ in range(2)] for store in (same_name, other)
    }
    own = [write(mine, model, data) for _ in range(3)]
    assert mine.prune(keep=1) == own[:2]
    assert mine.versions() == own[2:]
    assert (tmp_path / "guides" / "shop" / "storefront" / own[2]).is_dir()
    for store in (same_name, other):
        assert store.versions() == theirs[store.guide]
        for version in theirs[store.guide]:
            store.load(version)
    assert json.loads((mine.path(own[2]) / "manifest.json").read_text())["guide"] == (
        "shop/storefront"
    )


def test_the_flat_layout_of_an_earlier_release_keeps_serving(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    flat = ModelStore(tmp_path)
    old = [write(flat, model, data) for _ in range(2)]
    guide = ModelStore(tmp_path, "shop/storefront")
    assert guide.load(old[0]).path == tmp_path / old[0]  # found where the old release wrote it
    new = [write(guide, model, data) for _ in range(2)]
    assert guide.versions() == new
    # A guide's pruning never reaches the flat layout: whose a flat version is, is unknown.
    assert guide.prune(keep=1) == new[:1]
    assert flat.versions() == old
    # A store opened without a guide (a server not yet told its guide) finds both layouts.
    assert flat.load(new[1]).path == guide.home / new[1]
    assert flat.load(old[1]).path == tmp_path / old[1]
    with pytest.raises(ArtifactError, match=r"not found in .*guides/shop/storefront or"):
        guide.load("v-nope")


def test_forget_user_reaches_every_guide_and_the_flat_layout(
    tmp_path: Path, model: Model, data: Interactions
) -> None:
    user = str(data.user_ids[0])
    stores = [ModelStore(tmp_path), ModelStore(tmp_path, "shop/a"), ModelStore(tmp_path, "x/a")]
    versions = [write(store, model, data) for store in stores]
    assert sorted(forget_user(stores[1], user)) == sorted(versions)
    for store, version in zip(stores, versions, strict=True):
        assert user not in set(store.load(version).user_ids)
        assert store.versions() == [version]
    assert forgotten_users(ModelStore(tmp_path)) == [user]


@pytest.mark.parametrize("guide", ["storefront", "shop/../x", "shop/a/b", "Shop/a", "/a", ".."])
def test_a_guide_is_namespace_slash_name(tmp_path: Path, guide: str) -> None:
    with pytest.raises(ConfigError, match="NAMESPACE/NAME"):
        ModelStore(tmp_path, guide)


@pytest.mark.parametrize("version", ["../v1", "a/b", ".incoming-x", "guides", ""])
def test_a_version_is_one_plain_path_segment(tmp_path: Path, version: str) -> None:
    with pytest.raises(ArtifactError, match="not a model version name"):
        ModelStore(tmp_path, "shop/a").load(version)
