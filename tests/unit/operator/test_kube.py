"""The apply layer against the in-memory cluster, and what the fake must do like the API
server for reconcile's tests to mean anything."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shopping_guide_operator.kube import ConflictError, NotOwnedError, create_owned

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
