"""The registry and the metrics it publishes, driven step by step with a fake clock."""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import generate_latest

from shopping_guide.artifacts import ModelStore, forget_user
from shopping_guide.serving.app import build_app
from shopping_guide.serving.metrics import ServerMetrics
from shopping_guide.serving.registry import RETRY_FAILED_AFTER_SECONDS, Registry
from tests.server.conftest import Models, RoutingDir, corrupt_copy


def _failed_series(metrics: ServerMetrics) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    prefix = "shopping_guide_model_load_failed{"
    return [line for line in text.splitlines() if line.startswith(prefix)]


async def test_a_canary_that_fails_to_load_holds_its_generation_until_it_loads(
    models: Models, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(models.store, store)
    broken = corrupt_copy(store, models.als, "v29990101-000000-late")
    routing = RoutingDir(tmp_path / "routing")
    routing.write({"stable": models.als, "salt": "s", "generation": 1})
    now = [0.0]
    registry = Registry(ModelStore(store), routing.path, clock=lambda: now[0])
    metrics = ServerMetrics(guide="storefront")
    build_app(registry, metrics=metrics)  # subscribes the metrics to the registry
    await registry.refresh()
    assert registry.snapshot.generation_applied == 1

    routing.write({"stable": models.als, "canary": broken, "canaryWeightBasisPoints": 5000,
                   "salt": "s", "generation": 2})  # fmt: skip
    await registry.refresh()
    snap = registry.snapshot
    assert snap.stable is not None and snap.stable.version == models.als  # stable serves
    assert snap.canary is None and snap.generation_applied == 1
    assert next(iter(metrics.routing_generation.collect())).samples[0].value == 1
    (series,) = _failed_series(metrics)
    assert f'model_version="{broken}"' in series and 'guide="storefront"' in series
    assert 'reason="ArtifactError: ' in series

    # Repaired in the store: the next retry loads it, the series goes, generation 2 applies.
    shutil.rmtree(store / broken)
    shutil.copytree(store / models.als, store / broken)
    now[0] += RETRY_FAILED_AFTER_SECONDS
    await registry.refresh()
    assert registry.snapshot.canary is not None
    assert registry.snapshot.generation_applied == 2
    assert _failed_series(metrics) == []
    assert next(iter(metrics.routing_generation.collect())).samples[0].value == 2


async def test_a_new_models_revision_loads_the_rewritten_versions_again(
    models: Models, tmp_path: Path
) -> None:
    """What an erasure does: the store's versions are rewritten in place without some users,
    then the routing's modelsRevision rises, and every pod drops what it had loaded."""
    store = tmp_path / "store"
    shutil.copytree(models.store, store)
    routing = RoutingDir(tmp_path / "routing")
    routing.write({"stable": models.als, "salt": "s", "generation": 1})
    registry = Registry(ModelStore(store), routing.path)
    await registry.refresh()
    before = registry.snapshot.stable
    assert before is not None
    forgotten = forget_user(ModelStore(store), _first_user(store, models.als))
    assert models.als in forgotten
    # The same routing generation content but no new revision: nothing reloads.
    routing.write({"stable": models.als, "salt": "s", "generation": 1, "modelsRevision": 0})
    await registry.refresh()
    assert registry.snapshot.stable is before
    routing.write({"stable": models.als, "salt": "s", "generation": 2, "modelsRevision": 1})
    await registry.refresh()
    after = registry.snapshot.stable
    assert after is not None and after is not before
    assert registry.snapshot.generation_applied == 2
    loaded = ModelStore(store).load(models.als)
    assert len(loaded.user_ids) == len(ModelStore(models.store).load(models.als).user_ids) - 1


def _first_user(store: Path, version: str) -> str:
    return str(ModelStore(store).load(version).user_ids[0])
