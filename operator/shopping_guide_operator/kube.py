"""The thin layer that talks to the API server: get, list, create, apply, delete, status.

Manifests are plain dicts both ways. Children are written with server-side apply under one
field manager, so the API server decides what changed, removed fields included. A converged
ShoppingGuide costs reads only: each applied child carries the hash of the manifest it was
applied from, and `ensure` skips the apply while that hash is unchanged and the live object
still holds every field we set. `Cluster` is a Protocol so reconcile can be driven by an
in-memory fake in unit tests.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from kubernetes.utils import Backoff, on_retry_after_error

from .compare import holds, merge_patch
from .constants import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL

JSON = dict[str, Any]
T = TypeVar("T")

# The hash of the desired manifest a child was last applied from (computed without itself).
APPLIED_HASH = f"{GROUP}/applied-hash"
# Takes spec.replicas over from our manager when autoscaling starts, keeping its value.
HANDOFF_MANAGER = "shopping-guide-handoff"

# kind -> apiVersion of every kind the operator reads or writes; the paths come from discovery.
API_VERSIONS: dict[str, str] = {
    "ShoppingGuide": API_VERSION,
    "ShoppingGuideErasure": API_VERSION,
    "ConfigMap": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Secret": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}

# kind -> its resource name (plural) in the API, for paths and RBAC.
PLURALS: dict[str, str] = {
    "ShoppingGuide": PLURAL,
    "ShoppingGuideErasure": "shoppingguideerasures",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Secret": "secrets",
    "Deployment": "deployments",
    "Job": "jobs",
    "CronJob": "cronjobs",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
}


def group_of(kind: str) -> str:
    """The API group of a kind ("" for the core group)."""
    version = API_VERSIONS[kind]
    return version.split("/", 1)[0] if "/" in version else ""


def collection_path(kind: str, namespace: str) -> str:
    """The path of a kind's objects in one namespace (for list and watch)."""
    version = API_VERSIONS[kind]
    prefix = "/api/v1" if version == "v1" else f"/apis/{version}"
    return f"{prefix}/namespaces/{quote(namespace)}/{PLURALS[kind]}"


# At most three attempts of a request that is safe to repeat; 0.2s then 0.4s, plus up to
# half again of jitter, or the server's Retry-After when that is longer (capped).
BACKOFF = Backoff(steps=3, duration=0.2, factor=2.0, jitter=0.5)
MAX_WAIT = 10.0
TRANSIENT = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ConflictError(ApiError):
    """409: the name is taken (create), or the object changed since it was read."""


class NotOwnedError(Exception):
    """An object with the name we need exists and belongs to someone else."""


class Cluster(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> JSON | None: ...
    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]: ...
    def create(self, obj: JSON) -> JSON: ...
    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = KIND,
    ) -> JSON: ...


def _api_error(exc: ApiException) -> ApiError:
    status = int(exc.status or 0)
    message = str(exc.reason or "")
    if exc.body:
        try:
            message = json.loads(exc.body).get("message", message)
        except (ValueError, AttributeError):
            message = str(exc.body)[:500]
    return (ConflictError if status == 409 else ApiError)(status, message)


def _never_sent(exc: BaseException) -> bool:
    """A connection that failed before the request left: safe to repeat even a create."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return isinstance(
        exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    )


def transient(exc: BaseException, idempotent: bool) -> bool:
    """Worth another attempt: throttling and server errors, connection failures and timeouts.
    A request that may have taken effect (a create) is repeated only when it surely did not:
    429, or a connection that never opened."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        return status == 429 or (idempotent and status in TRANSIENT)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return idempotent or _never_sent(exc)
    return False


