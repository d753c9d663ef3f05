"""The informer cache: reads from memory, own writes seen at once, wakes, watch resumption."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shopping_guide_operator import handlers
from shopping_guide_operator.constants import FIELD_MANAGER
from shopping_guide_operator.informers import (
    WATCHED,
    CachedCluster,
    GoneError,
    Informer,
    parse_selector,
    selects,
)
from shopping_guide_operator.kube import ApiError, NotOwnedError
from shopping_guide_operator.reconcile import reconcile
from shopping_guide_operator.worker import WAKEUPS

from .conftest import BASE
from .fake_cluster import JSON, FakeCluster

NS, NAME = "shop", "storefront"
T0 = 1_800_000_000.0
TRAINING_POD_LABELS = {
    "app.kubernetes.io/managed-by": "shopping-guide-operator",
    "app.kubernetes.io/component": "training",
    "shoppingguide.io/guide": NAME,
}


class VersionedFake(FakeCluster):
    """The fake API server with resourceVersions, counting reads too."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self._versions = itertools.count(1)

    def put(self, obj: JSON) -> JSON:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        return super().put(obj)

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        self.reads += 1
        return super().get(kind, namespace, name)

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[JSON]:
        self.reads += 1
        return super().list(kind, namespace, labels)

    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON:
        applied = super().apply(obj, field_manager)
        meta = obj["metadata"]
        live = self.objects[(obj["kind"], meta["namespace"], meta["name"])]
        live["metadata"]["resourceVersion"] = str(next(self._versions))
        applied["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        return applied

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = "ShoppingGuide",
    ) -> JSON:
        super().patch_status(namespace, name, patch, resource_version, kind)
        guide = self.objects[(kind, namespace, name)]
        guide["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(guide)

    def touch(self, kind: str, name: str) -> JSON:
        """A change by someone else (a controller): a new resourceVersion."""
        obj = self.objects[(kind, NS, name)]
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        return obj


class Offline(CachedCluster):
    """No informer threads: the test plays the watch (`sync`), every namespace is synced."""

    def _spawn(self, informer: Informer) -> None:
        informer.synced.set()


def matches(kind: str, obj: JSON) -> bool:
    return selects(parse_selector(WATCHED[kind]), obj["metadata"].get("labels") or {})


def sync(cache: CachedCluster, fake: FakeCluster) -> None:
    """What the watches would deliver: the server-side selected objects, and deletions."""
    for kind in WATCHED:
        items = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in fake.objects.items()
            if k == kind and ns == NS and matches(kind, obj)
        ]
        cache.replace(kind, NS, items, None)


@pytest.fixture
def fake() -> VersionedFake:
    cluster = VersionedFake()
    cluster.put(copy.deepcopy(BASE))
    return cluster


@pytest.fixture
def woken() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def cache(fake: VersionedFake, woken: list[tuple[str, str]]) -> Iterator[Offline]:
    cached = Offline(fake, api=None, notify=woken.append)  # type: ignore[arg-type]
    cached.wait_synced(NS)
    sync(cached, fake)
    yield cached
    cached.stop()


def finish_job(fake: VersionedFake, job: str) -> None:
    message = json.dumps(
        {
            "schema": 1,
            "version": "v1",
            "artifact": "/models/v1",
            "metrics": {
                "ndcg@10": 0.3,
                "precision@10": 0.1,
                "recall@10": 0.2,
                "map@10": 0.1,
                "coverage": 0.5,
            },
            "baseline": {"popularity": {"ndcg@10": 0.02}},
            "data": {"users": 10},
        }
    )
    fake.finish_job(NS, job, message)
    pod = fake.objects[("Pod", NS, f"{job}-pod")]
    pod["metadata"]["labels"].update(TRAINING_POD_LABELS)
    fake.touch("Job", job)


def jobs(fake: FakeCluster) -> list[str]:
    return sorted(name for (kind, _, name) in fake.objects if kind == "Job")


