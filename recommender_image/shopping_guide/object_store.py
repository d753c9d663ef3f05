"""The model store in object storage (S3 and what speaks its API), through pyarrow's S3
filesystem.

The layout is the claim's (`artifacts.ModelStore`) under a bucket and prefix:

    <bucket>/<prefix>/guides/<namespace>/<guide>/<version>/<file>.npy, manifest.json
    <bucket>/<prefix>/forgotten-users.txt, forgotten-users.sha256, audit.log

Object storage has no rename, so a version becomes visible differently: every file is
uploaded first and the manifest (the sha256 and size of each file) last. A version exists only
once its manifest does, and a reader verifies every file against it; removal deletes the
manifest first. A rewrite (users forgotten) uploads the new files under new keys, then
replaces the manifest in one PUT (atomic in S3), then deletes the old files: a reader holds
either the old manifest and old files or the new ones; one caught between fails its checksum
or finds a file gone, and tries again.

pyarrow over boto3: it is a dependency already (the events reader), it streams objects
without holding them in memory twice, and its filesystem API covers everything used here.
Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.fs as pafs

from .artifacts import (
    GUIDES,
    INCOMING,
    K8S_NAME,
    MANIFEST,
    STALE_SECONDS,
    LoadedModel,
    ModelStore,
    check_version,
    parse_guide,
    parse_manifest,
    prunable,
)
from .errors import ArtifactError, ConfigError
from .model import Model

log = logging.getLogger(__name__)

SCHEME = "s3://"
_CHUNK = 1 << 20


def is_object_uri(value: str | os.PathLike[str]) -> bool:
    return str(value).startswith(SCHEME)


def parse_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` into the bucket and the prefix (without slashes at its ends)."""
    if not uri.startswith(SCHEME):
        raise ConfigError(f"an object store is s3://BUCKET[/PREFIX], got {uri!r}")
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(part in ("", ".", "..") for part in prefix.split("/") if prefix):
        raise ConfigError(f"an object store is s3://BUCKET[/PREFIX], got {uri!r}")
    return bucket, prefix


@dataclass(frozen=True)
class S3Options:
    """Where the S3 API answers. Empty endpoint: AWS itself."""

    endpoint: str | None = None
    region: str = "us-east-1"
    ca_file: Path | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    # Where the credentials are: `<prefix>AWS_ACCESS_KEY_ID` and `<prefix>AWS_SECRET_ACCESS_KEY`
    # (the events may live in another store than the models, with keys of their own).
    credentials_prefix: str = ""

    def filesystem(self) -> pafs.S3FileSystem:
        scheme, override = "https", None
        if self.endpoint:
            scheme, sep, rest = self.endpoint.partition("://")
            if not sep or scheme not in ("http", "https") or not rest:
                raise ConfigError(
                    f"the S3 endpoint must be http(s)://HOST[:PORT], got {self.endpoint!r}"
                )
            override = rest.rstrip("/")
        prefix = self.credentials_prefix
        return pafs.S3FileSystem(
            access_key=os.environ.get(f"{prefix}AWS_ACCESS_KEY_ID") or None,
            secret_key=os.environ.get(f"{prefix}AWS_SECRET_ACCESS_KEY") or None,
            session_token=os.environ.get(f"{prefix}AWS_SESSION_TOKEN") or None,
            region=self.region,
            scheme=scheme,
            endpoint_override=override,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            tls_ca_file_path=str(self.ca_file) if self.ca_file else None,
        )


def download(
    fs: pafs.FileSystem, source: str, target: Path, expected: Mapping[str, Any] | None = None
) -> None:
    """Copy one object to a local file, checking its size and sha256 against `expected`
    (a manifest entry) while it streams; a mismatch removes the file."""
    digest = hashlib.sha256()
    size = 0
    with fs.open_input_stream(source) as stream, target.open("wb") as out:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if expected is None:
        return
    where = "/".join(Path(source).parts[-2:])
    if size != expected["bytes"]:
        target.unlink(missing_ok=True)
        raise ArtifactError(
            f"{where} is {size} bytes, manifest says {expected['bytes']} (truncated or replaced)"
        )
    if digest.hexdigest() != expected["sha256"]:
        target.unlink(missing_ok=True)
        raise ArtifactError(f"{where} does not match its sha256 (corrupt)")


