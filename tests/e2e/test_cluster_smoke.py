"""Smoke tests of the local control plane: real API server, controllers, scheduler, kwok."""

from __future__ import annotations

import datetime
import functools
import json
import uuid
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.conftest import required
from tests.e2e.conftest import ON_FAKE_NODES, Kube, manifest

pytestmark = pytest.mark.e2e

# kwok never pulls images; the name only has to be valid.
IMAGE = "registry.invalid/shopping-guide/smoke:1"

T = TypeVar("T")


def some(value: T | None) -> T:
    assert value is not None
    return value


def _deployment(name: str, replicas: int) -> Any:
    labels = {"app": name}
    return manifest(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "main", "image": IMAGE}], **ON_FAKE_NODES},
                },
            },
        }
    )


def _deployment_available(kube: Kube, namespace: str, name: str, replicas: int) -> bool:
    status = some(
        client.AppsV1Api(kube.api).read_namespaced_deployment_status(name, namespace).status
    )
    conditions = {c.type: c.status for c in status.conditions or []}
    return status.available_replicas == replicas and conditions.get("Available") == "True"


def _gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_server_version_is_stamped(kube: Kube) -> None:
    if kube.state is None:
        required("only meaningful for the cluster built by hack/build-cluster-binaries.sh")
    versions = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == "v1.34.4"
    assert versions["serverVersion"]["gitVersion"] == "v1.34.4"


def test_fake_nodes_renew_their_leases(kube: Kube) -> None:
    """A node without a fresh Lease goes NotReady within the node controller's grace period and
    its pods are marked unready for good (kwok readies a pod only once): kwok must renew one."""
    leases: Any = client.CoordinationV1Api(kube.api)
    nodes = client.CoreV1Api(kube.api).list_node(label_selector="type=kwok").items
    assert nodes, "no kwok nodes"

    def renewed(name: str, after: datetime.datetime) -> bool:
        spec = leases.read_namespaced_lease(name, "kube-node-lease").spec
        return spec.renew_time is not None and spec.renew_time > after

    for node in nodes:
        name = some(some(node.metadata).name)
        first = leases.read_namespaced_lease(name, "kube-node-lease").spec.renew_time
        assert first is not None, f"{name}: its Lease has never been renewed"
        # A kubelet renews at a quarter of the duration (10 s of 40); a minute is generous.
        kube.wait_until(
            functools.partial(renewed, name, first), 60, f"{name} renews its Lease", ignore=()
        )
        conditions = {c.type: c.status for c in some(node.status).conditions or []}
        assert conditions.get("Ready") == "True", node.status


def test_deployment_becomes_available(kube: Kube, namespace: str) -> None:
    client.AppsV1Api(kube.api).create_namespaced_deployment(namespace, _deployment("web", 2))
    kube.wait_until(
        lambda: _deployment_available(kube, namespace, "web", 2), 180, "Deployment web available"
    )
    pods = client.CoreV1Api(kube.api).list_namespaced_pod(namespace, label_selector="app=web")
    assert len(pods.items) == 2
    for pod in pods.items:
        status = some(pod.status)
        assert status.phase == "Running"
        ready = {c.type: c.status for c in status.conditions or []}
        assert ready.get("Ready") == "True", status.conditions
        assert some(some(pod.spec).node_name).startswith("kwok-node-")


def test_job_pod_runs_then_succeeds(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api)
    # Watch from this resourceVersion so that no pod update is missed: kwok moves a Job's
    # pod from Running to Succeeded without delay, too fast for polling to see Running.
    since = some(core.list_namespaced_pod(namespace).metadata).resource_version
    job = manifest(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": IMAGE, "command": ["true"]}],
                        **ON_FAKE_NODES,
                    }
                },
            },
        }
    )
    client.BatchV1Api(kube.api).create_namespaced_job(namespace, job)

    phases: list[str] = []
    # Watch is untyped in some releases of the kubernetes package.
    watch_class: Any = watch.Watch
    stream = watch_class()
    for event in stream.stream(
        core.list_namespaced_pod,
        namespace,
        label_selector="job-name=once",
        resource_version=since,
        timeout_seconds=180,
    ):
        phase = event["object"].status.phase
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
        if phase == "Succeeded":
            stream.stop()
    assert phases[-2:] == ["Running", "Succeeded"], phases

    def complete() -> bool:
        job = client.BatchV1Api(kube.api).read_namespaced_job_status("once", namespace)
        status = some(job.status)
        conditions = {c.type: c.status for c in status.conditions or []}
        return status.succeeded == 1 and conditions.get("Complete") == "True"

    kube.wait_until(complete, 120, "Job once complete")


