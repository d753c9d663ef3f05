"""The local cluster's real node: kubelet, containerd, CNI, kube-proxy, CoreDNS and
metrics-server, and the address rules that keep every packet on this machine."""

from __future__ import annotations

import errno
import json
import socket
from typing import Any

import pytest

from tests.e2e.conftest import Kube

NODE = "real-0"


def nodes(kube: Kube) -> dict[str, Any]:
    items = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n for n in items}


def test_the_real_node_is_ready_and_fake_nodes_take_only_what_tolerates_them(kube: Kube) -> None:
    found = nodes(kube)
    node = found[NODE]
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    address = {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"]
    assert address.startswith("198.1")
    for name, other in found.items():
        if name.startswith("kwok-"):
            assert {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"} in other[
                "spec"
            ]["taints"]


def test_the_kubernetes_service_has_the_api_servers_endpoint(kube: Kube) -> None:
    slices = json.loads(
        kube.kubectl(
            "get", "endpointslices", "-n", "default", "-l",
            "kubernetes.io/service-name=kubernetes", "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    addresses = [a for s in slices for e in s["endpoints"] for a in e["addresses"]]
    assert addresses and all(a.startswith("198.1") for a in addresses)


def test_metrics_server_reports_the_node(kube: Kube) -> None:
    def reported() -> dict[str, Any] | None:
        out = kube.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False)
        if out.returncode != 0:
            return None
        items = json.loads(out.stdout)["items"]
        return next((i for i in items if i["metadata"]["name"] == NODE), None)

    metrics = kube.wait_until(reported, 120, "node metrics from metrics-server", interval=3)
    assert metrics["usage"]["cpu"] and metrics["usage"]["memory"]
    top = kube.kubectl("top", "node", NODE)
    assert NODE in top.stdout


def test_cluster_dns_answers_from_its_service(kube: Kube) -> None:
    service = json.loads(
        kube.kubectl("get", "svc", "kube-dns", "-n", "kube-system", "-o", "json").stdout
    )
    assert service["spec"]["clusterIP"] == "198.18.128.10"
    ready = kube.kubectl(
        "get", "deploy", "coredns", "-n", "kube-system", "-o", "jsonpath={.status.readyReplicas}"
    )
    assert ready.stdout == "1"


def connect_error(address: str, port: int) -> int:
    """The errno a TCP connect from this host gets; a timeout would mean the packet left."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect((address, port))
        except TimeoutError:
            pytest.fail(f"connecting to {address}:{port} hung: the packet was not stopped here")
        except OSError as exc:
            return exc.errno or 0
    pytest.fail(f"something answered on {address}:{port}")


@pytest.mark.parametrize(
    ("address", "meaning"),
    [
        ("198.18.16.7", "a pod IP of a fake node"),
        ("198.18.32.1", "the fake nodes' IP"),
        ("198.19.200.9", "an unused address of the cluster block"),
    ],
)
def test_unbacked_cluster_addresses_fail_at_once(kube: Kube, address: str, meaning: str) -> None:
    assert connect_error(address, 80) in (errno.EHOSTUNREACH, errno.ENETUNREACH), meaning


def test_a_service_address_without_a_service_is_refused_at_once(kube: Kube) -> None:
    assert connect_error("198.18.143.250", 80) == errno.ECONNREFUSED
