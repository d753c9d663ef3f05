"""An informer-style cache of the guides and their children: the `Cluster` reconcile reads.

Per watched namespace and kind, one thread lists and then watches the API with a server-side
label selector (only objects labelled `app.kubernetes.io/managed-by=shopping-guide-operator`,
and of the pods only the training ones), resuming from the last resourceVersion (bookmarks
keep it fresh) and relisting after 410 Gone. Reads (`get`, `list`) are answered from memory,
so a pass over a converged guide makes no API request at all. Writes go to the wrapped
`Cluster`, and the server's answer is folded into the cache at once, so a pass (and the one
after it) sees its own writes even before the watch delivers them. Every change the watch
sees wakes the worker of the guide it belongs to (its `shoppingguide.io/guide` label, or the
guide itself); the echo of our own write, already in the cache, wakes nobody.

Namespaces are started lazily, on the first read in them: the operator serves whichever
namespaces kopf hands it guides from, so the informers need no list of their own and work
with the same per-namespace RBAC as the rest.

A name we are about to apply that the cache does not know may still be taken by an object
of someone else (without our labels the watch never shows it): `apply` then checks with one
live read before writing, so `ensure` keeps refusing to take it over. That read happens only
when creating, never in a steady pass.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from kubernetes import client

from .builders.erasure import COMPONENT_ERASURE
from .builders.trending import COMPONENT_TRENDING
from .constants import (
    COMPONENT_TRAINING,
    FIELD_MANAGER,
    KIND,
    LABEL_COMPONENT,
    LABEL_GUIDE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from .kube import (
    API_VERSIONS,
    JSON,
    ApiError,
    Cluster,
    NotOwnedError,
    collection_path,
    owned_by,
)
from .worker import Key

log = logging.getLogger(__name__)

Notify = Callable[[Key], None]

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
OURS = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

# kind -> the server-side label selector of its watch (None: every object, the guides).
# Only the pods of our Jobs (training, erasure, trending): reconcile reads a Job's pods for its
# termination message (by their job-name label, answered from memory); the serving pods are
# the Deployment's.
WATCHED: dict[str, str | None] = {
    "ShoppingGuide": None,
    # Requests people create: they carry no label of ours.
    "ShoppingGuideErasure": None,
    "ConfigMap": OURS,
    "Service": OURS,
    "Deployment": OURS,
    "CronJob": OURS,
    "Job": OURS,
    "Pod": f"{OURS},{LABEL_COMPONENT} in "
    f"({COMPONENT_TRAINING},{COMPONENT_ERASURE},{COMPONENT_TRENDING})",
    # The attribution key: ours only, so no other Secret's data reaches the operator.
    "Secret": OURS,
    "HorizontalPodAutoscaler": OURS,
    "PodDisruptionBudget": OURS,
    "NetworkPolicy": OURS,
}
# What an informer asks of the API for each kind (operator/rbac/role.yaml grants it).
INFORMER_VERBS = ("list", "watch")
# kind -> the `Cluster` write methods reconcile calls on it (through `CachedCluster` below):
# `ensure` applies the ConfigMap, Service, Deployment, CronJob, HPA, PDB and NetworkPolicy;
# `ensure_absent` deletes the optional ones (CronJob, HPA, PDB, NetworkPolicy) when the spec
# drops them; a training Job is created, never applied, and deleted when superseded; the
# attribution key Secret is created once, never applied (its key is random); of the
# guides only the status is written (`patch_status`).
WRITES: dict[str, tuple[str, ...]] = {
    "ShoppingGuide": ("patch_status",),
    "ShoppingGuideErasure": ("patch_status",),
    "ConfigMap": ("apply",),
    "Service": ("apply",),
    "Deployment": ("apply",),
    "CronJob": ("apply", "delete"),
    "Job": ("create", "delete"),
    "Pod": (),
    "Secret": ("create",),
    "HorizontalPodAutoscaler": ("apply", "delete"),
    "PodDisruptionBudget": ("apply", "delete"),
    "NetworkPolicy": ("apply", "delete"),
}
# The API verbs behind each write method. `apply` is server-side apply, a patch, which creates
# the object when it is new (that needs create); before creating, `CachedCluster.apply` reads
# the name once (get) in case someone else's object, unseen by the label-selected watch,
# holds it. `patch_status` patches the status subresource.
METHOD_VERBS: dict[str, tuple[str, ...]] = {
    "create": ("create",),
    "apply": ("get", "create", "patch"),
    "delete": ("delete",),
    "patch_status": ("patch",),
}
# Labels the store indexes, so that a pass's list does not scan a namespace's every object.
INDEXED = (LABEL_GUIDE, JOB_NAME_LABEL)

NOT_SERVED_RETRY_SECONDS = 60.0
WATCH_SECONDS = 300  # the server ends each watch after about this long; we resume from there
SYNC_TIMEOUT = 60.0
PAGE = 500


def parse_selector(selector: str | None) -> dict[str, frozenset[str]]:
    """A label selector of `key=value` and `key in (a,b)` terms: key -> the values allowed."""
    if not selector:
        return {}
    terms: dict[str, frozenset[str]] = {}
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = raw.strip()
        if " in " in term:
            key, values = term.split(" in ", 1)
            terms[key.strip()] = frozenset(v.strip() for v in values.strip("() ").split(","))
        else:
            key, value = term.split("=", 1)
            terms[key] = frozenset({value})
    return terms


def selects(selector: dict[str, frozenset[str]], labels: dict[str, str]) -> bool:
    return all(labels.get(key) in values for key, values in selector.items())


def _labels(obj: JSON) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


def _rv(obj: JSON) -> int | None:
    """The resourceVersion as a number (etcd's revision), None if it is not one."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


def _newer(candidate: JSON, held: JSON | None) -> bool | None:
    """True: replaces `held`; None: the same version; False: older, ignore it."""
    if held is None:
        return True
    new, old = _rv(candidate), _rv(held)
    if new is None or old is None:
        return True
    if new == old:
        return None
    return new > old


def owner_key(kind: str, namespace: str, obj: JSON) -> Key | None:
    """The guide whose worker a change of this object concerns."""
    if kind == "ShoppingGuide":
        return namespace, obj["metadata"]["name"]
    if kind == "ShoppingGuideErasure":
        guide = (obj.get("spec") or {}).get("guide")
        return (namespace, str(guide)) if guide else None
    guide = _labels(obj).get(LABEL_GUIDE)
    return (namespace, guide) if guide else None


class Store:
    """The objects of one kind in one namespace, indexed by name and by `INDEXED` labels."""

    def __init__(self) -> None:
        self.objects: dict[str, JSON] = {}
        self.index: dict[tuple[str, str], set[str]] = {}

    def _unindex(self, name: str) -> None:
        old = self.objects.get(name)
        if old is None:
            return
        labels = _labels(old)
        for key in INDEXED:
            if key in labels:
                names = self.index.get((key, labels[key]))
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self.index[(key, labels[key])]

    def put(self, obj: JSON) -> None:
        # They are often half an object: each read copies less. A Deployment's are kept:
        # `kube.ensure` reads them to hand `replicas` over to the HPA.
        if obj.get("kind") != "Deployment":
            obj["metadata"].pop("managedFields", None)
        name = obj["metadata"]["name"]
        self._unindex(name)
        self.objects[name] = obj
        labels = _labels(obj)
        for key in INDEXED:
            if key in labels:
                self.index.setdefault((key, labels[key]), set()).add(name)

    def pop(self, name: str) -> JSON | None:
        self._unindex(name)
        return self.objects.pop(name, None)

    def select(self, labels: dict[str, str]) -> list[JSON]:
        names: Any = self.objects.keys()
        for key in INDEXED:
            if key in labels:
                names = self.index.get((key, labels[key]), set())
                break
        wanted = labels.items()
        found = []
        for name in names:
            obj = self.objects[name]
            if wanted <= _labels(obj).items():
                found.append(obj)
        return found


class GoneError(Exception):
    """410: the resourceVersion we resume from is too old; list again."""


@dataclass
class Informer:
    """List, then watch, one kind in one namespace, until stopped; feeds `CachedCluster`."""

    cache: CachedCluster
    kind: str
    namespace: str
    selector: str | None
    synced: threading.Event
    resource_version: str | None = None
    _thread: threading.Thread | None = None
    _response: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self.kind}-{self.namespace}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        response = self._response
        if response is not None:
            # Unblocks the thread's read of the stream (urllib3 2.3+ allows it from here).
            shutdown = getattr(response, "shutdown", None)
            if shutdown is not None:
                with contextlib.suppress(Exception):  # best effort, at exit
                    shutdown()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _query(self, **extra: str) -> dict[str, str]:
        query = dict(extra)
        if self.selector:
            query["labelSelector"] = self.selector
        return query

    def _run(self) -> None:
        delay = 0.5
        while not self.cache.stopping.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                    self.synced.set()
                self._watch()
                delay = 0.5
            except GoneError:
                log.info(
                    "%s in %s: resourceVersion too old, listing again", self.kind, self.namespace
                )
                self.resource_version = None
            except ApiError as exc:
                if exc.status != 404:
                    if self.cache.stopping.is_set():
                        return
                    delay = self._pause(exc, delay)
                    continue
                # The kind is not served (an optional CRD, such as the erasure requests', is
                # not installed): there are none of them, so the namespace counts as synced.
                if not self.synced.is_set():
                    log.warning("%s is not served: %s; looking again later", self.kind, exc)
                self.synced.set()
                self.cache.stopping.wait(NOT_SERVED_RETRY_SECONDS)
            except Exception as exc:  # the informer outlives any API failure
                if self.cache.stopping.is_set():
                    return
                delay = self._pause(exc, delay)

    def _pause(self, exc: Exception, delay: float) -> float:
        """Wait out a failure; the next, longer delay."""
        log.warning(
            "watch of %s in %s failed (%s); again in %.1fs", self.kind, self.namespace, exc, delay
        )
        self.cache.stopping.wait(delay)
        return min(30.0, delay * 2)

    def _list(self) -> None:
        items: list[JSON] = []
        cont: str | None = None
        while True:
            query = self._query(limit=str(PAGE))
            if cont:
                query["continue"] = cont
            page = self.cache.request_json("GET", collection_path(self.kind, self.namespace), query)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.resource_version = str(meta.get("resourceVersion") or "") or None
        self.cache.replace(self.kind, self.namespace, items, _rv(page))

    def _watch(self) -> None:
        timeout = WATCH_SECONDS + random.randint(0, 60)
        query = self._query(
            watch="true",
            allowWatchBookmarks="true",
            timeoutSeconds=str(timeout),
            resourceVersion=self.resource_version or "",
        )
        path = collection_path(self.kind, self.namespace)
        response = self.cache.stream("GET", path, query, timeout + 30)
        self._response = response
        try:
            for line in _lines(response):
                if self.cache.stopping.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise GoneError
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "")))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.cache.forget(self.kind, self.namespace, obj)
                else:
                    self.cache.observe(self.kind, self.namespace, obj)
        finally:
            self._response = None
            response.release_conn()


