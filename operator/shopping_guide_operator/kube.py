"""The thin layer that talks to the API server: get, list, create, apply, delete, status.

Manifests are plain dicts both ways. Writes go through server-side apply with one field
manager, and only when `compare.holds` says the live object differs, so a converged
ShoppingGuide costs reads only. `Cluster` is a Protocol so reconcile can be driven by an
in-memory fake in unit tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from kubernetes import client

from .compare import holds, merge_patch
from .constants import FIELD_MANAGER, GROUP, PLURAL, VERSION

JSON = dict[str, Any]

# kind -> (API path prefix, plural): every kind the operator reads or writes.
KINDS: dict[str, tuple[str, str]] = {
    "ShoppingGuide": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "CronJob": ("/apis/batch/v1", "cronjobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotOwnedError(Exception):
    """An object with the name we need exists and belongs to someone else."""


class Cluster(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> JSON | None: ...
    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]: ...
    def create(self, obj: JSON) -> JSON: ...
    def apply(self, obj: JSON) -> JSON: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def patch_status(self, namespace: str, name: str, patch: JSON) -> JSON: ...


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


@dataclass
class ApiCluster:
    """`Cluster` over a `kubernetes.client.ApiClient`; counts requests for the benchmarks."""

    api: client.ApiClient
    timeout: float = 30.0
    reads: int = 0
    writes: int = 0
    _headers: dict[str, str] = field(default_factory=dict)

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        if method == "GET":
            self.reads += 1
        else:
            self.writes += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        if query:
            url += "?" + urlencode(query)
        response = self.api.call_api(
            method,
            url,
            header_params=headers,
            body=body,
            _request_timeout=self.timeout,
        )
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status < 300:
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data.decode(errors="replace")[:500] if data else ""
            raise ApiError(response.status, message)
        return json.loads(data) if data else {}

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        try:
            found: JSON = self._request("GET", _path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._request("GET", _path(kind, namespace), {"labelSelector": selector})
        items: list[JSON] = found.get("items", [])
        return items

    def create(self, obj: JSON) -> JSON:
        meta = obj["metadata"]
        created: JSON = self._request("POST", _path(obj["kind"], meta["namespace"]), body=obj)
        return created

    def apply(self, obj: JSON) -> JSON:
        meta = obj["metadata"]
        applied: JSON = self._request(
            "PATCH",
            _path(obj["kind"], meta["namespace"], meta["name"]),
            {"fieldManager": FIELD_MANAGER, "force": "true"},
            obj,
            "application/apply-patch+yaml",
        )
        return applied

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._request(
                "DELETE",
                _path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, patch: JSON) -> JSON:
        patched: JSON = self._request(
            "PATCH",
            _path("ShoppingGuide", namespace, name) + "/status",
            body=patch,
            content_type="application/merge-patch+json",
        )
        return patched


def owned_by(obj: JSON, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def ensure(cluster: Cluster, desired: JSON, owner_uid: str) -> tuple[JSON, bool]:
    """Make the live object hold `desired`; returns (live object, whether it wrote)."""
    meta = desired["metadata"]
    live = cluster.get(desired["kind"], meta["namespace"], meta["name"])
    if live is not None and not owned_by(live, owner_uid):
        raise NotOwnedError(
            f"{desired['kind']} {meta['name']} already exists and is not owned by this "
            "ShoppingGuide; rename or delete it"
        )
    if live is not None and holds(desired, live):
        return live, False
    return cluster.apply(desired), True


def ensure_absent(cluster: Cluster, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete our object of that name if it exists; returns whether it deleted."""
    live = cluster.get(kind, namespace, name)
    if live is None or not owned_by(live, owner_uid):
        return False
    cluster.delete(kind, namespace, name)
    return True


def status_patch(old: JSON, new: JSON) -> JSON | None:
    """The merge patch of the status subresource, or None when nothing changed."""
    patch = merge_patch(old, new)
    return {"status": patch} if patch else None
