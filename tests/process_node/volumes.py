"""Pod volumes as host directories, and kubelet's atomic writer for ConfigMap-like volumes.

A ConfigMap, Secret, downward API or projected volume is laid out exactly as kubelet lays it
out, so that programs watching their mounted files see the same thing they would in a pod:

    <volume>/..2024_05_01_10_00_00.123456789/routing.json    the payload of one version
    <volume>/..data -> ..2024_05_01_10_00_00.123456789        swapped by renaming ..data_tmp
    <volume>/routing.json -> ..data/routing.json             stable, user-visible names
"""

from __future__ import annotations

import base64
import datetime
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.process_node.spec import SpecError, field_value

DATA = "..data"
DATA_TMP = "..data_tmp"

Payload = dict[str, tuple[bytes, int]]
"""relative path -> (content, file mode)"""

ObjectLookup = Callable[[str, str, bool], Mapping[str, Any] | None]
"""(kind "configmap"|"secret", name, optional) -> the object, None when optional and missing."""

TokenSource = Callable[[Mapping[str, Any]], str]
"""serviceAccountToken projection -> a token for the pod's service account."""


class VolumeNotReadyError(RuntimeError):
    """The volume cannot be set up yet (missing ConfigMap, unbound claim); retried."""


def _items(
    data: Mapping[str, bytes], items: list[Mapping[str, Any]] | None, mode: int, optional: bool
) -> Payload:
    """All keys, or just the listed `items` (key -> path, per-item mode)."""
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    payload: Payload = {}
    for item in items:
        key = str(item["key"])
        if key not in data:
            if optional:
                continue
            raise VolumeNotReadyError(f"key {key!r} not found")
        payload[str(item["path"])] = (data[key], int(item.get("mode") or mode))
    return payload


def object_data(kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    """Keys of a ConfigMap (data and binaryData) or a Secret (base64 data), as bytes."""
    data: dict[str, bytes] = {}
    if kind == "configmap":
        data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
        binary = obj.get("binaryData") or {}
        data.update({k: base64.b64decode(v) for k, v in binary.items()})
    else:
        data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
    return data


def _object_payload(
    kind: str, source: Mapping[str, Any], lookup: ObjectLookup, mode: int, name_key: str
) -> Payload:
    optional = bool(source.get("optional"))
    obj = lookup(kind, str(source[name_key]), optional)
    if obj is None:
        return {}
    return _items(object_data(kind, obj), source.get("items"), mode, optional)


def _downward_payload(pod: Mapping[str, Any], items: list[Mapping[str, Any]], mode: int) -> Payload:
    payload: Payload = {}
    for item in items:
        if "fieldRef" not in item:
            raise SpecError("downwardAPI volumes support fieldRef items only")
        value = field_value(pod, str(item["fieldRef"]["fieldPath"]))
        payload[str(item["path"])] = (value.encode(), int(item.get("mode") or mode))
    return payload


def projection_payload(
    pod: Mapping[str, Any], volume: Mapping[str, Any], lookup: ObjectLookup, token: TokenSource
) -> Payload | None:
    """The files of a configMap/secret/downwardAPI/projected volume, None for other kinds."""
    if "configMap" in volume:
        source = volume["configMap"]
        mode = int(source.get("defaultMode") or 0o644)
        return _object_payload("configmap", source, lookup, mode, "name")
    if "secret" in volume:
        source = volume["secret"]
        mode = int(source.get("defaultMode") or 0o644)
        return _object_payload("secret", source, lookup, mode, "secretName")
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        mode = int(source.get("defaultMode") or 0o644)
        return _downward_payload(pod, source.get("items") or [], mode)
    if "projected" in volume:
        projected = volume["projected"]
        mode = int(projected.get("defaultMode") or 0o644)
        payload: Payload = {}
        for source in projected.get("sources") or []:
            if "configMap" in source:
                payload.update(
                    _object_payload("configmap", source["configMap"], lookup, mode, "name")
                )
            elif "secret" in source:
                payload.update(_object_payload("secret", source["secret"], lookup, mode, "name"))
            elif "downwardAPI" in source:
                items = source["downwardAPI"].get("items") or []
                payload.update(_downward_payload(pod, items, mode))
            elif "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                payload[str(sat["path"])] = (token(sat).encode(), 0o600 if mode == 0o644 else mode)
            else:
                raise SpecError(f"projected source {sorted(source)} is not supported")
        return payload
    return None


def current_payload(root: Path) -> Payload:
    data = root / DATA
    if not data.is_dir():
        return {}
    payload: Payload = {}
    for path in data.rglob("*"):
        if path.is_file():
            payload[str(path.relative_to(data))] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return payload


def atomic_write(root: Path, payload: Payload) -> bool:
    """Publishes `payload` under `root` the way kubelet's AtomicWriter does; False when the
    files already hold exactly this payload."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / DATA).is_dir() and current_payload(root) == payload:
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    version = root / stamp
    suffix = 0
    while version.exists():
        suffix += 1
        version = root / f"{stamp}{suffix}"
    version.mkdir()
    for relative, (content, mode) in payload.items():
        if relative.startswith("/") or ".." in Path(relative).parts:
            raise SpecError(f"volume path {relative!r} must be relative and stay inside")
        target = version / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    old = str((root / DATA).readlink()) if (root / DATA).is_symlink() else None
    tmp = root / DATA_TMP
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    tmp.rename(root / DATA)
    # User-visible names: one symlink per top-level entry, through ..data.
    top = {Path(relative).parts[0] for relative in payload}
    for name in top:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(Path(DATA) / name)
    for entry in root.iterdir():
        if not entry.name.startswith("..") and entry.name not in top and entry.is_symlink():
            entry.unlink()
    if old and old != version.name:
        shutil.rmtree(root / old, ignore_errors=True)
    return True


def claim_path(
    claim: Mapping[str, Any], volume: Mapping[str, Any] | None, claims_root: Path
) -> Path:
    """A bound claim's directory: its hostPath/local PV's path, else a directory per claim
    under the state directory that outlives the pods using it."""
    status = claim.get("status") or {}
    if status.get("phase") != "Bound":
        name = (claim.get("metadata") or {}).get("name")
        raise VolumeNotReadyError(f"persistentVolumeClaim {name!r} is not bound")
    spec = (volume or {}).get("spec") or {}
    for kind in ("hostPath", "local"):
        if kind in spec:
            path = Path(spec[kind]["path"])
            path.mkdir(parents=True, exist_ok=True)
            return path
    meta = claim.get("metadata") or {}
    path = claims_root / f"{meta.get('namespace')}_{meta.get('name')}_{meta.get('uid')}"
    path.mkdir(parents=True, exist_ok=True)
    return path
