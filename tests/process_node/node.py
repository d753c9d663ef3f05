"""The Node object: registration, status, and the heartbeats that keep it Ready."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

LABEL = "shoppingguide.io/process-node"
TAINT = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
KUBELET_VERSION = "v1.34.0-process-node"

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:  # noqa: PTH123
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def node_labels(name: str) -> dict[str, str]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        LABEL: "true",
        "type": "process",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
    }


def node_status(name: str, since: str, max_pods: int) -> dict[str, Any]:
    capacity = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_bytes() // 1024}Ki",
        "pods": str(max_pods),
        "ephemeral-storage": "100Gi",
    }
    now = _now()

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        }

    uname = platform.uname()
    machine_id = _read_first("/etc/machine-id") or name
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
            condition("Ready", "True", "KubeletReady", "process node agent is posting status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": machine_id,
            "systemUUID": machine_id,
            "bootID": _read_first("/proc/sys/kernel/random/boot_id") or "",
            "kernelVersion": uname.release,
            "osImage": f"{uname.system} (processes of the agent's Python environment)",
            "containerRuntimeVersion": "process://1",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": node_labels(name)["kubernetes.io/arch"],
        },
    }


def _read_first(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:  # noqa: PTH123
            return handle.readline().strip() or None
    except OSError:
        return None


class NodeKeeper:
    """Registers the node, then renews its Lease and refreshes its conditions."""

    def __init__(self, api: client.ApiClient, name: str, max_pods: int = 110) -> None:
        # Typed as Any: the calls below pass plain dicts, which the client accepts as bodies.
        self.core: Any = client.CoreV1Api(api)
        self.coordination: Any = client.CoordinationV1Api(api)
        self.name = name
        self.max_pods = max_pods
        self.since = _now()
        self.uid = ""

    def register(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": node_labels(self.name)},
            "spec": {"taints": [TAINT]},
        }
        try:
            node = self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            node = self.core.read_node(self.name)
            taints = [t.to_dict() for t in node.spec.taints or []]
            if not any(t["key"] == TAINT["key"] for t in taints):
                taints.append(TAINT)
            patch = {"metadata": {"labels": node_labels(self.name)}, "spec": {"taints": taints}}
            node = self.core.patch_node(self.name, patch)
        self.uid = node.metadata.uid
        self.heartbeat()
        log.info("node %s registered", self.name)

    def heartbeat(self) -> None:
        self.core.patch_node_status(
            self.name, {"status": node_status(self.name, self.since, self.max_pods)}
        )
        self._renew_lease()

    def _renew_lease(self) -> None:
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _micro_now(),
        }
        try:
            self.coordination.patch_namespaced_lease(self.name, LEASE_NAMESPACE, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.name,
                "uid": self.uid,
            }
            body = {
                "metadata": {"name": self.name, "ownerReferences": [owner]},
                "spec": spec,
            }
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception:
                log.exception("node heartbeat failed; retrying")
                try:
                    self.register()  # the Node may have been deleted
                except Exception:
                    log.exception("re-registering the node failed")
