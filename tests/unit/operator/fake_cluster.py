"""An in-memory `Cluster`: enough API server semantics for reconcile's unit tests.

Server-side apply is approximated field by field: the fake keeps, per object and field
manager, the last object that manager applied. An apply removes the fields its previous
object set and the new one does not (unless another manager's applied object still sets
them), then merges the new object in. Maps are followed key by key; lists are replaced as a
whole (the real apply merges lists such as containers by their keys; none of reconcile's tests
depend on the difference). Applying a different value takes the field away from the other
managers, as `force` does. Every change bumps a cluster-wide resourceVersion, and a status
patch that names a stale one is refused with 409, as optimistic concurrency does.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from shopping_guide_operator.constants import FIELD_MANAGER
from shopping_guide_operator.kube import ApiError, ConflictError

JSON = dict[str, Any]
Key = tuple[str, str, str]
_uids = itertools.count(1)


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 merge (status patches), also the last step of an apply."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _prune(live: Any, previous: Any, new: Any, others: list[Any]) -> Any:
    """`live` without what `previous` set and neither `new` nor any of `others` sets."""
    if not isinstance(live, dict) or not isinstance(previous, dict):
        return live
    new = new if isinstance(new, dict) else {}
    out = dict(live)
    for key, before in previous.items():
        if key not in out:
            continue
        still = [o[key] for o in others if isinstance(o, dict) and key in o]
        if key not in new and not still:
            del out[key]
        elif isinstance(before, dict):
            out[key] = _prune(out[key], before, new.get(key), still)
    return out


def _take_over(record: Any, new: Any) -> None:
    """A forced apply of a different value takes the field from the manager of `record`."""
    if not isinstance(record, dict) or not isinstance(new, dict):
        return
    for key, value in new.items():
        if key not in record:
            continue
        if isinstance(value, dict) and isinstance(record[key], dict):
            _take_over(record[key], value)
        elif record[key] != value:
            del record[key]


def _fields(obj: Any) -> JSON:
    """FieldsV1 of an applied object, lists as leaves."""
    if not isinstance(obj, dict):
        return {}
    return {f"f:{key}": _fields(value) for key, value in obj.items()}


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[Key, JSON] = {}
        # Per object, per field manager: the last object that manager applied.
        self.applied: dict[Key, dict[str, JSON]] = {}
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

    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON:
        self.writes += 1
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        live = self.objects.get(key)
        records = self.applied.setdefault(key, {}) if live is not None else {}
        previous = records.pop(field_manager, {})
        for record in records.values():
            _take_over(record, obj)
        kept = _prune(copy.deepcopy(live or {}), previous, obj, list(records.values()))
        merged: JSON = _merge(kept, obj)
        records[field_manager] = copy.deepcopy(obj)
        self.applied[key] = records
        merged["metadata"]["managedFields"] = [
            {
                "manager": manager,
                "operation": "Apply",
                "apiVersion": record.get("apiVersion"),
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields(
                    {k: v for k, v in record.items() if k not in ("apiVersion", "kind")}
                ),
            }
            for manager, record in sorted(records.items())
        ]
        if live is None:
            return copy.deepcopy(self.put(merged))
        if merged != live:
            if merged.get("spec") != live.get("spec"):
                merged["metadata"]["generation"] = live["metadata"]["generation"] + 1
            self._bump(merged)
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes += 1
        self.objects.pop((kind, namespace, name), None)
        self.applied.pop((kind, namespace, name), None)

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = "ShoppingGuide",
    ) -> JSON:
        self.writes += 1
        guide = self.objects.get((kind, namespace, name))
        if guide is None:
            raise ApiError(404, f"{kind} {name} not found")
        if resource_version is not None and resource_version != guide["metadata"].get(
            "resourceVersion"
        ):
            raise ConflictError(409, "the object has been modified; please apply your changes")
        guide["status"] = _merge(guide.get("status") or {}, patch["status"])
        self._bump(guide)
        return copy.deepcopy(guide)

    # Test helpers: what controllers and kubelets would do.

    def last_applied(self, key: Key, manager: str = FIELD_MANAGER) -> JSON:
        return copy.deepcopy(self.applied[key][manager])

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