def test_crd_cel_validation(kube: Kube, namespace: str) -> None:
    group = f"e2e{uuid.uuid4().hex[:8]}.shopping-guide.test"
    crd = manifest(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "required": ["replicas"],
                                        "properties": {
                                            "replicas": {"type": "integer", "minimum": 0},
                                            "minReplicas": {"type": "integer", "minimum": 0},
                                        },
                                        "x-kubernetes-validations": [
                                            {
                                                "rule": "!has(self.minReplicas)"
                                                " || self.minReplicas <= self.replicas",
                                                "message": "minReplicas must not exceed replicas",
                                            }
                                        ],
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    extensions = client.ApiextensionsV1Api(kube.api)
    extensions.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            crd = extensions.read_custom_resource_definition_status(f"widgets.{group}")
            status = some(crd.status)
            return any(
                c.type == "Established" and c.status == "True" for c in status.conditions or []
            )

        kube.wait_until(established, 60, "CRD established")

        def widget(name: str, spec: dict[str, int]) -> str:
            return yaml.safe_dump(
                {
                    "apiVersion": f"{group}/v1",
                    "kind": "Widget",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec,
                }
            )

        def rejected_by_rule() -> str:
            # Right after Established, discovery may not list the kind yet: retry until the
            # failure is the validation one.
            result = kube.kubectl(
                "apply",
                "-f",
                "-",
                stdin=widget("bad", {"replicas": 1, "minReplicas": 3}),
                check=False,
            )
            assert result.returncode != 0, "a Widget breaking the CEL rule was accepted"
            return result.stderr if "minReplicas must not exceed replicas" in result.stderr else ""

        stderr = kube.wait_until(rejected_by_rule, 60, "CEL rule rejection")
        assert "is invalid" in stderr

        negative = kube.kubectl(
            "apply", "-f", "-", stdin=widget("neg", {"replicas": -1}), check=False
        )
        assert negative.returncode != 0
        assert "should be greater than or equal to 0" in negative.stderr

        kube.kubectl("apply", "-f", "-", stdin=widget("good", {"replicas": 3, "minReplicas": 1}))
        good: Any = client.CustomObjectsApi(kube.api).get_namespaced_custom_object(
            group, "v1", namespace, "widgets", "good"
        )
        assert good["spec"] == {"replicas": 3, "minReplicas": 1}
        assert _gone(
            client.CustomObjectsApi(kube.api).get_namespaced_custom_object,
            group,
            "v1",
            namespace,
            "widgets",
            "bad",
        )
    finally:
        extensions.delete_custom_resource_definition(f"widgets.{group}")


def test_garbage_collection_and_namespace_deletion(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api)
    owner = core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "owner"}}))
    owner_ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": some(owner.metadata).uid,
    }
    core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "child", "ownerReferences": [owner_ref]}})
    )
    core.delete_namespaced_config_map("owner", namespace)
    kube.wait_until(
        lambda: _gone(core.read_namespaced_config_map, "child", namespace),
        120,
        "garbage collection of the owned ConfigMap",
    )

    # A namespace with running pods (on kwok nodes) and owned objects must finish
    # terminating: pods are deleted, then the namespace itself disappears.
    client.AppsV1Api(kube.api).create_namespaced_deployment(namespace, _deployment("web", 1))
    kube.wait_until(
        lambda: _deployment_available(kube, namespace, "web", 1), 180, "Deployment web available"
    )
    core.delete_namespace(namespace)
    kube.wait_until(
        lambda: _gone(core.read_namespace, namespace), 300, f"namespace {namespace} deleted"
    )


def test_apiserver_restart_keeps_data(kube: Kube, namespace: str) -> None:
    if kube.state is None:
        required("the cluster is not managed by hack/cluster.sh")
    core = client.CoreV1Api(kube.api)
    core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "survivor"}, "data": {"answer": "42"}})
    )
    pid = kube.apiserver_pid()
    kube.restart_apiserver()
    assert kube.apiserver_pid() != pid

    def read_back() -> dict[str, str]:
        return some(core.read_namespaced_config_map("survivor", namespace).data)

    data = kube.wait_until(read_back, 120, "ConfigMap after restart", ignore=(Exception,))
    assert data == {"answer": "42"}
