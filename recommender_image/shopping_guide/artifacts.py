"""The model store: versioned artifact directories, written atomically, verified on load.

A version directory holds one `.npy` per array (loaded with allow_pickle=False) and
`manifest.json` with the sha256, size, shape and dtype of each. A version is assembled in a
hidden `.incoming-*` directory and renamed into place, so a reader sees all of it or nothing.

Layout of one store (a claim several guides may share):

    <store>/guides/<namespace>/<guide>/<version>/   each guide's own versions
    <store>/<version>/                              the flat layout of earlier releases
    <store>/forgotten-users.txt, <store>/audit.log  the whole store's

A store opened for a guide (`ModelStore(root, "namespace/guide")`) writes, lists and prunes
only that guide's directory. Looking a version up, it tries that directory, then the flat
layout, so the versions an earlier release wrote keep serving. Pruning never removes a flat
version: which guide one belongs to is recorded nowhere, so they stay until removed by hand
(or by pruning a store opened without a guide, which keeps the earlier behaviour). The
namespace is part of the path because claims can be shared across namespaces too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shopping_guide_contracts.routing import RoutingError
from shopping_guide_contracts.routing import parse as parse_routing
from shopping_guide_contracts.versions import is_valid_version, validate_version

from .errors import ArtifactError, ConfigError
from .model import Model

if TYPE_CHECKING:
    from .object_store import ObjectModelStore

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ARTIFACT_SCHEMA = 1
GUIDES = "guides"
# A version being written, or rewritten, is staged under this prefix; what a killed writer
# left there is removed once older than STALE_SECONDS (both stores).
INCOMING = ".incoming-"
STALE_SECONDS = 3600
# A Kubernetes name (DNS subdomain): never `..`, never a separator.
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


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


def parse_guide(value: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` into its two parts, each a Kubernetes name."""
    namespace, sep, name = value.partition("/")
    if not sep or not K8S_NAME.match(namespace) or not K8S_NAME.match(name) or ".." in value:
        raise ConfigError(f"guide must be NAMESPACE/NAME (Kubernetes names), got {value!r}")
    return namespace, name


def check_version(version: str) -> str:
    """The contracts' one version grammar: safe as one path segment of the store."""
    if not is_valid_version(version) or version == GUIDES:
        raise ArtifactError(f"{version!r} is not a model version name")
    return version


