"""A pod's volumes as host directories, and the ConfigMap and Secret lookups of its env."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.process_node.kube import Api
from tests.process_node.spec import SpecError
from tests.process_node.volumes import (
    TokenSource,
    VolumeNotReadyError,
    atomic_write,
    claim_path,
    object_data,
    projection_payload,
)

log = logging.getLogger(__name__)

RESYNC_SECONDS = 1.0
TOKEN_REFRESH_FRACTION = 0.8


class PodVolumes:
    def __init__(
        self, api: Api, namespace: str, pod_name: str, root: Path, claims_root: Path
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.pod_name = pod_name
        self.root = root
        self.claims_root = claims_root
        # volume name -> host directory, once every volume could be set up.
        self.paths: dict[str, Path] | None = None
        self.error: str | None = None
        self._claims: dict[str, Path] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._next_resync = 0.0

    def sync(self, pod: dict[str, Any]) -> None:
        """Sets up every volume, and re-publishes ConfigMap-like ones at most once a second."""
        now = time.monotonic()
        if self.paths is not None and now < self._next_resync:
            return
        self._next_resync = now + RESYNC_SECONDS
        paths: dict[str, Path] = {}
        try:
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                paths[volume["name"]] = self._volume(pod, volume)
        except (VolumeNotReadyError, SpecError) as exc:
            self.error = str(exc)
            if self.paths is None:
                log.info("pod %s/%s: volumes not ready: %s", self.namespace, self.pod_name, exc)
            return
        self.error = None
        self.paths = paths

    def _volume(self, pod: dict[str, Any], volume: Mapping[str, Any]) -> Path:
        name = str(volume["name"])
        local = self.root / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            return local
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return path
        if "persistentVolumeClaim" in volume:
            if name not in self._claims:
                claim_name = str(volume["persistentVolumeClaim"]["claimName"])
                claim = self.api.get("persistentvolumeclaim", self.namespace, claim_name)
                if claim is None:
                    raise VolumeNotReadyError(f"claim {claim_name!r} not found")
                bound = (claim.get("spec") or {}).get("volumeName")
                pv = self.api.get("persistentvolume", "", str(bound)) if bound else None
                self._claims[name] = claim_path(claim, pv, self.claims_root)
            return self._claims[name]
        payload = projection_payload(pod, volume, self.lookup_object, self._token(pod, name))
        if payload is None:
            kinds = sorted(k for k in volume if k != "name")
            raise SpecError(f"volume {name!r}: type {kinds} is not supported on this node")
        atomic_write(local, payload)
        return local

    def lookup_object(self, kind: str, name: str, optional: bool) -> Mapping[str, Any] | None:
        obj = self.api.get(kind, self.namespace, name)
        if obj is None and not optional:
            raise VolumeNotReadyError(f'{kind} "{name}" not found')
        return obj

    def _token(self, pod: dict[str, Any], volume: str) -> TokenSource:
        def token(source: Mapping[str, Any]) -> str:
            key = f"{volume}/{source.get('path')}"
            cached = self._tokens.get(key)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            account = str((pod.get("spec") or {}).get("serviceAccountName") or "default")
            value = self.api.token(self.namespace, account, pod, source)
            lifetime = float(source.get("expirationSeconds") or 3607)
            self._tokens[key] = (value, time.time() + TOKEN_REFRESH_FRACTION * lifetime)
            return value

        return token

    def lookup_key(self, kind: str, name: str, key: str, optional: bool) -> str | None:
        obj = self.lookup_object(kind, name, optional)
        data = object_data(kind, obj) if obj is not None else {}
        if key not in data:
            if optional:
                return None
            raise VolumeNotReadyError(f'couldn\'t find key {key} in {kind} "{name}"')
        return data[key].decode("utf-8", "replace")

    def lookup_all(self, kind: str, name: str, optional: bool) -> Mapping[str, str]:
        obj = self.lookup_object(kind, name, optional)
        data = object_data(kind, obj) if obj is not None else {}
        return {k: v.decode("utf-8", "replace") for k, v in data.items()}
