"""Routed versions from an object store, through a local cache (the pod's emptyDir).

Each version is downloaded once into `<cache>/<version>/`, every file checked against the
manifest on the way (`ObjectModelStore.fetch`), and loaded from there, its checksums checked
again. A cached version is used again only while its manifest is the store's: a rewrite
(users forgotten) changes the manifest, so the version is downloaded anew. When the store
cannot be reached, a cached copy still loads (a restarted container keeps serving), and the
error is kept for readiness to report. Versions no longer routed are removed from the cache.

The worker processes of a pod share one cache: a lock file serialises downloads, loads and
removals between them, so that none removes what another is downloading or checking.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..artifacts import INCOMING, MANIFEST, LoadedModel, ModelStore
from ..errors import ArtifactError
from ..object_store import ObjectModelStore

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, store: ObjectModelStore, directory: Path) -> None:
        self.store = store
        self.directory = Path(directory)
        self.local = ModelStore(self.directory)
        # The last failure to reach the store; None once it answers again.
        self.error: str | None = None

    def _cached_manifest(self, version: str) -> str | None:
        try:
            return (self.directory / version / MANIFEST).read_text()
        except OSError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, version: str, verify: bool = True) -> LoadedModel:
        with self._locked():
            return self._load(version)

    def _load(self, version: str) -> LoadedModel:
        cached = self._cached_manifest(version)
        try:
            current = self.store.manifest_text(version)
        except OSError as exc:
            self.error = f"model store {self.store.uri} unreachable: {exc}"
            if cached is None:
                raise
            log.warning("%s; loading %s from the cache", self.error, version)
            return self._load_cached(version)
        self.error = None
        if cached != current:
            self.store.fetch(version, self.directory, current)
        return self._load_cached(version)

    def _load_cached(self, version: str) -> LoadedModel:
        try:
            loaded = self.local.load(version, verify=True)
        except ArtifactError:
            # A damaged cache entry is dropped, so the next attempt downloads it again.
            shutil.rmtree(self.directory / version, ignore_errors=True)
            raise
        loaded.path = Path(self.store.location(version))
        return loaded

    def retain(self, versions: set[str]) -> None:
        """Free what is no longer routed (and what an interrupted download left)."""
        if not self.directory.is_dir():
            return
        with self._locked():
            self._retain(versions)

    def _retain(self, versions: set[str]) -> None:
        for entry in self.directory.iterdir():
            if entry.is_dir() and (entry.name.startswith(INCOMING) or entry.name not in versions):
                shutil.rmtree(entry, ignore_errors=True)
