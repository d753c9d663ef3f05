"""The model store in object storage, against a real S3 server (versitygw on this host):
versions visible only with their manifest, checked on the way down, pruned manifest first,
scoped per guide, rewritten without a mixed state; the serving cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest

from shopping_guide.algorithms import fit
from shopping_guide.artifacts import (
    ModelStore,
    forget_users_by_hash,
    forgotten_user_hashes,
    user_sha256,
)
from shopping_guide.cli import main
from shopping_guide.errors import ArtifactError, ConfigError
from shopping_guide.events import EventSchema, load_events
from shopping_guide.interactions import Interactions, build_interactions
from shopping_guide.model import Model
from shopping_guide.object_store import ObjectModelStore, S3Options, open_store, parse_uri
from shopping_guide.serving.model_cache import ModelCache
from tests.s3 import S3Server


@pytest.fixture
def data(two_taste_csv: Path) -> Interactions:
    return build_interactions(load_events(two_taste_csv, EventSchema()))


@pytest.fixture
def model(data: Interactions) -> Model:
    return fit("als", {"factors": 4, "iterations": 3}, data.matrix, 0)


def store_at(server: S3Server, uri: str, guide: str | None = "shop/storefront") -> ObjectModelStore:
    store = open_store(uri, guide, S3Options(endpoint=server.endpoint))
    assert isinstance(store, ObjectModelStore)
    return store


def write(store: ObjectModelStore, model: Model, data: Interactions) -> str:
    return store.write(model, data.user_ids, data.item_ids, {"metrics": {}})[0]


def key(store: ObjectModelStore, version: str, name: str) -> str:
    return f"{store.home}/{version}/{name}"


def test_a_version_round_trips_and_lives_under_the_guides_prefix(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions
) -> None:
    store = store_at(s3_server, s3_store)
    version, location = store.write(model, data.user_ids, data.item_ids, {"metrics": {"a": 1}})
    bucket, prefix = parse_uri(s3_store)
    assert location == f"s3://{bucket}/{prefix}/guides/shop/storefront/{version}"
    assert store.versions() == [version]
    loaded = store.load(version)
    assert np.array_equal(np.asarray(loaded.model.item_factors), np.asarray(model.item_factors))
    assert list(loaded.user_ids) == list(data.user_ids)
    assert loaded.manifest["metrics"] == {"a": 1}
    # Another guide of the same bucket sees none of it.
    assert store_at(s3_server, s3_store, "shop/other").versions() == []


def test_files_without_their_manifest_are_no_version(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions
) -> None:
    store = store_at(s3_server, s3_store)
    version = write(store, model, data)
    # What a writer that died before its manifest leaves behind.
    store.fs.copy_file(
        key(store, version, "item_ids.npy"), key(store, "v20990101-000000-aaaaaa", "item_ids.npy")
    )
    assert store.versions() == [version]
    with pytest.raises(ArtifactError, match="not found"):
        store.load("v20990101-000000-aaaaaa")


@pytest.mark.parametrize(
    ("damage", "message"),
    [("flip", "does not match its sha256"), ("truncate", "bytes, manifest says")],
)
def test_a_damaged_object_is_refused_with_its_name(
    s3_server: S3Server,
    s3_store: str,
    model: Model,
    data: Interactions,
    damage: str,
    message: str,
) -> None:
    store = store_at(s3_server, s3_store)
    version = write(store, model, data)
    target = key(store, version, "item_factors.npy")
    with store.fs.open_input_stream(target) as stream:
        raw = bytearray(stream.read())
    if damage == "flip":
        raw[-1] ^= 0xFF
    else:
        del raw[len(raw) // 2 :]
    with store.fs.open_output_stream(target) as out:
        out.write(bytes(raw))
    with pytest.raises(ArtifactError, match=f"{version}/item_factors.npy .*{message}"):
        store.load(version)


def test_prune_keeps_the_newest_and_the_protected_and_removes_every_object(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions, tmp_path: Path
) -> None:
    store = store_at(s3_server, s3_store)
    other = store_at(s3_server, s3_store, "shop/other")
    theirs = write(other, model, data)
    versions = [write(store, model, data) for _ in range(4)]
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps({"schema": 1, "stable": versions[1], "canary": None}))
    removed = store.prune(keep=1, protect=[versions[0]], routing=routing)
    assert removed == [versions[2]]
    assert store.versions() == [versions[0], versions[1], versions[3]]
    selector = pafs.FileSelector(
        f"{store.home}/{versions[2]}", allow_not_found=True, recursive=True
    )
    assert store.fs.get_file_info(selector) == []
    assert other.versions() == [theirs]
    # An unreadable routing file protects everything this time.
    routing.write_text("{not json")
    assert store.prune(keep=1, routing=routing) == []


def test_forgetting_a_user_rewrites_under_new_keys_and_removes_the_old(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions
) -> None:
    store = store_at(s3_server, s3_store)
    version = write(store, model, data)
    user = str(data.user_ids[0])
    before = store.manifest(version)
    changed = forget_users_by_hash(store_at(s3_server, s3_store, None), {user_sha256(user)})
    assert changed == [version]
    after = store.manifest(version)
    assert after["created_at"] == before["created_at"]
    # What changed is uploaded under new keys; what did not keeps its object.
    rewritten = {
        n for n, e in after["files"].items() if e["sha256"] != before["files"][n]["sha256"]
    }
    assert {"user_factors.npy", "user_ids.npy"} <= rewritten
    assert "item_factors.npy" not in rewritten
    for name, entry in after["files"].items():
        key = entry.get("key", name)
        assert key.startswith("rev-") if name in rewritten else key == name
    loaded = store.load(version)
    assert user not in set(loaded.user_ids) and len(loaded.user_ids) == len(data.user_ids) - 1
    # The files of the old manifest are gone; only the new ones and the manifest remain.
    selector = pafs.FileSelector(f"{store.home}/{version}", recursive=True)
    files = {
        info.path.removeprefix(f"{store.home}/{version}/")
        for info in store.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    }
    assert files == {"manifest.json", *(e.get("key", n) for n, e in after["files"].items())}
    assert forgotten_user_hashes(store) == {user_sha256(user)}


def test_the_cache_serves_what_it_checked_and_frees_what_is_not_routed(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions, tmp_path: Path
) -> None:
    store = store_at(s3_server, s3_store)
    first, second = write(store, model, data), write(store, model, data)
    cache = ModelCache(store, tmp_path / "cache")
    loaded = cache.load(first)
    assert loaded.path == Path(store.location(first))
    assert (tmp_path / "cache" / first / "manifest.json").is_file()
    cache.load(second)
    cache.retain({second})
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == [second]
    # A damaged cached file is refused and dropped, and the next load downloads it again.
    target = tmp_path / "cache" / second / "item_factors.npy"
    target.write_bytes(target.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match=r"sha256|bytes"):
        cache.load(second)
    assert not (tmp_path / "cache" / second).exists()
    assert np.array_equal(
        np.asarray(cache.load(second).model.item_factors), np.asarray(model.item_factors)
    )


def test_the_cache_keeps_serving_when_the_store_is_down(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions, tmp_path: Path
) -> None:
    store = store_at(s3_server, s3_store)
    cached, uncached = write(store, model, data), write(store, model, data)
    store = ObjectModelStore(
        S3Options(endpoint=s3_server.endpoint, connect_timeout=1, request_timeout=2).filesystem(),
        s3_store,
        "shop/storefront",
    )
    cache = ModelCache(store, tmp_path / "cache")
    cache.load(cached)
    s3_server.stop()
    try:
        assert cache.load(cached).version == cached
        assert cache.error is not None and "unreachable" in cache.error
        with pytest.raises(OSError):
            cache.load(uncached)
    finally:
        s3_server.start()
    cache.load(uncached)
    assert cache.error is None


def test_a_rewritten_version_is_downloaded_again(
    s3_server: S3Server, s3_store: str, model: Model, data: Interactions, tmp_path: Path
) -> None:
    store = store_at(s3_server, s3_store)
    version = write(store, model, data)
    cache = ModelCache(store, tmp_path / "cache")
    assert len(cache.load(version).user_ids) == len(data.user_ids)
    cached = tmp_path / "cache" / version
    inodes = {p.name: p.stat().st_ino for p in cached.glob("*.npy")}
    forget_users_by_hash(store_at(s3_server, s3_store, None), {user_sha256(str(data.user_ids[0]))})
    assert len(cache.load(version).user_ids) == len(data.user_ids) - 1
    # The files that did not change are linked from the copy already cached, not downloaded.
    assert (cached / "item_factors.npy").stat().st_ino == inodes["item_factors.npy"]
    assert (cached / "user_factors.npy").stat().st_ino != inodes["user_factors.npy"]


def test_a_claim_and_a_bucket_are_told_apart(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path), ModelStore)
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        parse_uri("s3://")
    with pytest.raises(ConfigError, match="s3://BUCKET"):
        parse_uri("s3://bucket/../up")
    with pytest.raises(ConfigError, match="endpoint"):
        S3Options(endpoint="127.0.0.1:9000").filesystem()


def test_train_reads_events_from_a_bucket_and_writes_there_with_its_champion(
    s3_server: S3Server,
    s3_store: str,
    two_taste_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(f"EVENTS_{name}", value)
    bucket, _ = parse_uri(s3_store)
    fs = s3_server.filesystem()
    with fs.open_output_stream(f"{bucket}/events/log.csv.gz") as out:
        out.write(gzip.compress(two_taste_csv.read_bytes()))
    common = [
        "train", "--events", f"s3://{bucket}/events/log.csv.gz", "--model-store", s3_store,
        "--s3-endpoint", s3_server.endpoint, "--events-s3-endpoint", s3_server.endpoint,
        "--guide", "shop/storefront",
        "--param", "factors=4", "--keep", "1",
    ]  # fmt: skip
    results: list[dict[str, Any]] = []
    for extra in ([], ["--champion"]):
        log = tmp_path / f"result-{len(results)}"
        champion = [results[0]["version"]] if extra else []
        assert main([*common, *extra, *champion, "--termination-log", str(log)]) == 0
        results.append(json.loads(log.read_text()))
    first, second = results
    store = store_at(s3_server, s3_store)
    assert second["artifact"] == store.location(second["version"])
    assert second["champion"]["version"] == first["version"]
    assert second["champion"]["metrics"]["ndcg@10"] == pytest.approx(
        first["metrics"]["ndcg@10"], rel=0.05
    )
    # keep 1, but the champion of the run is protected.
    assert store.versions() == [first["version"], second["version"]]
    assert store.manifest(second["version"])["data"]["source"].startswith(f"s3://{bucket}/")


def test_a_missing_events_object_is_a_clear_error(
    s3_server: S3Server,
    s3_store: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(f"EVENTS_{name}", value)
    bucket, _ = parse_uri(s3_store)
    code = main(
        ["train", "--events", f"s3://{bucket}/nothing.csv", "--model-store", s3_store,
         "--s3-endpoint", s3_server.endpoint, "--events-s3-endpoint", s3_server.endpoint]
    )  # fmt: skip
    assert code == 1
    assert f"events object s3://{bucket}/nothing.csv not found" in capsys.readouterr().err
