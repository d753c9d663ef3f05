"""A server on an object store (versitygw on this host): it downloads and checks each routed
version into its cache, refuses a damaged one while the stable serves, keeps serving through
an outage of the store, and a new server without a cached stable version is not ready."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shopping_guide.artifacts import ModelStore
from shopping_guide.object_store import ObjectModelStore, S3Options, open_store
from tests.s3 import S3Server
from tests.server.conftest import GUIDE, Models, free_port, running_server

OWNER = "shop/storefront"


@pytest.fixture
def bucket_store(s3_server: S3Server, s3_store: str, models: Models) -> ObjectModelStore:
    """The session's two versions, copied into a new bucket."""
    store = open_store(s3_store, OWNER, S3Options(endpoint=s3_server.endpoint))
    assert isinstance(store, ObjectModelStore)
    local = ModelStore(models.store)
    for version in (models.als, models.knn):
        loaded = local.load(version)
        meta = {k: v for k, v in loaded.manifest.items() if k not in ("files", "version")}
        store.write(loaded.model, loaded.user_ids, loaded.item_ids, meta, version, loaded.extras)
    return store


def flags(s3_server: S3Server, cache: Path) -> list[str]:
    # One worker: each probe below reads the state of the one process that holds it (the
    # workers of a pod share the cache under a lock: tests/unit/test_object_store.py).
    return [
        "--guide", OWNER, "--model-cache", str(cache), "--s3-endpoint", s3_server.endpoint,
        "--workers", "1",
    ]  # fmt: skip


def damage(store: ObjectModelStore, version: str, name: str) -> None:
    key = f"{store.home}/{version}/{name}"
    with store.fs.open_input_stream(key) as stream:
        raw = bytearray(stream.read())
    raw[-1] ^= 0xFF
    with store.fs.open_output_stream(key) as out:
        out.write(bytes(raw))


def test_serves_from_its_cache_and_refuses_a_damaged_canary(
    s3_server: S3Server, bucket_store: ObjectModelStore, models: Models, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    damage(bucket_store, models.knn, "item_ids.npy")
    with running_server(bucket_store.uri, models.als, tmp_path, *flags(s3_server, cache)) as srv:
        status, body = srv.request("POST", "/v1/recommendations", {"user_id": "a0", "k": 5})
        assert status == 200 and len(body["items"]) == 5
        assert body["model_version"] == models.als
        assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [models.als]
        srv.routing.write(
            {"stable": models.als, "canary": models.knn, "canaryWeightBasisPoints": 5000,
             "salt": "s1", "generation": 2}
        )  # fmt: skip

        def canary_refused() -> bool:
            canary = srv.get("/readyz")[1]["canary"]
            return canary is not None and canary["error"] is not None

        srv.wait_for(canary_refused)
        status, ready = srv.get("/readyz")
        assert status == 200 and ready["stable"]["version"] == models.als
        assert "sha256" in ready["canary"]["error"]
        # Read, not in effect: what lets the operator roll the canary back at once.
        assert srv.metric("shopping_guide_routing_generation_read") == 2
        assert srv.metric("shopping_guide_routing_generation") == 1
        # Every shopper still gets the stable version's answers.
        for user in ("a1", "a2", "b1", "b2"):
            status, body = srv.request("POST", "/v1/recommendations", {"user_id": user})
            assert status == 200 and body["model_version"] == models.als
        # Nothing half-downloaded stays in the cache.
        assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [models.als]


def test_keeps_serving_through_an_outage_of_the_store_and_recovers(
    s3_server: S3Server, bucket_store: ObjectModelStore, models: Models, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with running_server(bucket_store.uri, models.als, tmp_path, *flags(s3_server, cache)) as srv:
        s3_server.stop()
        try:
            srv.routing.write({"stable": models.knn, "salt": "s1", "generation": 2})
            srv.wait_for(lambda: srv.get("/readyz")[1]["store_error"] is not None)
            status, ready = srv.get("/readyz")
            assert status == 200 and ready["stable"]["version"] == models.als
            assert "unreachable" in ready["store_error"]
            assert ready["generation"] == 1  # the new routing is not in effect
            status, body = srv.request("POST", "/v1/recommendations", {"user_id": "a0"})
            assert status == 200 and body["model_version"] == models.als
        finally:
            s3_server.start()
        # The failed version is tried again (after the registry's retry delay).
        srv.wait_for(lambda: srv.get("/readyz")[1]["generation"] == 2, timeout=60)
        status, ready = srv.get("/readyz")
        assert ready["stable"]["version"] == models.knn and ready["store_error"] is None
        # The cache is freed just after the new routing takes effect (registry.refresh).
        srv.wait_for(lambda: sorted(p.name for p in cache.iterdir() if p.is_dir()) == [models.knn])


def test_a_new_server_without_a_cached_stable_is_not_ready_while_the_store_is_down(
    s3_server: S3Server, bucket_store: ObjectModelStore, models: Models, tmp_path: Path
) -> None:
    from tests.server.conftest import RoutingDir

    routing = RoutingDir(tmp_path / "routing")
    routing.write({"stable": models.als, "salt": "s1", "generation": 1})
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHOPPING_GUIDE_NAME": GUIDE}
    s3_server.stop()
    log = tmp_path / "server.log"
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "shopping_guide.cli", "serve", "--model-store",
                 bucket_store.uri, "--routing", str(routing.path), "--host", "127.0.0.1",
                 "--port", str(port), "--reload-interval", "0.2",
                 *flags(s3_server, tmp_path / "cache")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            import json
            import urllib.error
            import urllib.request

            body = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and body is None:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
                    raise AssertionError("ready without a model")
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, json.loads(exc.read())
                    if payload.get("stable_error"):
                        body = payload
                except OSError:
                    time.sleep(0.2)
            assert body is not None, log.read_text()
            assert status == 503 and body["ready"] is False
            assert "unreachable" in body["store_error"]
        finally:
            process.terminate()
            process.wait(timeout=15)
    finally:
        s3_server.start()