def _same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two manifest entries of one file name that name the same bytes."""
    same = a.get("sha256") == b.get("sha256") and a.get("bytes") == b.get("bytes")
    return same and bool(a.get("sha256"))


def _local_files(version_dir: Path) -> dict[str, Any]:
    """The manifest entries of a local copy of a version ({} without a readable one)."""
    path = version_dir / MANIFEST
    try:
        files = parse_manifest(path.read_text(), str(path)).get("files", {})
    except (OSError, UnicodeDecodeError, ArtifactError):
        return {}
    return files if isinstance(files, dict) else {}


def _upload(fs: pafs.FileSystem, source: Path, target: str) -> None:
    with source.open("rb") as handle, fs.open_output_stream(target) as out:
        while chunk := handle.read(_CHUNK):
            out.write(chunk)


class ObjectModelStore:
    """`artifacts.ModelStore`'s operations on a bucket and prefix (see the module's text)."""

    def __init__(self, fs: pafs.FileSystem, uri: str, guide: str | None = None) -> None:
        self.fs = fs
        self.uri = uri.rstrip("/")
        bucket, prefix = parse_uri(uri)
        self.root = f"{bucket}/{prefix}" if prefix else bucket
        self.guide = guide
        if guide is None:
            self.home = self.root
        else:
            namespace, name = parse_guide(guide)
            self.home = f"{self.root}/{GUIDES}/{namespace}/{name}"

    def __repr__(self) -> str:
        return f"ObjectModelStore({self.uri!r}, guide={self.guide!r})"

    def location(self, version: str) -> str:
        return f"{SCHEME}{self.home}/{check_version(version)}"

    def _entries(self, base: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
        return list(self.fs.get_file_info(selector))

    def guide_stores(self) -> list[ObjectModelStore]:
        stores = [ObjectModelStore(self.fs, self.uri)]
        for namespace in self._entries(f"{self.root}/{GUIDES}"):
            if namespace.type != pafs.FileType.Directory:
                continue
            for guide in self._entries(namespace.path):
                names = (namespace.base_name, guide.base_name)
                if guide.type == pafs.FileType.Directory and all(K8S_NAME.match(n) for n in names):
                    stores.append(ObjectModelStore(self.fs, self.uri, "/".join(names)))
        return stores

    def versions(self) -> list[str]:
        """Versions whose manifest exists, oldest first by creation time."""
        found: list[tuple[str, str]] = []
        for entry in self._entries(self.home):
            name = entry.base_name
            if entry.type != pafs.FileType.Directory or name.startswith(".") or name == GUIDES:
                continue
            try:
                created = str(self.manifest(name).get("created_at", ""))
            except ArtifactError:
                continue  # still uploading, or being removed
            found.append((created, name))
        return [name for _, name in sorted(found)]

    def manifest_text(self, version: str) -> str:
        key = f"{self.home}/{check_version(version)}/{MANIFEST}"
        try:
            with self.fs.open_input_stream(key) as stream:
                return bytes(stream.read()).decode("utf-8")
        except FileNotFoundError as exc:
            raise ArtifactError(f"model version {version} not found in {self.uri}") from exc

    def manifest(self, version: str) -> dict[str, Any]:
        return parse_manifest(self.manifest_text(version), f"{self.location(version)}/{MANIFEST}")

    def fetch(self, version: str, directory: Path, manifest_text: str | None = None) -> Path:
        """Download a version into `directory/<version>`, every file checked against the
        manifest on the way; returns that path. Assembled beside it and renamed into place.
        A file the copy already there holds unchanged (a version rewritten in place) is linked
        from it, not downloaded; loading checks its sha256 as for any file."""
        text = manifest_text if manifest_text is not None else self.manifest_text(version)
        manifest = parse_manifest(text, f"{self.location(version)}/{MANIFEST}")
        directory.mkdir(parents=True, exist_ok=True)
        present = _local_files(directory / version)
        incoming = Path(tempfile.mkdtemp(prefix=f"{INCOMING}{version}-", dir=directory))
        try:
            for filename, expected in manifest.get("files", {}).items():
                local = incoming / Path(filename).name
                held = present.get(filename)
                if held is not None and _same_content(held, expected):
                    with contextlib.suppress(OSError):
                        os.link(directory / version / Path(filename).name, local)
                        continue
                key = f"{self.home}/{version}/{expected.get('key', filename)}"
                try:
                    download(self.fs, key, local, expected)
                except FileNotFoundError as exc:
                    raise ArtifactError(f"{version}/{filename} is missing") from exc
            (incoming / MANIFEST).write_text(text)
            final = directory / version
            if final.exists():
                retired = directory / f"{INCOMING}retired-{version}-{secrets.token_hex(4)}"
                final.rename(retired)
                shutil.rmtree(retired, ignore_errors=True)
            incoming.rename(final)
            return final
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise

    def load(self, version: str, verify: bool = True) -> LoadedModel:
        """Download into a temporary directory and load from there (checksums were checked on
        the way, so `verify` costs nothing more)."""
        with tempfile.TemporaryDirectory(prefix="shopping-guide-") as scratch:
            self.fetch(version, Path(scratch))
            loaded = ModelStore(Path(scratch)).load(version, verify=False)
        loaded.path = Path(self.location(version))
        return loaded

    def _publish(
        self,
        staged: Path,
        version: str,
        subdir: str = "",
        uploaded: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload a staged version's files, then its manifest (with the keys used) last. A
        file the same as one of `uploaded` (the version's current manifest entries: same
        sha256 and size) keeps that object's key and is not uploaded again."""
        manifest: dict[str, Any] = json.loads((staged / MANIFEST).read_text())
        base = f"{self.home}/{version}"
        for filename, entry in manifest["files"].items():
            current = (uploaded or {}).get(filename)
            if current is not None and _same_content(current, entry):
                key = current.get("key", filename)
            else:
                key = f"{subdir}/{filename}" if subdir else filename
                _upload(self.fs, staged / filename, f"{base}/{key}")
            if key != filename:
                entry["key"] = key
        with self.fs.open_output_stream(f"{base}/{MANIFEST}") as out:
            out.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        return manifest

    def write(
        self,
        model: Model,
        user_ids: npt.NDArray[np.str_],
        item_ids: npt.NDArray[np.str_],
        meta: Mapping[str, Any],
        version: str | None = None,
        extras: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> tuple[str, str]:
        """Write a new version; returns its name and location (s3://...)."""
        with tempfile.TemporaryDirectory(prefix="shopping-guide-") as scratch:
            staging = ModelStore(Path(scratch), self.guide)
            version, staged = staging.write(model, user_ids, item_ids, meta, version, extras)
            if self._exists(f"{self.home}/{version}/{MANIFEST}"):
                raise ArtifactError(f"version {version} already exists in {self.uri}")
            self._publish(staged, version)
        return version, self.location(version)

    def replace(
        self,
        version: str,
        model: Model,
        user_ids: npt.NDArray[np.str_],
        item_ids: npt.NDArray[np.str_],
        meta: Mapping[str, Any],
        extras: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        """Rewrite a version in place: changed files under new keys, the manifest swapped in
        one PUT, then the files it no longer names deleted. Unchanged files keep their
        objects: a trending refresh uploads its few kilobytes, not the whole model."""
        old = self.manifest(version)
        with tempfile.TemporaryDirectory(prefix="shopping-guide-") as scratch:
            _, staged = ModelStore(Path(scratch), self.guide).write(
                model, user_ids, item_ids, meta, version, extras
            )
            new = self._publish(
                staged, version, f"rev-{secrets.token_hex(6)}", old.get("files", {})
            )
        kept = {entry.get("key", name) for name, entry in new["files"].items()}
        for name, entry in old.get("files", {}).items():
            key = entry.get("key", name)
            if key not in kept:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.delete_file(f"{self.home}/{version}/{key}")

    def _exists(self, key: str) -> bool:
        return bool(self.fs.get_file_info(key).type == pafs.FileType.File)

    def prune(
        self, keep: int, protect: Iterable[str] = (), routing: Path | None = None
    ) -> list[str]:
        """`ModelStore.prune` on the bucket: the manifest goes first, so a version is gone for
        every reader before any of its files is."""
        versions = self.versions()
        removable = prunable(versions, keep, protect, routing)
        for version in removable:
            self.fs.delete_file(f"{self.home}/{version}/{MANIFEST}")
            self.fs.delete_dir(f"{self.home}/{version}")
        self._remove_stale_uploads(set(versions))
        return removable

    def _remove_stale_uploads(self, complete: set[str]) -> None:
        """Versions without a manifest (a writer that died) older than an hour."""
        now = time.time()
        for entry in self._entries(self.home):
            name = entry.base_name
            if entry.type != pafs.FileType.Directory or name in complete or name == GUIDES:
                continue
            if self._exists(f"{entry.path}/{MANIFEST}"):
                continue
            selector = pafs.FileSelector(entry.path, recursive=True, allow_not_found=True)
            times = [i.mtime.timestamp() for i in self.fs.get_file_info(selector) if i.mtime]
            if times and now - max(times) > STALE_SECONDS:
                self.fs.delete_dir(entry.path)

    def read_lines(self, name: str) -> list[str]:
        """A text file of the whole store (forgotten users), one entry a line."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}") as stream:
                text = bytes(stream.read()).decode("utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line]

    def append_lines(self, name: str, lines: Iterable[str]) -> None:
        """Objects cannot be appended to: read, add, write back whole."""
        text = "".join(f"{line}\n" for line in [*self.read_lines(name), *lines])
        with self.fs.open_output_stream(f"{self.root}/{name}") as out:
            out.write(text.encode("utf-8"))


AnyStore = ModelStore | ObjectModelStore


def open_store(
    location: str | os.PathLike[str], guide: str | None = None, s3: S3Options | None = None
) -> AnyStore:
    """A claim's directory, or `s3://bucket/prefix` with the S3 options."""
    if is_object_uri(location):
        return ObjectModelStore((s3 or S3Options()).filesystem(), str(location), guide)
    return ModelStore(Path(location), guide)


def open_events(location: str, s3: S3Options | None, scratch: Path) -> Path:
    """An events file to read: a local path as it is, an object downloaded into `scratch`
    (its name kept, so the format and compression are recognised the same way)."""
    if not is_object_uri(location):
        return Path(location)
    bucket, key = parse_uri(location)
    if not key:
        raise ConfigError(f"events in object storage are s3://BUCKET/KEY, got {location!r}")
    fs = (s3 or S3Options()).filesystem()
    target = scratch / Path(key).name
    try:
        download(fs, f"{bucket}/{key}", target)
    except FileNotFoundError as exc:
        raise ConfigError(f"events object {location} not found") from exc
    return target