def _lines(response: Any) -> Iterator[str]:
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = buffer[:end].decode("utf-8", errors="replace")
            del buffer[: end + 1]
            yield line
    if buffer.strip():
        yield buffer.decode("utf-8", errors="replace")


class CachedCluster:
    """`Cluster` whose reads come from the informers; writes go to `inner` and fold back."""

    def __init__(
        self,
        inner: Cluster,
        api: client.ApiClient,
        notify: Notify,
        kinds: dict[str, str | None] | None = None,
        sync_timeout: float = SYNC_TIMEOUT,
    ) -> None:
        self.inner = inner
        self.api = api
        self.notify = notify
        self.kinds = dict(WATCHED if kinds is None else kinds)
        self.sync_timeout = sync_timeout
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self._stores: dict[tuple[str, str], Store] = {}
        self._namespaces: dict[str, threading.Event] = {}
        self._informers: list[Informer] = []
        self._selectors = {kind: parse_selector(sel) for kind, sel in self.kinds.items()}

    # --- the API, for the informers ------------------------------------------------------

    def _call(self, method: str, path: str, query: dict[str, str], timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        url += "?" + urlencode(query)
        return self.api.call_api(method, url, header_params=headers, _request_timeout=timeout)

    def request_json(self, method: str, path: str, query: dict[str, str]) -> JSON:
        response = self._call(method, path, query, 60.0)
        data: bytes = response.read()
        if response.status == 410:
            raise GoneError
        if not 200 <= response.status < 300:
            raise ApiError(response.status, data.decode(errors="replace")[:300])
        found: JSON = json.loads(data)
        return found

    def stream(self, method: str, path: str, query: dict[str, str], timeout: float) -> Any:
        response = self._call(method, path, query, timeout)
        raw = response.response
        if response.status == 410:
            raw.release_conn()
            raise GoneError
        if not 200 <= response.status < 300:
            data: bytes = response.read()
            raw.release_conn()
            raise ApiError(response.status, data.decode(errors="replace")[:300])
        return raw

    # --- lifecycle -----------------------------------------------------------------------

    def watch_namespace(self, namespace: str) -> threading.Event:
        """Start the informers of a namespace (once); returns its all-synced flag."""
        with self._lock:
            ready = self._namespaces.get(namespace)
            if ready is not None:
                return ready
            ready = self._namespaces[namespace] = threading.Event()
            flags = []
            for kind, selector in self.kinds.items():
                self._stores.setdefault((kind, namespace), Store())
                synced = threading.Event()
                flags.append(synced)
                informer = Informer(self, kind, namespace, selector, synced)
                self._informers.append(informer)
                self._spawn(informer)

        def all_synced() -> None:
            for flag in flags:
                while not flag.wait(1.0):
                    if self.stopping.is_set():
                        return
            ready.set()

        threading.Thread(
            target=all_synced, name=f"informers-synced-{namespace}", daemon=True
        ).start()
        return ready

    def _spawn(self, informer: Informer) -> None:
        informer.start()

    def wait_synced(self, namespace: str) -> None:
        if not self.watch_namespace(namespace).wait(self.sync_timeout):
            raise ApiError(503, f"the cache of namespace {namespace} has not synced yet")

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        with self._lock:
            informers = list(self._informers)
        for informer in informers:
            informer.stop()
        deadline = time.monotonic() + timeout
        for informer in informers:
            informer.join(max(0.0, deadline - time.monotonic()))

    # --- what the informers see ----------------------------------------------------------

    def _wake(self, kind: str, namespace: str, obj: JSON) -> None:
        key = owner_key(kind, namespace, obj)
        if key is not None:
            try:
                self.notify(key)
            except Exception:  # e.g. the loop is closing at exit
                log.debug("could not wake %s", key, exc_info=True)

    def observe(self, kind: str, namespace: str, obj: JSON) -> bool:
        """An object as the watch (or a write) saw it; returns whether it changed the cache."""
        with self._lock:
            store = self._stores.setdefault((kind, namespace), Store())
            held = store.objects.get(obj["metadata"]["name"])
            if not _newer(obj, held):
                return False
            store.put(obj)
        self._wake(kind, namespace, obj)
        if held is not None:
            self._wake_moved(kind, namespace, held, obj)
        return True

    def _wake_moved(self, kind: str, namespace: str, held: JSON, obj: JSON) -> None:
        old, new = owner_key(kind, namespace, held), owner_key(kind, namespace, obj)
        if old is not None and old != new:
            self._wake(kind, namespace, held)

    def forget(self, kind: str, namespace: str, obj: JSON) -> None:
        with self._lock:
            store = self._stores.setdefault((kind, namespace), Store())
            held = store.objects.get(obj["metadata"]["name"])
            if held is None or _newer(obj, held) is False:
                return
            store.pop(obj["metadata"]["name"])
        self._wake(kind, namespace, held)

    def replace(self, kind: str, namespace: str, items: list[JSON], list_rv: int | None) -> None:
        """A fresh list: what it lacks is gone (unless a write of ours is newer than it)."""
        changed: list[JSON] = []
        with self._lock:
            store = self._stores.setdefault((kind, namespace), Store())
            seen = set()
            for obj in items:
                seen.add(obj["metadata"]["name"])
                held = store.objects.get(obj["metadata"]["name"])
                if _newer(obj, held):
                    store.put(obj)
                    changed.append(obj)
            for name in list(store.objects):
                if name in seen:
                    continue
                held_rv = _rv(store.objects[name])
                if list_rv is not None and held_rv is not None and held_rv > list_rv:
                    continue
                gone = store.pop(name)
                if gone is not None:
                    changed.append(gone)
        for obj in changed:
            self._wake(kind, namespace, obj)

    def _fold(self, obj: JSON) -> None:
        """The server's answer to our write: into the cache, waking nobody."""
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind not in self.kinds or not meta.get("name") or not meta.get("namespace"):
            return
        if not selects(self._selectors[kind], _labels(obj)):
            return  # the watch would never show it, nor its deletion
        with self._lock:
            store = self._stores.setdefault((kind, meta["namespace"]), Store())
            if _newer(obj, store.objects.get(meta["name"])):
                store.put(copy.deepcopy(obj))  # the caller keeps the answer it was given

    # --- Cluster: reads from memory ------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        if kind not in self.kinds:
            return self.inner.get(kind, namespace, name)
        self.wait_synced(namespace)
        with self._lock:
            found = self._stores[(kind, namespace)].objects.get(name)
            return copy.deepcopy(found) if found is not None else None

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]:
        if kind not in self.kinds:
            return self.inner.list(kind, namespace, labels)
        self.wait_synced(namespace)
        with self._lock:
            return copy.deepcopy(self._stores[(kind, namespace)].select(labels))

    # --- Cluster: writes to the API ------------------------------------------------------

    def create(self, obj: JSON) -> JSON:
        created = self.inner.create(obj)
        self._fold(created)
        return created

    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON:
        kind, meta = obj["kind"], obj["metadata"]
        if kind in self.kinds:
            with self._lock:
                store = self._stores.get((kind, meta["namespace"]))
                known = store is not None and meta["name"] in store.objects
            if not known:
                self._refuse_foreign(obj)
        applied = self.inner.apply(obj, field_manager)
        self._fold(applied)
        return applied

    def _refuse_foreign(self, obj: JSON) -> None:
        """One live read before creating: is the name someone else's object, unseen by us?"""
        meta = obj["metadata"]
        live = self.inner.get(obj["kind"], meta["namespace"], meta["name"])
        if live is None:
            return
        owners = [r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")]
        if not any(owned_by(live, uid) for uid in owners if uid):
            raise NotOwnedError(
                f"{obj['kind']} {meta['name']} already exists and is not owned by this "
                "ShoppingGuide; rename or delete it"
            )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.inner.delete(kind, namespace, name)
        with self._lock:
            store = self._stores.get((kind, namespace))
            if store is not None:
                store.pop(name)

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = KIND,
    ) -> JSON:
        patched = self.inner.patch_status(namespace, name, patch, resource_version, kind)
        self._fold(patched)
        return patched


assert set(WATCHED) <= set(API_VERSIONS)