def test_a_converged_guide_costs_no_request_at_all(fake: VersionedFake, cache: Offline) -> None:
    assert reconcile(cache, NS, NAME, T0) is not None
    sync(cache, fake)
    (job,) = jobs(fake)
    finish_job(fake, job)
    sync(cache, fake)
    reconcile(cache, NS, NAME, T0 + 20)
    sync(cache, fake)
    fake.make_deployment_ready(NS, NAME)
    fake.touch("Deployment", NAME)
    sync(cache, fake)
    reconcile(cache, NS, NAME, T0 + 30)
    sync(cache, fake)
    guide = cache.get("ShoppingGuide", NS, NAME)
    assert guide is not None and guide["status"]["phase"] == "Ready"

    reads, writes = fake.reads, fake.writes
    reconcile(cache, NS, NAME, T0 + 90)
    reconcile(cache, NS, NAME, T0 + 150)
    assert (fake.reads - reads, fake.writes - writes) == (0, 0)


def test_reads_never_reach_the_api(fake: VersionedFake, cache: Offline) -> None:
    reconcile(cache, NS, NAME, T0)
    sync(cache, fake)
    reads = fake.reads
    reconcile(cache, NS, NAME, T0 + 5)
    assert fake.reads == reads


def test_a_pass_sees_its_own_writes_before_the_watch_does(
    fake: VersionedFake, cache: Offline
) -> None:
    reconcile(cache, NS, NAME, T0)  # no sync: the watch has delivered nothing yet
    assert cache.get("Service", NS, NAME) is not None
    guide = cache.get("ShoppingGuide", NS, NAME)
    assert guide is not None and guide["status"]["phase"] == "Training"
    (job,) = jobs(fake)
    assert [j["metadata"]["name"] for j in cache.list("Job", NS, {})] == [job]
    writes = fake.writes
    reconcile(cache, NS, NAME, T0 + 1)
    assert fake.writes == writes  # nothing applied twice, no second Job


def test_a_stale_event_does_not_undo_a_write(fake: VersionedFake, cache: Offline) -> None:
    stale = copy.deepcopy(fake.objects[("ShoppingGuide", NS, NAME)])
    reconcile(cache, NS, NAME, T0)
    assert not cache.observe("ShoppingGuide", NS, stale)
    guide = cache.get("ShoppingGuide", NS, NAME)
    assert guide is not None and guide.get("status")


def test_changes_wake_the_owning_guide_and_echoes_do_not(
    fake: VersionedFake, cache: Offline, woken: list[tuple[str, str]]
) -> None:
    reconcile(cache, NS, NAME, T0)
    woken.clear()
    sync(cache, fake)  # the echo of our own writes
    assert woken == []
    (job,) = jobs(fake)
    finish_job(fake, job)
    sync(cache, fake)
    assert set(woken) == {(NS, NAME)}
    woken.clear()
    guide = fake.touch("ShoppingGuide", NAME)
    assert cache.observe("ShoppingGuide", NS, copy.deepcopy(guide))
    assert woken == [(NS, NAME)]
    woken.clear()
    cache.forget("Job", NS, copy.deepcopy(fake.touch("Job", job)))
    assert woken == [(NS, NAME)]
    assert cache.list("Job", NS, {}) == []


def test_job_pods_are_listed_by_job_name_from_memory(cache: Offline) -> None:
    for i, job in enumerate(("a", "a", "b")):
        labels = {**TRAINING_POD_LABELS, "batch.kubernetes.io/job-name": job}
        meta = {"name": f"p{i}", "namespace": NS, "labels": labels, "resourceVersion": str(i)}
        pod: JSON = {"kind": "Pod", "metadata": meta}
        cache.observe("Pod", NS, pod)
    pods = cache.list("Pod", NS, {"batch.kubernetes.io/job-name": "a"})
    assert sorted(p["metadata"]["name"] for p in pods) == ["p0", "p1"]
    assert parse_selector(WATCHED["Pod"]) == {
        "app.kubernetes.io/managed-by": frozenset({"shopping-guide-operator"}),
        "app.kubernetes.io/component": frozenset({"training", "erasure", "trending"}),
    }


