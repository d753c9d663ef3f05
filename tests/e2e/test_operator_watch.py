"""The operator under exactly its own RBAC role, driven by its informers alone.

The operator runs as a host process with the token of a ServiceAccount bound to the rules of
operator/rbac/role.yaml the way the chart binds them for watched namespaces (the namespaced
rules through a RoleBinding in the test's namespace, the cluster-scoped ones, CRDs and
namespaces and cluster peerings, through a ClusterRoleBinding), and with a resync far longer
than the test: every step (the Job finishing, the Deployment becoming ready, a deleted child)
reaches the worker through the informers' watches, or not at all. Serving pods run on kwok's
nodes; kwok would complete a training pod at once without a termination message, so those go
to a node nothing drives and the test writes the trainer's result, as in test_operator.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.conftest import REPO
from tests.e2e.conftest import Kube
from tests.e2e.test_operator import (
    TRAIN_LABEL,
    finished_pod_status,
    guide_manifest,
    install_crd,
    result_document,
)

pytestmark = pytest.mark.e2e

ROLE = REPO / "operator" / "rbac" / "role.yaml"
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}
TIMEOUT = 90.0


def split_rules() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(cluster-scoped rules, namespaced rules), as charts/shopping-guide/templates/rbac.yaml
    splits them."""
    rules = yaml.safe_load(ROLE.read_text())["rules"]
    cluster = [r for r in rules if CLUSTER_SCOPED & set(r["resources"])]
    return cluster, [r for r in rules if r not in cluster]


class Identity:
    """A ServiceAccount bound to the operator's role, and a kubeconfig with its token."""

    def __init__(self, kube: Kube, namespace: str, tmp_path: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = f"sg-e2e-watch-{uuid.uuid4().hex[:6]}"
        self.kubeconfig = tmp_path / "operator.kubeconfig"

    def create(self) -> None:
        cluster_rules, namespaced_rules = split_rules()
        subject = {"kind": "ServiceAccount", "name": "operator", "namespace": self.namespace}
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "operator", "namespace": self.namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": self.name},
                "rules": namespaced_rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "operator", "namespace": self.namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": self.name,
                },
                "subjects": [subject],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"{self.name}-cluster"},
                "rules": cluster_rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{self.name}-cluster"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{self.name}-cluster",
                },
                "subjects": [subject],
            },
        ]
        self.kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        token = self.kube.kubectl(
            "create", "token", "operator", "-n", self.namespace, "--duration=1h"
        ).stdout.strip()
        admin = json.loads(
            self.kube.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
        )
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "operator",
                    "context": {
                        "cluster": cluster["name"],
                        "user": "operator",
                        "namespace": self.namespace,
                    },
                }
            ],
            "current-context": "operator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def can(self, *args: str) -> bool:
        out = self.kube.kubectl(
            "--kubeconfig", str(self.kubeconfig), "auth", "can-i", *args, check=False
        )
        return out.stdout.strip() == "yes"

    def delete(self) -> None:
        for kind, name in (
            ("clusterrolebinding", f"{self.name}-cluster"),
            ("clusterrole", f"{self.name}-cluster"),
            ("clusterrole", self.name),
        ):
            self.kube.kubectl("delete", kind, name, "--ignore-not-found", check=False)


