"""An in-memory `Cluster`: enough API server semantics for reconcile's unit tests.

Every change bumps a cluster-wide resourceVersion, and a status patch that names a stale one
is refused with 409, as optimistic concurrency does.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from shopping_guide_operator.kube import ApiError, ConflictError

JSON = dict[str, Any]
Key = tuple[str, str, str]
_uids = itertools.count(1)


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 merge; server-side apply is approximated by the same merge."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[Key, JSON] = {}
        self.writes = 0
        self._versions = itertools.count(1)

    def _bump(self, obj: JSON) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def put(self, obj: JSON) -> JSON:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
        self._bump(obj)
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]:
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind
            and ns == namespace
            and labels.items() <= (obj["metadata"].get("labels") or {}).items()
        ]

    def create(self, obj: JSON) -> JSON:
        self.writes += 1
        meta = obj["metadata"]
        if (obj["kind"], meta["namespace"], meta["name"]) in self.objects:
            raise ConflictError(409, f"{obj['kind']} {meta['name']} already exists")
        return copy.deepcopy(self.put(copy.deepcopy(obj)))

    def apply(self, obj: JSON) -> JSON:
        self.writes += 1
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        live = self.objects.get(key)
        if live is None:
            return copy.deepcopy(self.put(copy.deepcopy(obj)))
        merged = _merge(live, obj)
        if merged != live:
            if merged.get("spec") != live.get("spec"):
                merged["metadata"]["generation"] = live["metadata"]["generation"] + 1
            self._bump(merged)
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes += 1
        self.objects.pop((kind, namespace, name), None)

    def patch_status(
        self, namespace: str, name: str, patch: JSON, resource_version: str | None
    ) -> JSON:
        self.writes += 1
        guide = self.objects.get(("ShoppingGuide", namespace, name))
        if guide is None:
            raise ApiError(404, f"shoppingguides {name} not found")
        if resource_version is not None and resource_version != guide["metadata"].get(
            "resourceVersion"
        ):
            raise ConflictError(409, "the object has been modified; please apply your changes")
        guide["status"] = _merge(guide.get("status") or {}, patch["status"])
        self._bump(guide)
        return copy.deepcopy(guide)

    # Test helpers: what controllers and kubelets would do.

    def finish_job(
        self, namespace: str, name: str, message: str, ok: bool = True, pod: str | None = None
    ) -> None:
        job = self.objects[("Job", namespace, name)]
        condition = {
            "type": "Complete" if ok else "Failed",
            "status": "True",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "message": "BackoffLimit",
        }
        job["status"] = {"startTime": "2026-01-01T00:00:00Z", "conditions": [condition]}
        if ok:
            job["status"]["completionTime"] = "2026-01-01T00:00:10Z"
        self._bump(job)
        self.put(
            {
                "kind": "Pod",
                "metadata": {
                    "name": pod or f"{name}-pod",
                    "namespace": namespace,
                    # What the Job controller puts on its pods.
                    "labels": {
                        "batch.kubernetes.io/job-name": name,
                        "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                    },
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                },
                "status": {
                    "containerStatuses": [
                        {"name": "trainer", "state": {"terminated": {"message": message}}}
                    ]
                },
            }
        )

    def make_deployment_ready(self, namespace: str, name: str, replicas: int = 2) -> None:
        deployment = self.objects[("Deployment", namespace, name)]
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"}],
        }
        self._bump(deployment)