def test_a_name_taken_by_someone_else_is_not_taken_over(
    fake: VersionedFake, cache: Offline
) -> None:
    # No labels of ours: the watch never shows it, the apply checks the name first.
    fake.put({"kind": "Service", "metadata": {"name": NAME, "namespace": NS}, "spec": {}})
    sync(cache, fake)
    assert cache.get("Service", NS, NAME) is None
    reconcile(cache, NS, NAME, T0)
    assert fake.objects[("Service", NS, NAME)]["spec"] == {}
    guide = fake.objects[("ShoppingGuide", NS, NAME)]
    assert "not owned by this ShoppingGuide" in guide["status"]["message"]
    desired = {
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS, "ownerReferences": []},
    }
    with pytest.raises(NotOwnedError):
        cache.apply(desired)


def test_a_relist_drops_what_is_gone_but_keeps_newer_writes(cache: Offline) -> None:
    def cm(name: str, rv: int) -> JSON:
        labels = {"app.kubernetes.io/managed-by": "shopping-guide-operator"}
        meta = {"name": name, "namespace": NS, "labels": labels, "resourceVersion": str(rv)}
        return {"kind": "ConfigMap", "metadata": meta}

    cache.observe("ConfigMap", NS, cm("old", 10))
    cache.observe("ConfigMap", NS, cm("fresh", 30))
    cache.replace("ConfigMap", NS, [], 20)
    assert [c["metadata"]["name"] for c in cache.list("ConfigMap", NS, {})] == ["fresh"]


# --- the informer's list and watch, over a scripted API ------------------------------------


class Stream:
    def __init__(self, events: list[JSON]) -> None:
        self.data = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        # Split mid-line: lines must be reassembled across chunks.
        for start in range(0, len(self.data), 7):
            yield self.data[start : start + 7]

    def release_conn(self) -> None:
        pass


