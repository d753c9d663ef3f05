"""An in-memory `Cluster`: enough API server semantics for reconcile's unit tests."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from shopping_guide_operator.kube import ApiError

JSON = dict[str, Any]
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
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.writes = 0

    def put(self, obj: JSON) -> JSON:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(_uids)}")
        meta.setdefault("generation", 1)
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
            raise ApiError(409, "already exists")
        return copy.deepcopy(self.put(copy.deepcopy(obj)))

    def apply(self, obj: JSON) -> JSON:
        self.writes += 1
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        live = self.objects.get(key)
        if live is None:
            return copy.deepcopy(self.put(copy.deepcopy(obj)))
        merged = _merge(live, obj)
        if merged.get("spec") != live.get("spec"):
            merged["metadata"]["generation"] = live["metadata"]["generation"] + 1
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes += 1
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, patch: JSON) -> JSON:
        self.writes += 1
        key = ("ShoppingGuide", namespace, name)
        guide = self.objects[key]
        guide["status"] = _merge(guide.get("status") or {}, patch["status"])
        return copy.deepcopy(guide)

    # Test helpers: what controllers and kubelets would do.

    def finish_job(self, namespace: str, name: str, message: str, ok: bool = True) -> None:
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
        self.put(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-pod",
                    "namespace": namespace,
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