def with_retries(
    call: Callable[[], T],
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """`call`, retried with bounded exponential backoff; API errors come out as `ApiError`."""
    try:
        return on_retry_after_error(
            BACKOFF,
            lambda exc: transient(exc, idempotent),
            call,
            lambda seconds: sleep(min(seconds, MAX_WAIT)),
            jitter,
        )
    except ApiException as exc:
        raise _api_error(exc) from exc


def _body(response: Any) -> JSON:
    data: bytes = response.data
    return json.loads(data) if data else {}


@dataclass
class ApiCluster:
    """`Cluster` over a `kubernetes.client.ApiClient`, through the client's DynamicClient.

    Discovery runs on first use, once per process: 9 GETs on a cold cache (the version, /apis
    and the 7 group versions of the kinds above), none when the client's discovery cache file
    is warm. Every operation afterwards is one request, as with hand-built paths.
    """

    api: client.ApiClient
    timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    _dynamic: DynamicClient | None = field(default=None, init=False, repr=False)
    _resources: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _discover(self) -> DynamicClient:
        return DynamicClient(self.api)  # type: ignore[no-untyped-call]

    def _resource(self, kind: str) -> Any:
        with self._lock:
            found = self._resources.get(kind)
            if found is None:
                if self._dynamic is None:
                    self._dynamic = with_retries(self._discover, True, self.sleep)
                dynamic = self._dynamic
                version = API_VERSIONS[kind]
                prefix = "api" if version == "v1" else "apis"
                try:
                    found = with_retries(
                        lambda: dynamic.resources.get(
                            api_version=version, kind=kind, prefix=prefix
                        ),
                        True,
                        self.sleep,
                    )
                except ResourceNotFoundError as exc:
                    # The kind is not served (its CRD is not installed): as the API says.
                    raise ApiError(404, f"{kind} ({version}) is not served: {exc}") from exc
                self._resources[kind] = found
            return found

    def _call(self, idempotent: bool, method: str, resource: Any, **kwargs: Any) -> JSON:
        def once() -> Any:
            return getattr(resource, method)(
                serialize=False, _request_timeout=self.timeout, **kwargs
            )

        return _body(with_retries(once, idempotent, self.sleep))

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        try:
            return self._call(True, "get", self._resource(kind), name=name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = self._call(
            True, "get", self._resource(kind), namespace=namespace, label_selector=selector
        )
        items: list[JSON] = found.get("items", [])
        return items

    def create(self, obj: JSON) -> JSON:
        """Repeated only when it surely did not happen: a 409 may be our own earlier attempt
        (or someone else's object), so callers check with `create_owned`."""
        return self._call(
            False,
            "create",
            self._resource(obj["kind"]),
            body=obj,
            namespace=obj["metadata"]["namespace"],
        )

    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON:
        return self._call(
            True,
            "server_side_apply",
            self._resource(obj["kind"]),
            body=obj,
            namespace=obj["metadata"]["namespace"],
            field_manager=field_manager,
            force_conflicts=True,
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(
                True,
                "delete",
                self._resource(kind),
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = KIND,
    ) -> JSON:
        """A merge patch of the status (of a guide, or of another kind of ours); with
        `resource_version`, refused (`ConflictError`) when the object changed since it was
        read, so a stale pass never overwrites."""
        body = dict(patch)
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        status = self._resource(kind).subresources["status"]
        return self._call(
            True,
            "patch",
            status,
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )


def owned_by(obj: JSON, uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def applied_hash(desired: JSON) -> str:
    canonical = json.dumps(desired, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _stamped(desired: JSON) -> JSON:
    digest = applied_hash(desired)
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: digest}
    return {**desired, "metadata": meta}


def _owns(live: JSON, manager: str, path: tuple[str, ...]) -> bool:
    """Whether `manager`'s apply owns the field at `path`, by the live managedFields."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        fields: Any = entry.get("fieldsV1") or {}
        for key in path:
            fields = fields.get(f"f:{key}") if isinstance(fields, dict) else None
        if fields is not None:
            return True
    return False


def _hand_off_replicas(cluster: Cluster, desired: JSON, live: JSON) -> None:
    """Autoscaling starts: the desired object stops setting spec.replicas. Applied as is, the
    API server would drop the field we own and reset it to its default (1). Kubernetes'
    documented way out: a second manager applies the current value first, so it stays
    owned and unchanged when ours lets go of it; the HPA takes it over from there."""
    replicas = (live.get("spec") or {}).get("replicas")
    if (
        "replicas" in (desired.get("spec") or {})
        or not isinstance(replicas, int)
        or not _owns(live, FIELD_MANAGER, ("spec", "replicas"))
    ):
        return
    meta = desired["metadata"]
    cluster.apply(
        {
            "apiVersion": desired["apiVersion"],
            "kind": desired["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": replicas},
        },
        field_manager=HANDOFF_MANAGER,
    )


def ensure(cluster: Cluster, desired: JSON, owner_uid: str) -> tuple[JSON, bool]:
    """Make the live object hold `desired`; returns (live object, whether it wrote)."""
    meta = desired["metadata"]
    live = cluster.get(desired["kind"], meta["namespace"], meta["name"])
    if live is not None and not owned_by(live, owner_uid):
        raise NotOwnedError(
            f"{desired['kind']} {meta['name']} already exists and is not owned by this "
            "ShoppingGuide; rename or delete it"
        )
    stamped = _stamped(desired)
    if live is not None:
        annotations = live.get("metadata", {}).get("annotations") or {}
        same = annotations.get(APPLIED_HASH) == stamped["metadata"]["annotations"][APPLIED_HASH]
        if same and holds(stamped, live):
            return live, False
        _hand_off_replicas(cluster, desired, live)
    return cluster.apply(stamped), True


def create_owned(cluster: Cluster, obj: JSON, owner_uid: str) -> JSON:
    """Create `obj`; when its name is taken, the existing object if it is ours (an earlier
    pass or attempt created it), `NotOwnedError` if it is not."""
    meta = obj["metadata"]
    try:
        return cluster.create(obj)
    except ConflictError:
        live = cluster.get(obj["kind"], meta["namespace"], meta["name"])
        if live is None:  # deleted in between: one more try
            return cluster.create(obj)
    if not owned_by(live, owner_uid):
        raise NotOwnedError(
            f"{obj['kind']} {meta['name']} already exists and is not owned by this "
            "ShoppingGuide; rename or delete it"
        )
    return live


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