def routed_versions(routing: Path) -> set[str] | None:
    """The versions a routing file routes; empty when there is none yet (no routing
    ConfigMap so far), None when it cannot be read or parsed."""
    try:
        return set(parse_routing(routing.read_text()).versions())
    except FileNotFoundError:
        return set()
    except (OSError, RoutingError) as exc:
        log.warning("routing file %s: %s", routing, exc)
        return None


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """A manifest's JSON, of this schema; `where` names it in the error."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{where}: unreadable manifest: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema") != ARTIFACT_SCHEMA:
        raise ArtifactError(f"{where}: not a schema {ARTIFACT_SCHEMA} manifest")
    return document


def prunable(
    versions: list[str], keep: int, protect: Iterable[str], routing: Path | None
) -> list[str]:
    """Of `versions` (oldest first), all but the newest `keep` and the protected: those named
    and, read now, those `routing` routes; none when the routing file cannot be read."""
    if keep < 1:
        raise ArtifactError("keep must be at least 1")
    protected = set(protect)
    if routing is not None:
        routed = routed_versions(routing)
        if routed is None:
            log.warning("not pruning: the routing file cannot be read")
            return []
        protected |= routed
    return [v for v in versions[:-keep] if v not in protected]


class ModelStore:
    def __init__(self, root: Path, guide: str | None = None) -> None:
        """`root` is the mounted store; `guide` (`NAMESPACE/NAME`) scopes it to one guide."""
        self.root = Path(root)
        self.guide = guide
        if guide is None:
            self.home = self.root
        else:
            namespace, name = parse_guide(guide)
            self.home = self.root / GUIDES / namespace / name

    def guide_stores(self) -> list[ModelStore]:
        """The whole store: the flat layout first, then one store per guide directory."""
        stores = [ModelStore(self.root)]
        for directory in sorted((self.root / GUIDES).glob("*/*")):
            names = (directory.parent.name, directory.name)
            if directory.is_dir() and all(K8S_NAME.match(n) for n in names):
                stores.append(ModelStore(self.root, "/".join(names)))
        return stores

    def path(self, version: str) -> Path:
        """Where a version lives: this guide's directory, else the flat layout. A store opened
        without a guide also finds a version in a guide's directory (names are unique)."""
        own = self.home / check_version(version)
        if own.is_dir():
            return own
        if self.guide is not None:
            flat = self.root / version
            return flat if flat.is_dir() else own
        found = sorted(p.parent for p in self.root.glob(f"{GUIDES}/*/*/{version}/{MANIFEST}"))
        if len(found) > 1:
            where = ", ".join(str(p.parent.relative_to(self.root)) for p in found)
            raise ArtifactError(f"model version {version} is in several guides ({where})")
        return found[0] if found else own

    def versions(self) -> list[str]:
        """This guide's (or, without one, the flat layout's) complete versions, oldest first
        (by creation time; names share a second)."""
        if not self.home.is_dir():
            return []
        found: list[tuple[str, str]] = []
        for entry in self.home.iterdir():
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
        version = check_version(version or new_version())
        self.home.mkdir(parents=True, exist_ok=True)
        final = self.home / version
        if final.exists():
            raise ArtifactError(f"version {version} already exists in {self.home}")
        incoming = self.home / f"{INCOMING}{version}-{os.getpid()}"
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
                **({"guide": self.guide} if self.guide else {}),
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
            _fsync_dir(self.home)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return version, final

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.path(version) / MANIFEST
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            where = f"{self.home} or {self.root}" if self.guide else str(self.root)
            raise ArtifactError(f"model version {version} not found in {where}") from exc
        except OSError as exc:
            raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
        return parse_manifest(text, str(path))

    def load(self, version: str, verify: bool = True) -> LoadedModel:
        """Load and check a version: sizes, checksums, shapes, dtypes, finiteness."""
        manifest = self.manifest(version)
        directory = self.path(version)
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
                # Mapped, not read: the worker processes of a pod share the pages of one
                # page cache. A version is never changed in place (rewrites are renamed in),
                # so what was verified stays what is mapped. Copy-on-write, not read-only:
                # implicit's Cython code asks for writable buffers (it writes nothing). A plain
                # array over the mapping: np.memmap's subclass hooks cost on every slice.
                array = np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))
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
        extras = {
            k: v for k, v in arrays.items() if k.startswith(("catalog_", "text_", "trending_"))
        }
        return LoadedModel(
            version, directory, manifest, model, arrays["user_ids"], arrays["item_ids"], extras
        )

    def location(self, version: str) -> str:
        return str(self.path(version))

    def replace(
        self,
        version: str,
        model: Model,
        user_ids: npt.NDArray[np.str_],
        item_ids: npt.NDArray[np.str_],
        meta: Mapping[str, Any],
        extras: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        """Rewrite a version in place: written beside the old one and swapped in by rename."""
        home = self.path(version).parent
        staging = ModelStore(home / f"{INCOMING}forget-{secrets.token_hex(4)}")
        try:
            _, written = staging.write(model, user_ids, item_ids, meta, version, extras)
            retired = home / f"{INCOMING}retired-{version}-{secrets.token_hex(4)}"
            (home / version).rename(retired)
            written.rename(home / version)
            _fsync_dir(home)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging.root, ignore_errors=True)

    def read_lines(self, name: str) -> list[str]:
        """A text file of the whole store (forgotten users), one entry a line."""
        path = self.root / name
        if not path.is_file():
            return []
        return [line for line in path.read_text().splitlines() if line]

    def append_lines(self, name: str, lines: Iterable[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / name).open("a") as handle:
            handle.writelines(f"{line}\n" for line in lines)

    def prune(
        self, keep: int, protect: Iterable[str] = (), routing: Path | None = None
    ) -> list[str]:
        """Remove all but the newest `keep` versions and the protected ones; returns removed.

        Only this guide's directory (without a guide: the flat layout). `routing`, a routing
        file, protects what it routes as read now, at the end of a run that may have taken
        hours; when it cannot be read, nothing is removed this time.
        """
        removable = prunable(self.versions(), keep, protect, routing)
        for version in removable:
            # Rename first so a reader never opens a half-deleted version.
            doomed = self.home / f"{INCOMING}deleting-{version}"
            (self.home / version).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        now = time.time()
        for entry in self.home.glob(f"{INCOMING}*"):
            if now - entry.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        return removable


FORGOTTEN_USERS = "forgotten-users.txt"
FORGOTTEN_USER_HASHES = "forgotten-users.sha256"
AUDIT_LOG = "audit.log"


def user_sha256(user_id: str) -> str:
    """How an erasure request names a user: the SHA-256 of the id, lower-case hex."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def forget_user(store: ModelStore | ObjectModelStore, user_id: str) -> list[str]:
    """Remove one user from every stored version (id map, history, factors) and record the
    request, so the next training skips their events too. Returns the versions rewritten."""
    changed = _forget(store, lambda ids: np.asarray(ids == user_id))
    store.append_lines(FORGOTTEN_USERS, [user_id])
    _audit(store, "forget-user", [user_sha256(user_id)[:16]], changed)
    return changed


def forget_users_by_hash(store: ModelStore | ObjectModelStore, digests: set[str]) -> list[str]:
    """`forget_user` for users named by `user_sha256`: what an erasure request carries, so
    that no user id passes through the cluster. The digests are recorded, not the ids."""

    def named(ids: np.ndarray) -> np.ndarray:
        return np.fromiter((user_sha256(str(u)) in digests for u in ids), bool, len(ids))

    changed = _forget(store, named)
    store.append_lines(FORGOTTEN_USER_HASHES, sorted(digests))
    _audit(store, "forget-users", sorted(d[:16] for d in digests), changed)
    return changed


def _forget(
    store: ModelStore | ObjectModelStore, named: Callable[[np.ndarray], np.ndarray]
) -> list[str]:
    """Every version of the whole store: every guide's and the flat layout's, as the record
    of forgotten users is the whole store's. Each version is rewritten so that a reader sees
    the old one or the new one, never a mix (`replace`)."""
    changed: list[str] = []
    for part in store.guide_stores():
        for version in part.versions():
            if _forget_in(part, version, named):
                changed.append(version)
    return changed


def _audit(
    store: ModelStore | ObjectModelStore, action: str, users: list[str], versions: list[str]
) -> None:
    """One line per request; users only by a shortened hash, none of their events."""
    audit = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "user_sha256": users[0] if len(users) == 1 else users,
        "versions": versions,
    }
    store.append_lines(AUDIT_LOG, [json.dumps(audit)])


def _forget_in(
    store: ModelStore | ObjectModelStore,
    version: str,
    named: Callable[[np.ndarray], np.ndarray],
) -> bool:
    loaded = store.load(version)
    position = np.flatnonzero(named(loaded.user_ids))
    if not len(position):
        return False
    keep = np.ones(len(loaded.user_ids), dtype=bool)
    keep[position] = False
    model = loaded.model
    model.user_items = model.user_items[keep]
    if model.user_factors is not None:
        model.user_factors = np.ascontiguousarray(model.user_factors[keep])
    meta = {k: v for k, v in loaded.manifest.items() if k not in ("files", "version")}
    store.replace(version, model, loaded.user_ids[keep], loaded.item_ids, meta, loaded.extras)
    return True


def forgotten_users(store: ModelStore | ObjectModelStore) -> list[str]:
    return store.read_lines(FORGOTTEN_USERS)


def forgotten_user_hashes(store: ModelStore | ObjectModelStore) -> set[str]:
    return set(store.read_lines(FORGOTTEN_USER_HASHES))
