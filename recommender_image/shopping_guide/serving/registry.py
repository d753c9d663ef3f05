"""Which models serve: the routing file, the loaded versions, and switching between them.

Requests read one immutable `Snapshot` (routing plus loaded models) through a single
attribute, so a switch is atomic and an in-flight request finishes on the snapshot it started
with. New versions load in a worker thread and are verified before any request can see them;
versions no snapshot refers to any more are dropped and freed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from shopping_guide_contracts.routing import Cohort, Routing, RoutingError, parse

from ..artifacts import LoadedModel
from ..errors import ShoppingGuideError
from .metrics import failure_reason
from .scorer import ServingModel

log = logging.getLogger(__name__)
RETRY_FAILED_AFTER_SECONDS = 30.0


@dataclass(frozen=True)
class Snapshot:
    routing: Routing | None = None
    models: dict[str, ServingModel] = field(default_factory=dict)
    # Routed versions that could not load, with a short reason (metrics.failure_reason).
    failures: dict[str, str] = field(default_factory=dict)
    # The routing generation fully in effect: it holds while any routed version (stable or
    # canary) has not loaded, so the operator never takes a canary that no pod serves for one
    # that does. The stable model keeps serving meanwhile.
    generation_applied: int | None = None

    @property
    def stable(self) -> ServingModel | None:
        return (
            self.models.get(self.routing.stable) if self.routing and self.routing.stable else None
        )

    @property
    def canary(self) -> ServingModel | None:
        return (
            self.models.get(self.routing.canary) if self.routing and self.routing.canary else None
        )

    def route(self, user_id: str) -> tuple[ServingModel | None, Cohort]:
        """The model for this user; the canary only when it loaded."""
        canary = self.canary
        if (
            self.routing is not None
            and canary is not None
            and (self.routing.cohort(user_id) == "canary")
        ):
            return canary, "canary"
        return self.stable, "stable"


class ModelSource(Protocol):
    """Where versions load from: the claim (`artifacts.ModelStore`) or an object store
    through the pod's cache (`model_cache.ModelCache`)."""

    def load(self, version: str, verify: bool = True) -> LoadedModel: ...


class Registry:
    def __init__(
        self,
        store: ModelSource,
        routing_path: Path,
        *,
        ann_min_items: int | None = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.routing_path = routing_path
        self.ann_min_items = ann_min_items
        self.snapshot = Snapshot()
        self.routing_error: str | None = None
        self._seen_digest: str | None = None
        # The routing as the file says, kept apart from the snapshot's: a stable version that
        # failed to load is replaced there by the one that serves, and a retry must aim at
        # what the file asks for.
        self._wanted: Routing | None = None
        self._failed_at: dict[str, float] = {}
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._clock = clock
        self._lock = asyncio.Lock()

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        """Called with each new snapshot, right after the switch."""
        self._listeners.append(listener)

    def _read_routing(self) -> tuple[str, Routing | None]:
        # Read through the path each time: kubelet replaces a mounted ConfigMap by swapping
        # the `..data` symlink, so the inode behind the name changes, not the file in place.
        text = self.routing_path.read_text()
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._seen_digest:
            return digest, None
        return digest, parse(text)

    def _load(self, version: str) -> ServingModel:
        return ServingModel(self.store.load(version, verify=True), self.ann_min_items)

    async def refresh(self, force: bool = False) -> bool:
        """Apply the routing file if it changed (or a failed version is due a retry)."""
        async with self._lock:
            try:
                digest, routing = await asyncio.to_thread(self._read_routing)
            except FileNotFoundError:
                self.routing_error = f"routing file {self.routing_path} not found"
                return False
            except (OSError, RoutingError) as exc:
                self.routing_error = f"routing file {self.routing_path}: {exc}"
                log.warning("%s; keeping the current models", self.routing_error)
                return False
            due = [
                v
                for v, at in self._failed_at.items()
                if self._clock() - at >= RETRY_FAILED_AFTER_SECONDS
            ]
            if routing is None and not due and not force:
                return False
            routing = routing or self._wanted or self.snapshot.routing
            if routing is None:
                return False
            self.routing_error = None
            self._wanted = routing
            await self._apply(routing)
            self._seen_digest = digest
            return True

    async def _apply(self, routing: Routing) -> None:
        current = self.snapshot
        models: dict[str, ServingModel] = {}
        failures: dict[str, str] = {}
        # Versions rewritten in place (users forgotten) are loaded again, not reused.
        rewritten = (
            current.routing is not None
            and routing.models_revision != current.routing.models_revision
        )
        for version in sorted(routing.versions()):
            if version in current.models and not rewritten:
                models[version] = current.models[version]
                continue
            failed_at = self._failed_at.get(version)
            if failed_at is not None and self._clock() - failed_at < RETRY_FAILED_AFTER_SECONDS:
                failures[version] = current.failures.get(version, "failed to load")
                continue
            try:
                models[version] = await asyncio.to_thread(self._load, version)
                self._failed_at.pop(version, None)
                log.info("loaded model %s", version)
            except (ShoppingGuideError, OSError, ValueError, MemoryError) as exc:
                failures[version] = failure_reason(exc)
                self._failed_at[version] = self._clock()
                log.error("model %s failed to load: %s", version, exc)
        generation: int | None = routing.generation
        if any(version not in models for version in routing.versions()):
            generation = current.generation_applied
        if routing.stable and routing.stable not in models and current.stable is not None:
            # A stable version that cannot load never replaces one that serves.
            keep = current.stable
            models[keep.version] = keep
            routing = replace(routing, stable=keep.version)
        self.snapshot = Snapshot(routing, models, failures, generation)
        retain = getattr(self.store, "retain", None)
        if retain is not None:
            await asyncio.to_thread(retain, set(models))
        for listener in self._listeners:
            listener(self.snapshot)

    async def watch(self, interval: float) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep watching whatever one pass did
                log.exception("routing refresh failed")
            await asyncio.sleep(interval)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        snap = self.snapshot
        routing = snap.routing
        detail: dict[str, Any] = {
            "ready": snap.stable is not None,
            "generation": snap.generation_applied,
            "stable": snap.stable.describe() if snap.stable else None,
            "canary": None,
            "routing_error": self.routing_error,
            # An object store that cannot be reached: what is loaded keeps serving.
            "store_error": getattr(self.store, "error", None),
        }
        if routing and routing.canary:
            canary = snap.canary
            detail["canary"] = {
                "version": routing.canary,
                "weight_basis_points": routing.canary_weight_basis_points,
                "serving": canary is not None,
                "error": snap.failures.get(routing.canary),
            }
        if routing and routing.stable and routing.stable in snap.failures:
            detail["stable_error"] = snap.failures[routing.stable]
        return snap.stable is not None, detail
