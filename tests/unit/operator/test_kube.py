"""The apply layer against the in-memory cluster: what ensure() writes, and what the fake
must do like the API server for reconcile's tests to mean anything."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shopping_guide_operator.constants import FIELD_MANAGER
from shopping_guide_operator.kube import (
    APPLIED_HASH,
    HANDOFF_MANAGER,
    ConflictError,
    NotOwnedError,
    create_owned,
    ensure,
)

from .fake_cluster import FakeCluster

NS = "shop"
OWNER = "uid-guide"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"


def owned(kind: str, name: str, spec: dict[str, Any], uid: str = OWNER) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1" if kind == "Deployment" else "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "ownerReferences": [
                {"kind": "ShoppingGuide", "name": "g", "uid": uid, "controller": True}
            ],
        },
        "spec": spec,
    }


def deployment(**pod: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "recommender", "image": "r:1"}], **pod}
    return owned("Deployment", "web", {"replicas": 3, "template": {"spec": spec}})


def pod_spec(cluster: FakeCluster) -> dict[str, Any]:
    live = cluster.get("Deployment", NS, "web")
    assert live is not None
    spec: dict[str, Any] = live["spec"]["template"]["spec"]
    return spec


# C: the fake removes what an apply no longer sets, like server-side apply.


def test_fake_apply_removes_fields_the_manager_no_longer_sets() -> None:
    cluster = FakeCluster()
    cluster.apply(deployment(nodeSelector={"pool": "a"}, tolerations=[{"key": "k"}]))
    cluster.apply(deployment())
    spec = pod_spec(cluster)
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec
    assert spec["containers"] == [{"name": "recommender", "image": "r:1"}]


def test_fake_apply_removes_nested_keys_and_replaces_lists_whole() -> None:
    cluster = FakeCluster()
    cluster.apply(deployment(nodeSelector={"pool": "a", "zone": "z"}))
    cluster.apply(deployment(nodeSelector={"pool": "a"}, containers=[{"name": "other"}]))
    spec = pod_spec(cluster)
    assert spec["nodeSelector"] == {"pool": "a"}
    # Lists are replaced as a whole (real SSA merges lists keyed by name: an approximation).
    assert spec["containers"] == [{"name": "other"}]


def test_fake_apply_keeps_fields_other_writers_set() -> None:
    cluster = FakeCluster()
    cluster.apply(deployment())
    live = cluster.objects[("Deployment", NS, "web")]
    live["spec"]["template"]["spec"]["schedulerName"] = "other"  # a webhook, a default
    live["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    cluster.apply(deployment(nodeSelector={"pool": "a"}))
    cluster.apply(deployment())
    after = cluster.get("Deployment", NS, "web")
    assert after is not None
    assert after["spec"]["template"]["spec"]["schedulerName"] == "other"
    assert after["metadata"]["annotations"] == {"deployment.kubernetes.io/revision": "1"}


def test_fake_apply_keeps_a_field_another_manager_still_applies() -> None:
    cluster = FakeCluster()
    cluster.apply(deployment())
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"replicas": 3},
        },
        field_manager=HANDOFF_MANAGER,
    )
    without = deployment()
    del without["spec"]["replicas"]
    cluster.apply(without)
    live = cluster.get("Deployment", NS, "web")
    assert live is not None
    assert live["spec"]["replicas"] == 3
    owners = {e["manager"]: e["fieldsV1"] for e in live["metadata"]["managedFields"]}
    assert "f:replicas" in owners[HANDOFF_MANAGER]["f:spec"]
    assert "f:replicas" not in owners[FIELD_MANAGER]["f:spec"]


# A: ensure() applies when the desired object changed, removed fields included.


def test_ensure_removes_a_field_dropped_from_the_desired_object() -> None:
    cluster = FakeCluster()
    ensure(cluster, deployment(nodeSelector={"pool": "a"}, tolerations=[{"key": "k"}]), OWNER)
    _, wrote = ensure(cluster, deployment(), OWNER)
    assert wrote
    spec = pod_spec(cluster)
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec


def test_ensure_of_an_unchanged_object_writes_nothing() -> None:
    cluster = FakeCluster()
    first, wrote = ensure(cluster, deployment(), OWNER)
    assert wrote
    assert len(first["metadata"]["annotations"][APPLIED_HASH]) >= 16
    writes = cluster.writes
    _, wrote = ensure(cluster, deployment(), OWNER)
    assert not wrote
    assert cluster.writes == writes


def test_ensure_corrects_a_field_someone_else_changed() -> None:
    cluster = FakeCluster()
    ensure(cluster, deployment(), OWNER)
    cluster.objects[("Deployment", NS, "web")]["spec"]["replicas"] = 7
    _, wrote = ensure(cluster, deployment(), OWNER)
    assert wrote
    live = cluster.get("Deployment", NS, "web")
    assert live is not None
    assert live["spec"]["replicas"] == 3


def test_ensure_refuses_an_object_of_someone_else() -> None:
    cluster = FakeCluster()
    cluster.apply(owned("ConfigMap", "web", {}, uid="someone"))
    with pytest.raises(NotOwnedError):
        ensure(cluster, owned("ConfigMap", "web", {}), OWNER)


# B: handing replicas over to the HPA keeps the value.


def test_dropping_replicas_hands_them_off_without_changing_the_value() -> None:
    cluster = FakeCluster()
    ensure(cluster, deployment(), OWNER)
    autoscaled = deployment()
    del autoscaled["spec"]["replicas"]
    autoscaled["spec"]["template"]["spec"]["containers"][0]["image"] = "r:2"
    ensure(cluster, autoscaled, OWNER)
    live = cluster.get("Deployment", NS, "web")
    assert live is not None
    assert live["spec"]["replicas"] == 3
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "r:2"
    managers = {e["manager"] for e in live["metadata"]["managedFields"]}
    assert HANDOFF_MANAGER in managers
    # Once handed off, the next change is one apply, no second handoff.
    writes = cluster.writes
    autoscaled["spec"]["template"]["spec"]["containers"][0]["image"] = "r:3"
    ensure(cluster, autoscaled, OWNER)
    assert cluster.writes == writes + 1


def test_no_handoff_when_we_never_owned_replicas() -> None:
    cluster = FakeCluster()
    autoscaled = deployment()
    del autoscaled["spec"]["replicas"]
    ensure(cluster, autoscaled, OWNER)
    autoscaled["spec"]["template"]["spec"]["containers"][0]["image"] = "r:2"
    writes = cluster.writes
    ensure(cluster, autoscaled, OWNER)
    assert cluster.writes == writes + 1
    live = cluster.get("Deployment", NS, "web")
    assert live is not None
    assert HANDOFF_MANAGER not in {e["manager"] for e in live["metadata"]["managedFields"]}


# E: status writes carry the resourceVersion they were computed from.


def guide(cluster: FakeCluster) -> dict[str, Any]:
    return cluster.put(
        {
            "apiVersion": "shoppingguide.io/v1alpha1",
            "kind": "ShoppingGuide",
            "metadata": {"name": "g", "namespace": NS},
            "spec": {},
        }
    )


def test_fake_refuses_a_status_patch_with_a_stale_resource_version() -> None:
    cluster = FakeCluster()
    guide(cluster)
    read = cluster.get("ShoppingGuide", NS, "g")
    assert read is not None
    version = read["metadata"]["resourceVersion"]
    cluster.patch_status(NS, "g", {"status": {"phase": "Ready"}}, version)
    with pytest.raises(ConflictError):
        cluster.patch_status(NS, "g", {"status": {"phase": "Training"}}, version)
    now = cluster.get("ShoppingGuide", NS, "g")
    assert now is not None
    assert now["status"]["phase"] == "Ready"
    assert now["metadata"]["resourceVersion"] != version
    cluster.patch_status(NS, "g", {"status": {"phase": "Training"}}, None)  # unconditional


def test_fake_bumps_resource_versions_on_writes_only() -> None:
    cluster = FakeCluster()
    ensure(cluster, deployment(), OWNER)
    first = cluster.get("Deployment", NS, "web")
    assert first is not None
    cluster.apply(copy.deepcopy(cluster.last_applied(("Deployment", NS, "web"))))
    same = cluster.get("Deployment", NS, "web")
    assert same is not None
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    ensure(cluster, deployment(nodeSelector={"a": "b"}), OWNER)
    changed = cluster.get("Deployment", NS, "web")
    assert changed is not None
    assert int(changed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


# F: a create that finds the name taken checks whose object it is.


def job(name: str, uid: str = OWNER) -> dict[str, Any]:
    manifest = owned("Job", name, {"template": {}}, uid)
    manifest["apiVersion"] = "batch/v1"
    return manifest


def test_create_owned_creates() -> None:
    cluster = FakeCluster()
    created = create_owned(cluster, job("train-1"), OWNER)
    assert created["metadata"]["uid"]
    assert cluster.get("Job", NS, "train-1") is not None


def test_create_owned_returns_our_existing_object() -> None:
    cluster = FakeCluster()
    first = cluster.create(job("train-1"))
    again = create_owned(cluster, job("train-1"), OWNER)
    assert again["metadata"]["uid"] == first["metadata"]["uid"]


def test_create_owned_refuses_an_object_of_someone_else() -> None:
    cluster = FakeCluster()
    cluster.create(job("train-1", uid="other-guide"))
    with pytest.raises(NotOwnedError):
        create_owned(cluster, job("train-1"), OWNER)
    bare = job("bare")
    bare["metadata"].pop("ownerReferences")
    cluster.create(copy.deepcopy(bare))
    with pytest.raises(NotOwnedError):
        create_owned(cluster, job("bare"), OWNER)


def test_create_conflict_is_a_conflict_error() -> None:
    cluster = FakeCluster()
    cluster.create(job("train-1"))
    with pytest.raises(ConflictError) as caught:
        cluster.create(job("train-1"))
    assert caught.value.status == 409


def test_pods_of_one_job_by_controller_uid() -> None:
    cluster = FakeCluster()
    old = cluster.create(job("train-1"))
    cluster.finish_job(NS, "train-1", "old result")
    cluster.delete("Job", NS, "train-1")  # the pod outlives it for a moment
    new = cluster.create(job("train-1"))
    cluster.finish_job(NS, "train-1", "new result", pod="train-1-new")
    by_name = cluster.list("Pod", NS, {"batch.kubernetes.io/job-name": "train-1"})
    assert len(by_name) == 2
    (pod,) = cluster.list("Pod", NS, {JOB_UID_LABEL: new["metadata"]["uid"]})
    assert pod["metadata"]["name"] == "train-1-new"
    (pod,) = cluster.list("Pod", NS, {JOB_UID_LABEL: old["metadata"]["uid"]})
    assert pod["metadata"]["name"] == "train-1-pod"
