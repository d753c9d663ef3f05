"""The process node on a real control plane: a Job trains a real model, a Deployment serves it.

One agent and one namespace for the module; the tests run in order (train, serve, hot reload,
agent restart, deletion) because each builds on what the one before left running.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import REPO, two_taste_rows
from tests.e2e.conftest import Kube
from tests.process_node import procs
from tests.process_node.node import LABEL, TAINT
from tests.process_node.status import PodRecord

pytestmark = pytest.mark.e2e

NODE = f"process-e2e-{uuid.uuid4().hex[:6]}"
IMAGE = "registry.example.com/shopping-guide/recommender:e2e"
# What a pod adds to land on the process node.
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {LABEL: "true", "kubernetes.io/hostname": NODE},
    "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
}


@dataclass
class Node:
    kube: Kube
    namespace: str
    state_dir: Path
    agent: subprocess.Popen[bytes]
    log: Path

    @property
    def core(self) -> Any:
        # Any: the typed client's Optional fields would need a check on every access.
        return client.CoreV1Api(self.kube.api)

    def start_agent(self) -> None:
        with self.log.open("ab") as out:
            self.agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.process_node",
                    "--kubeconfig",
                    str(self.kube.kubeconfig),
                    "--node",
                    NODE,
                    "--state-dir",
                    str(self.state_dir),
                ],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop_agent(self) -> None:
        self.agent.send_signal(signal.SIGTERM)
        self.agent.wait(timeout=30)

    def pod(self, selector: str) -> Any:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        assert len(live) == 1, [p.metadata.name for p in pods]
        return live[0]

    def record(self, pod: Any) -> PodRecord:
        meta = pod.metadata
        path = self.state_dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / "state.json"
        return PodRecord.from_json(json.loads(path.read_text()))


def _node_ready(kube: Kube) -> bool:
    node: Any = client.CoreV1Api(kube.api).read_node(NODE)
    conditions = {c.type: c.status for c in node.status.conditions or []}
    return conditions.get("Ready") == "True" and not any(
        t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or []
    )


@pytest.fixture(scope="module")
def node(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    state_dir = tmp_path_factory.mktemp("process-node")
    namespace = f"e2e-process-node-{uuid.uuid4().hex[:6]}"
    core: Any = client.CoreV1Api(kube.api)
    core.create_namespace({"metadata": {"name": namespace}})
    the_node = Node(kube, namespace, state_dir, None, state_dir / "agent.log")  # type: ignore[arg-type]
    the_node.start_agent()
    try:
        kube.wait_until(lambda: _node_ready(kube), 60, f"node {NODE} Ready", ignore=(Exception,))
        yield the_node
    finally:
        core.delete_namespace(namespace)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not core.list_namespaced_pod(namespace).items:
                break
            time.sleep(0.5)
        the_node.stop_agent()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.process_node",
                "--state-dir",
                str(state_dir),
                "--stop-all",
            ],
            cwd=REPO,
            check=True,
            timeout=60,
        )
        core.delete_node(NODE)
        for pv in core.list_persistent_volume(label_selector=f"e2e-node={NODE}").items:
            core.delete_persistent_volume(pv.metadata.name)


def _routing(version: str | None, generation: int) -> str:
    return json.dumps({"schema": 1, "stable": version, "salt": "e2e", "generation": generation})


@pytest.fixture(scope="module")
def trained(node: Node) -> dict[str, Any]:
    """A Job on the node trains on a small CSV into a hostPath PersistentVolume."""
    core, ns = node.core, node.namespace
    store = node.state_dir / "model-store"
    core.create_persistent_volume(
        {
            "metadata": {"name": f"{NODE}-models", "labels": {"e2e-node": NODE}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": str(store), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": ns, "name": "models"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "models"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{NODE}-models",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    events = "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in two_taste_rows())
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "events"}, "data": {"events.csv": events}}
    )
    job = {
        "metadata": {"name": "train"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "train"}},
                "spec": {
                    **PLACEMENT,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": IMAGE,
                            "args": [
                                "train",
                                "--events",
                                "/data/events.csv",
                                "--model-store",
                                "/models",
                                "--algorithm",
                                "als",
                                "--param",
                                "factors=4",
                                "--param",
                                "iterations=5",
                                "--termination-log",
                                "/dev/termination-log",
                            ],
                            "volumeMounts": [
                                {"name": "models", "mountPath": "/models"},
                                {"name": "events", "mountPath": "/data", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                        {"name": "events", "configMap": {"name": "events"}},
                    ],
                },
            },
        },
    }
    batch: Any = client.BatchV1Api(node.kube.api)
    batch.create_namespaced_job(ns, job)

    def complete() -> bool:
        status = batch.read_namespaced_job_status("train", ns).status
        assert not status.failed, f"training failed; log: {node.state_dir}/pods"
        return bool(status.succeeded)

    node.kube.wait_until(complete, 180, "the training Job to complete")
    pod = node.pod("app=train")
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    result: dict[str, Any] = json.loads(terminated.message)
    result["store"] = store
    return result


def test_job_completes_with_the_trainers_termination_message(trained: dict[str, Any]) -> None:
    version = trained["version"]
    assert (trained["store"] / version / "manifest.json").is_file()
    assert trained["metrics"]


@pytest.fixture(scope="module")
def served(node: Node, trained: dict[str, Any]) -> Any:
    core, ns = node.core, node.namespace
    core.create_namespaced_config_map(
        ns,
        {
            "metadata": {"name": "routing"},
            "data": {"routing.json": _routing(trained["version"], 1)},
        },
    )
    labels = {"app": "serve"}
    deployment = {
        "metadata": {"name": "serve"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **PLACEMENT,
                    "terminationGracePeriodSeconds": 20,
                    "containers": [
                        {
                            "name": "server",
                            "image": IMAGE,
                            "args": [
                                "serve",
                                "--model-store",
                                "/models",
                                "--routing",
                                "/etc/routing/routing.json",
                                "--host",
                                "$(POD_IP)",
                                "--port",
                                "8080",
                                "--reload-interval",
                                "0.5",
                            ],
                            "env": [
                                {
                                    "name": "POD_IP",
                                    "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                }
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": 8080},
                                "initialDelaySeconds": 5,
                                "periodSeconds": 2,
                            },
                            "volumeMounts": [
                                {"name": "models", "mountPath": "/models"},
                                {"name": "routing", "mountPath": "/etc/routing"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                        {"name": "routing", "configMap": {"name": "routing"}},
                    ],
                },
            },
        },
    }
    apps: Any = client.AppsV1Api(node.kube.api)
    apps.create_namespaced_deployment(ns, deployment)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("serve", ns).status
        return bool(status.available_replicas == 1)

    node.kube.wait_until(available, 120, "the serving Deployment to become available")
    return node.pod("app=serve")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_deployment_becomes_ready_and_answers_on_its_pod_ip(
    served: Any, trained: dict[str, Any]
) -> None:
    ip = served.status.pod_ip
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert served.status.pod_ips[0].ip == ip
    ready = {c.type: c.status for c in served.status.conditions}
    assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"
    body = _get(f"http://{ip}:8080/v1/recommendations?user_id=a-user-1&k=1")
    items = [item["item_id"] if isinstance(item, dict) else item for item in body["items"]]
    # a-user-1 has bought every item of group a but a1.
    assert items == ["a1"], body
    assert body["model_version"] == trained["version"]


def test_configmap_update_reaches_the_file_by_symlink_swap(
    node: Node, served: Any, trained: dict[str, Any]
) -> None:
    record = node.record(served)
    volume = node.state_dir / "pods" / f"{record.namespace}_{record.name}_{record.uid}"
    volume = volume / "volumes" / "routing"
    before = (volume / "..data").readlink()
    assert (volume / "routing.json").readlink() == Path("..data/routing.json")
    node.core.patch_namespaced_config_map(
        "routing", node.namespace, {"data": {"routing.json": _routing(trained["version"], 2)}}
    )
    node.kube.wait_until(
        lambda: json.loads((volume / "routing.json").read_text())["generation"] == 2,
        30,
        "the new routing file",
    )
    assert (volume / "..data").readlink() != before
    assert not (volume / before).exists()


def test_agent_restart_adopts_running_processes(node: Node, served: Any) -> None:
    before = node.record(served).containers["server"]
    assert before.pid is not None and before.start_ticks is not None
    node.stop_agent()
    assert procs.alive(procs.Handle(before.pid, before.start_ticks))
    node.start_agent()
    time.sleep(5)
    after = node.record(served).containers["server"]
    assert (after.pid, after.start_ticks, after.restart_count) == (
        before.pid,
        before.start_ticks,
        before.restart_count,
    )
    pod = node.pod("app=serve")
    assert pod.metadata.uid == served.metadata.uid
    assert pod.status.container_statuses[0].restart_count == before.restart_count
    assert _get(f"http://{pod.status.pod_ip}:8080/healthz")


def test_pod_deletion_sends_sigterm_and_the_process_exits(node: Node, served: Any) -> None:
    run = node.record(served).containers["server"]
    assert run.pid is not None and run.start_ticks is not None
    handle = procs.Handle(run.pid, run.start_ticks)
    meta = served.metadata
    node.core.delete_namespaced_pod(meta.name, node.namespace)

    def pod_gone() -> bool:
        names = [p.metadata.uid for p in node.core.list_namespaced_pod(node.namespace).items]
        return meta.uid not in names

    node.kube.wait_until(pod_gone, 40, "the pod object to be deleted")
    assert not procs.alive(handle)
    exit_file = node.state_dir / "pods" / f"{meta.namespace}_{meta.name}_{meta.uid}" / "server.exit"
    # The shim recorded the end: the server stopped on SIGTERM rather than being SIGKILLed.
    record = json.loads(exit_file.read_text())
    assert record["signal"] in (None, signal.SIGTERM), record
    assert node.record(served).deleted
    # The Deployment replaces it with a new pod on a new address.
    node.kube.wait_until(
        lambda: any(
            p.status.phase == "Running" and p.metadata.uid != meta.uid
            for p in node.core.list_namespaced_pod(node.namespace, label_selector="app=serve").items
        ),
        60,
        "a replacement pod",
    )
    assert node.log.exists()