class Scripted(Offline):
    """request_json and stream answer from a script; the informer runs in the test thread."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__(FakeCluster(), api=None, notify=lambda key: None)  # type: ignore[arg-type]
        self.script = script
        self.calls: list[tuple[str, dict[str, str]]] = []

    def _next(self, path: str, query: dict[str, str]) -> Any:
        self.calls.append((path, query))
        if not self.script:
            self.stopping.set()
            raise ApiError(500, "script over")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def request_json(self, method: str, path: str, query: dict[str, str]) -> JSON:
        found: JSON = self._next(path, query)
        return found

    def stream(self, method: str, path: str, query: dict[str, str], timeout: float) -> Any:
        return self._next(path, query)


def cm(name: str, rv: str) -> JSON:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": NS, "resourceVersion": rv}}


def test_the_informer_resumes_from_its_resource_version_and_relists_after_410() -> None:
    script: list[Any] = [
        {"metadata": {"resourceVersion": "5"}, "items": [cm("a", "3")]},
        Stream(
            [
                {"type": "ADDED", "object": cm("b", "6")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
            ]
        ),
        Stream([{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]),
        {"metadata": {"resourceVersion": "20"}, "items": [cm("b", "6"), cm("c", "19")]},
        GoneError(),
        {"metadata": {"resourceVersion": "30"}, "items": [cm("c", "19")]},
    ]
    cache = Scripted(script)
    synced = threading.Event()
    informer = Informer(cache, "ConfigMap", NS, WATCHED["ConfigMap"], synced)
    informer._run()
    queries = [q for _, q in cache.calls]
    assert queries[0]["labelSelector"] == "app.kubernetes.io/managed-by=shopping-guide-operator"
    assert "watch" not in queries[0]
    assert queries[1]["resourceVersion"] == "5" and queries[1]["watch"] == "true"
    assert queries[1]["allowWatchBookmarks"] == "true"
    assert queries[2]["resourceVersion"] == "9"  # the bookmark's
    assert "watch" not in queries[3]  # 410 in the stream: a fresh list
    assert "watch" not in queries[5]  # 410 on starting the watch: the same
    assert synced.is_set()
    assert [c["metadata"]["name"] for c in cache.list("ConfigMap", NS, {})] == ["c"]


def test_the_wake_from_an_informer_thread_reaches_the_loop() -> None:
    """handlers wakes through call_soon_threadsafe: a flag set from another thread."""

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        flag = WAKEUPS.flag(("ns", "g"))
        try:
            thread = threading.Thread(
                target=lambda: loop.call_soon_threadsafe(WAKEUPS.wake, ("ns", "g"))
            )
            thread.start()
            await asyncio.wait_for(flag.wait(), 5)
            thread.join()
            return flag.is_set()
        finally:
            WAKEUPS.forget(("ns", "g"))

    assert asyncio.run(scenario())


def test_startup_sizes_the_executor_of_the_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    monkeypatch.setattr(handlers, "_api_client", lambda connections=32: None)

    async def scenario() -> tuple[int, Any]:
        memo = kopf.Memo()
        # kopf's decorators type them as its callbacks: call them as plain functions.
        configure: Any = handlers.configure
        stop: Any = handlers.stop_informers
        await configure(settings=kopf.OperatorSettings(), memo=memo)
        size = await asyncio.get_running_loop().run_in_executor(
            None, lambda: threading.current_thread().name
        )
        executor = asyncio.get_running_loop()._default_executor  # type: ignore[attr-defined]
        await stop(memo=memo)
        return executor._max_workers, size

    workers, thread = asyncio.run(scenario())
    assert workers == handlers.PASS_THREADS == 32
    assert thread.startswith("reconcile")


def test_kopf_watches_no_child_kind() -> None:
    """The children come from the informers; kopf serves only the guides."""
    import kopf

    registry = kopf.get_default_registry()
    resources = {h.selector for h in registry._watching.get_all_handlers()}
    resources |= {h.selector for h in registry._spawning.get_all_handlers()}
    served = {(s.group, s.any_name or s.plural) for s in resources if s is not None}
    assert served == {("shoppingguide.io", "shoppingguides")}


def test_the_cache_keeps_no_managed_fields(cache: Offline) -> None:
    labels = {"app.kubernetes.io/managed-by": "shopping-guide-operator"}
    fields = [{"manager": "shopping-guide-operator", "operation": "Apply"}]
    meta = {"name": "c", "namespace": NS, "labels": labels, "managedFields": fields}
    cache.observe("ConfigMap", NS, {"kind": "ConfigMap", "metadata": meta})
    found = cache.get("ConfigMap", NS, "c")
    assert found is not None and "managedFields" not in found["metadata"]


def test_a_kind_that_is_not_served_counts_as_empty_and_synced() -> None:
    """An installation without the erasure CRD: its informer's list answers 404; the namespace
    still syncs (nothing to erase), instead of every pass waiting for it and failing."""

    class NotServed(CachedCluster):
        def request_json(self, method: str, path: str, query: dict[str, str]) -> JSON:
            raise ApiError(404, "the server could not find the requested resource")

    kinds: dict[str, str | None] = {"ShoppingGuideErasure": None}
    cache = NotServed(FakeCluster(), None, lambda key: None, kinds, 5)  # type: ignore[arg-type]
    try:
        assert cache.list("ShoppingGuideErasure", NS, {}) == []
    finally:
        cache.stop()


def test_a_change_of_an_erasure_request_wakes_its_guide() -> None:
    woken: list[tuple[str, str]] = []
    cache = Offline(FakeCluster(), None, woken.append)  # type: ignore[arg-type]
    request = {
        "kind": "ShoppingGuideErasure",
        "metadata": {"name": "gdpr-1", "namespace": NS, "resourceVersion": "7"},
        "spec": {"guide": "storefront", "userIdSha256": ["0" * 64]},
    }
    cache.observe("ShoppingGuideErasure", NS, request)
    assert woken == [(NS, "storefront")]
