"""The model store: versioned artifact directories, written atomically, verified on load.

Layout: `<store>/<version>/` holds one `.npy` per array (loaded with allow_pickle=False) and
`manifest.json` with the sha256, size, shape and dtype of each. A version is assembled in a
hidden `.incoming-*` directory and renamed into place, so a reader sees all of it or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopping_guide_contracts.versions import validate_version

from .errors import ArtifactError
from .model import Model

MANIFEST = "manifest.json"
ARTIFACT_SCHEMA = 1
_INCOMING = ".incoming-"
_STALE_SECONDS = 3600


@dataclass
class LoadedModel:
    version: str
    path: Path
    manifest: dict[str, Any]
    model: Model
    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    # Arrays stored beside the model: the catalogue and its text index, when trained with one.
    extras: dict[str, npt.NDArray[Any]] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_version(now: datetime | None = None) -> str:
    """Sortable by time, unique by a random suffix, valid as a Kubernetes label value and in
    the shared version grammar (shopping_guide_contracts.versions)."""
    now = now or datetime.now(UTC)
    return validate_version(f"v{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}")


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Complete versions, oldest first (by creation time; names share a second)."""
        if not self.root.is_dir():
            return []
        found: list[tuple[str, str]] = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST).is_file():
                try:
                    created = str(json.loads((entry / MANIFEST).read_text()).get("created_at", ""))
                except (OSError, ValueError):
                    created = ""
                found.append((created, entry.name))
        return [name for _, name in sorted(found)]

    def write(
        self,
        model: Model,
        user_ids: npt.NDArray[np.str_],
        item_ids: npt.NDArray[np.str_],
        meta: Mapping[str, Any],
        version: str | None = None,
        extras: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> tuple[str, Path]:
        """Write a new version atomically; returns its name and final path."""
        version = version or new_version()
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / version
        if final.exists():
            raise ArtifactError(f"version {version} already exists in {self.root}")
        incoming = self.root / f"{_INCOMING}{version}-{os.getpid()}"
        incoming.mkdir()
        try:
            arrays = {
                **model.arrays(),
                **(extras or {}),
                "user_ids": user_ids,
                "item_ids": item_ids,
            }
            files: dict[str, Any] = {}
            for name, array in arrays.items():
                target = incoming / f"{name}.npy"
                with target.open("wb") as handle:
                    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                files[target.name] = {
                    "sha256": _sha256(target),
                    "bytes": target.stat().st_size,
                    "shape": list(array.shape),
                    "dtype": np.asarray(array).dtype.str,
                }
            manifest = {
                "schema": ARTIFACT_SCHEMA,
                **meta,
                "version": version,
                "algorithm": model.algorithm,
                "params": model.params,
                "avg_len": model.avg_len,
                # A rewrite (forget-user) keeps its place in the version order.
                "created_at": meta.get("created_at")
                or datetime.now(UTC).isoformat(timespec="microseconds"),
                "counts": {
                    "users": model.n_users,
                    "items": model.n_items,
                    "interactions": int(model.user_items.nnz),
                },
                "files": files,
            }
            with (incoming / MANIFEST).open("w") as handle:
                json.dump(manifest, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(incoming)
            incoming.rename(final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return version, final

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.root / version / MANIFEST
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ArtifactError(f"model version {version} not found in {self.root}") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
        if not isinstance(document, dict) or document.get("schema") != ARTIFACT_SCHEMA:
            raise ArtifactError(f"{path}: not a schema {ARTIFACT_SCHEMA} manifest")
        return document

    def load(self, version: str, verify: bool = True) -> LoadedModel:
        """Load and check a version: sizes, checksums, shapes, dtypes, finiteness."""
        manifest = self.manifest(version)
        directory = self.root / version
        arrays: dict[str, npt.NDArray[Any]] = {}
        for filename, expected in manifest.get("files", {}).items():
            path = directory / filename
            where = f"{version}/{filename}"
            if not path.is_file():
                raise ArtifactError(f"{where} is missing")
            size = path.stat().st_size
            if size != expected["bytes"]:
                raise ArtifactError(f"{where} is {size} bytes, manifest says {expected['bytes']}")
            if verify and _sha256(path) != expected["sha256"]:
                raise ArtifactError(f"{where} does not match its sha256 (corrupt)")
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise ArtifactError(f"{where} is not a readable array: {exc}") from exc
            if list(array.shape) != expected["shape"] or array.dtype.str != expected["dtype"]:
                raise ArtifactError(
                    f"{where} is {array.dtype.str}{list(array.shape)}, manifest says "
                    f"{expected['dtype']}{expected['shape']}"
                )
            arrays[filename.removesuffix(".npy")] = array
        for required in ("user_ids", "item_ids"):
            if required not in arrays:
                raise ArtifactError(f"{version} lacks {required}.npy")
        model = Model.from_arrays(
            manifest["algorithm"], manifest.get("params", {}), arrays, manifest.get("avg_len")
        )
        if model.user_items.shape != (len(arrays["user_ids"]), len(arrays["item_ids"])):
            raise ArtifactError(f"{version}: id maps do not match the interaction matrix")
        extras = {k: v for k, v in arrays.items() if k.startswith(("catalog_", "text_"))}
        return LoadedModel(
            version, directory, manifest, model, arrays["user_ids"], arrays["item_ids"], extras
        )

    def prune(self, keep: int, protect: Iterable[str] = ()) -> list[str]:
        """Remove all but the newest `keep` versions and the protected ones; returns removed."""
        if keep < 1:
            raise ArtifactError("keep must be at least 1")
        protected = set(protect)
        versions = self.versions()
        removable = [v for v in versions[:-keep] if v not in protected]
        for version in removable:
            # Rename first so a reader never opens a half-deleted version.
            doomed = self.root / f"{_INCOMING}deleting-{version}"
            (self.root / version).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        now = time.time()
        for entry in self.root.glob(f"{_INCOMING}*"):
            if now - entry.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        return removable


FORGOTTEN_USERS = "forgotten-users.txt"
AUDIT_LOG = "audit.log"


def forget_user(store: ModelStore, user_id: str) -> list[str]:
    """Remove one user from every stored version (id map, history, factors) and record the
    request, so the next training skips their events too. Returns the versions rewritten.

    Each version is rewritten beside the old one and swapped in by rename; the audit line
    names the user only by a hash and carries none of their events.
    """
    changed: list[str] = []
    for version in store.versions():
        loaded = store.load(version)
        position = np.flatnonzero(loaded.user_ids == user_id)
        if not len(position):
            continue
        keep = np.ones(len(loaded.user_ids), dtype=bool)
        keep[position] = False
        model = loaded.model
        model.user_items = model.user_items[keep]
        if model.user_factors is not None:
            model.user_factors = np.ascontiguousarray(model.user_factors[keep])
        meta = {k: v for k, v in loaded.manifest.items() if k not in ("files", "version")}
        staging = ModelStore(store.root / f"{_INCOMING}forget-{secrets.token_hex(4)}")
        _, written = staging.write(
            model, loaded.user_ids[keep], loaded.item_ids, meta, version, loaded.extras
        )
        retired = store.root / f"{_INCOMING}retired-{version}-{secrets.token_hex(4)}"
        (store.root / version).rename(retired)
        written.rename(store.root / version)
        _fsync_dir(store.root)
        shutil.rmtree(retired, ignore_errors=True)
        shutil.rmtree(staging.root, ignore_errors=True)
        changed.append(version)
    store.root.mkdir(parents=True, exist_ok=True)
    with (store.root / FORGOTTEN_USERS).open("a") as handle:
        handle.write(user_id + "\n")
    audit = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": "forget-user",
        "user_sha256": hashlib.sha256(user_id.encode()).hexdigest()[:16],
        "versions": changed,
    }
    with (store.root / AUDIT_LOG).open("a") as handle:
        handle.write(json.dumps(audit) + "\n")
    return changed


def forgotten_users(root: Path) -> list[str]:
    path = Path(root) / FORGOTTEN_USERS
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line]