@pytest.fixture
def training_node(kube: Kube) -> Iterator[str]:
    """A node of this test's own for its training pods, which nothing drives."""
    install_crd(kube)
    core: Any = client.CoreV1Api(kube.api)
    name = f"sg-e2e-watch-train-{uuid.uuid4().hex[:6]}"
    core.create_node(
        {
            "metadata": {"name": name, "labels": {TRAIN_LABEL: name}},
            "spec": {"taints": [{"key": TRAIN_LABEL, "value": name, "effect": "NoSchedule"}]},
        }
    )
    capacity = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})
    try:
        yield name
    finally:
        try:
            core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def storage(kube: Kube, namespace: str) -> None:
    core: Any = client.CoreV1Api(kube.api)
    for claim in ("events", "models"):
        pv = f"{namespace}-{claim}"
        core.create_persistent_volume(
            {
                "metadata": {"name": pv, "labels": {"e2e-namespace": namespace}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/shopping-guide-e2e/{pv}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )


def get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    out = kube.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def test_the_operator_serves_a_guide_with_only_its_role_and_its_watches(
    kube: Kube, namespace: str, training_node: str, tmp_path: Path
) -> None:
    storage(kube, namespace)
    identity = Identity(kube, namespace, tmp_path)
    log = tmp_path / "operator.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        identity.create()
        # It is the ServiceAccount, not the admin: nothing beyond its role.
        assert identity.can("list", "pods", "-n", namespace)
        assert not identity.can("list", "pods", "-n", "default")
        assert not identity.can("delete", "deployments", "-n", namespace)
        assert not identity.can("get", "secrets", "-n", namespace)
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shopping_guide_operator",
                    "--standalone",
                    "--namespace",
                    namespace,
                    # Longer than the test: only the watches can move it along.
                    "--resync",
                    "600",
                ],
                env={**kube.env, "KUBECONFIG": str(identity.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        body = guide_manifest(namespace)
        body["spec"]["training"]["nodeSelector"] = {TRAIN_LABEL: training_node}
        body["spec"]["training"]["tolerations"] = [
            {"key": TRAIN_LABEL, "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
        ]
        kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))

        core: Any = client.CoreV1Api(kube.api)

        def scheduled_pod() -> str | None:
            pods = core.list_namespaced_pod(
                namespace, label_selector="batch.kubernetes.io/job-name"
            ).items
            return next((p.metadata.name for p in pods if p.spec.node_name), None)

        pod = kube.wait_until(scheduled_pod, TIMEOUT, "the training pod scheduled")
        status = finished_pod_status(result_document("v1", 0.30))
        core.patch_namespaced_pod_status(pod, namespace, {"status": status})

        custom: Any = client.CustomObjectsApi(kube.api)

        def ready() -> dict[str, Any] | None:
            # Short requests: kwok's nodes miss heartbeats now and then, and their pods are
            # unready a while; a long-hanging read could miss the Ready in between.
            guide = custom.get_namespaced_custom_object(
                "shoppingguide.io",
                "v1alpha1",
                namespace,
                "shoppingguides",
                "storefront",
                _request_timeout=5,
            )
            found: dict[str, Any] = guide.get("status") or {}
            return found if found.get("phase") == "Ready" else None

        transient = (ApiException, OSError, HTTPError)
        # Longer than the other steps: kwok's nodes miss heartbeats on a busy machine and their
        # pods are unready a while; still far within the resync, so only a watch gets there.
        status = kube.wait_until(ready, 2 * TIMEOUT, "the guide Ready", 0.5, transient)
        assert status["stable"]["version"] == "v1"

        # A deleted child comes back at once: its deletion wakes the guide's worker.
        kube.kubectl("delete", "service", "storefront", "-n", namespace)
        started = time.monotonic()
        kube.wait_until(
            lambda: get(kube, namespace, "service", "storefront"), 30, "the Service restored"
        )
        assert time.monotonic() - started < 30

        assert process.poll() is None, "the operator exited"
        text = log.read_text()
        assert "403" not in text and "forbidden" not in text.lower(), text[-4000:]
        assert "Not enough permissions" not in text, text[-4000:]
        assert "Traceback" not in text, text[-4000:]
    finally:
        guide = get(kube, namespace, "shoppingguide", "storefront")
        print(json.dumps((guide or {}).get("status"), indent=1)[:3000])
        kube.kubectl(
            "delete",
            "shoppingguides",
            "--all",
            "-n",
            namespace,
            "--wait=true",
            "--timeout=60s",
            check=False,
        )
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        identity.delete()
        kube.kubectl(
            "delete", "pv", "-l", f"e2e-namespace={namespace}", "--wait=false", check=False
        )
        if log.exists():
            print(log.read_text()[-6000:])
