"""The product as it ships, on the real node: the operator from the Helm chart runs as a pod of
the built operator image; the sample guide on Online Retail trains in a Job of the built
recommender image, serves through its Service (by ClusterIP from the host, by DNS name from a
pod), runs locked down, survives an OOM kill, keeps its PodDisruptionBudget and autoscales."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import required
from tests.e2e.conftest import Kube, bin_dir, state_dir
from tests.e2e.product import (
    NODE,
    OPERATOR_IMAGE,
    RECOMMENDER_IMAGE,
    Cluster,
    Product,
    StepError,
    ready,
    wait_until,
)

CUSTOMER = "14911"  # a customer of the sample with many purchases
MIN_REPLICAS = 2
GUIDE = "storefront"


def images_on_the_node(cluster: Cluster) -> set[str]:
    node = cluster.get("node", NODE, "default")
    if node is None:
        required(f"no node {NODE}: the local cluster runs without its real node")
        raise AssertionError  # unreachable: required() raises
    # An image whose tag a reloaded one took is listed without names.
    images = node["status"].get("images", [])
    return {name for image in images for name in image.get("names") or []}


def require_images(cluster: Cluster) -> None:
    """Both images on the node (the kubelet reports what containerd holds within seconds)."""
    wanted = {RECOMMENDER_IMAGE, OPERATOR_IMAGE}
    try:
        wait_until(lambda: wanted <= images_on_the_node(cluster), 30, "the images on the node")
    except StepError:
        missing = sorted(wanted - images_on_the_node(cluster))
        required(f"images not on {NODE}: {missing} (make images, then make cluster-up)")


@pytest.fixture(scope="module")
def product(kube: Kube) -> Iterator[Product]:
    suffix = uuid.uuid4().hex[:6]
    cluster = Cluster(kube.kubeconfig, bin_dir(), kube.env)
    require_images(cluster)
    p = Product(
        cluster,
        namespace=f"e2e-product-{suffix}",
        system_namespace=f"e2e-sg-system-{suffix}",
        release=f"sg-{suffix}",
        volumes_root=state_dir() / "volumes",
    )
    p.install_operator()
    p.volumes()
    p.cluster.apply(
        p.sample_guide(
            GUIDE,
            serving={
                "autoscaling": {
                    "minReplicas": MIN_REPLICAS,
                    "maxReplicas": 4,
                    "targetCPUUtilizationPercentage": 50,
                },
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "podDisruptionBudget": {"maxUnavailable": 1},
                # The first refresh starts once the model serves; the next not within the test.
                "trending": {"refreshEvery": "6h"},
            },
        )
    )
    p.wait_serving(GUIDE)
    try:
        yield p
    finally:
        cluster.kubectl(
            "delete", "shoppingguide", "--all", "-n", p.namespace, "--timeout=60s", check=False
        )
        p.cluster.helm("uninstall", p.release, "--namespace", p.system_namespace, "--wait")
        cluster.kubectl(
            "delete", "namespace", p.namespace, p.system_namespace, "--wait=false", check=False
        )
        cluster.kubectl(
            "delete", "pv", "-l", f"shoppingguide.io/e2e={p.namespace}", "--wait=false", check=False
        )


def get_json(url: str, timeout: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def test_the_operator_runs_from_its_image_under_the_charts_service_account(
    product: Product,
) -> None:
    pods = product.operator_pods()
    assert len(pods) == 1 and ready(pods[0]), pods
    pod = pods[0]
    assert pod["spec"]["nodeName"] == NODE
    accounts = product.cluster.items("serviceaccounts", product.system_namespace)
    charts = [a["metadata"]["name"] for a in accounts if a["metadata"]["name"] != "default"]
    assert [pod["spec"]["serviceAccountName"]] == charts
    assert pod["spec"]["containers"][0]["image"] == OPERATOR_IMAGE
    # The image's own entrypoint runs: the container's process is the operator.
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_the_sample_guide_trained_in_a_job_of_the_recommender_image(product: Product) -> None:
    # No phase check: the HPA may be adding pods (Progressing) while the model serves.
    status = product.status(GUIDE)
    assert status["stable"]["metrics"]["ndcg@10"] > 0.1, status["stable"]
    jobs = product.cluster.items("jobs", product.namespace)
    assert jobs, "no training Job"
    pods = product.cluster.items("pods", product.namespace, "batch.kubernetes.io/job-name")
    trained = [p for p in pods if p["status"].get("phase") == "Succeeded"]
    assert trained, [p["status"] for p in pods]
    assert trained[0]["spec"]["nodeName"] == NODE
    assert trained[0]["spec"]["containers"][0]["image"] == RECOMMENDER_IMAGE


def test_recommendations_through_the_service_by_cluster_ip_from_the_host(product: Product) -> None:
    body = get_json(f"{product.service_url(GUIDE)}/v1/recommendations?user_id={CUSTOMER}&k=5")
    assert len(body["items"]) == 5
    assert body["model_version"] == product.status(GUIDE)["stable"]["version"]


def test_trending_is_refreshed_in_a_job_and_the_pods_serve_the_rewritten_version(
    product: Product,
) -> None:
    before = get_json(f"{product.service_url(GUIDE)}/v1/trending?k=5")
    assert len(before["items"]) == 5, before  # trained from InvoiceDate

    def refreshed() -> dict[str, Any] | None:
        status = product.status(GUIDE)
        phase = (status.get("trending") or {}).get("phase")
        if phase == "Failed":
            raise StepError(f"the trending refresh failed: {status['trending']}")
        return status if phase == "Succeeded" else None

    status = wait_until(refreshed, 300, "the first trending refresh", interval=2)
    assert status["trending"]["versions"] == [status["stable"]["version"]]
    assert status["routing"]["modelsRevision"] >= 1
    (pod,) = product.cluster.items(
        "pods", product.namespace, f"batch.kubernetes.io/job-name={status['trending']['job']}"
    )
    assert pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["containers"][0]["image"] == RECOMMENDER_IMAGE

    # Every pod loads the rewritten version (its checksums are new) and keeps serving; the
    # events did not change, so neither does the list.
    def reloaded() -> dict[str, Any] | None:
        pods = product.serving_pods(GUIDE)
        if not pods or not all(ready(p) for p in pods):
            return None
        return get_json(f"{product.service_url(GUIDE)}/v1/trending?k=5")

    after = wait_until(reloaded, 120, "the serving pods Ready on the rewritten version")
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]
    assert after["model_version"] == status["stable"]["version"]


def test_recommendations_by_dns_name_from_another_pod(product: Product) -> None:
    url = f"{product.dns_url(GUIDE)}/v1/recommendations?user_id={CUSTOMER}&k=3"
    script = (
        "import json, urllib.request\n"
        f"print(json.dumps(json.load(urllib.request.urlopen({url!r}, timeout=20))))\n"
    )
    out = product.run_in_pod("dns-client", script)
    body = json.loads(out.strip().splitlines()[-1])
    assert len(body["items"]) == 3


def test_serving_pods_run_non_root_read_only_without_capabilities(product: Product) -> None:
    pod = next(p for p in product.serving_pods(GUIDE) if ready(p))
    script = (
        "import os\n"
        "print('uid', os.getuid())\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as e:\n    print('root', e.errno)\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].strip())\n"
    )
    out = product.cluster.kubectl(
        "exec", pod["metadata"]["name"], "-n", product.namespace, "--", "python", "-c", script
    )
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert lines["uid"] != "0"
    assert lines["root"] == "30"  # EROFS
    assert lines["CapEff:"] == "0000000000000000"


def test_a_pod_over_its_memory_limit_is_oom_killed_while_the_guide_serves(product: Product) -> None:
    name = "memory-hog"
    product.cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": product.namespace},
            "spec": {
                "containers": [
                    {
                        "name": "hog",
                        "image": RECOMMENDER_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": [
                            "python",
                            "-c",
                            "x = bytearray(512 << 20); import time; time.sleep(600)",
                        ],
                        "resources": {"limits": {"memory": "64Mi"}},
                    }
                ]
            },
        }
    )

    def killed() -> dict[str, Any] | None:
        pod = product.cluster.get("pod", name, product.namespace) or {}
        for status in pod.get("status", {}).get("containerStatuses", []):
            last = (status.get("lastState") or {}).get("terminated") or {}
            if last.get("reason") == "OOMKilled" and status["restartCount"] >= 1:
                return dict(last)
        return None

    terminated = wait_until(killed, 120, "the memory hog OOM-killed and restarted")
    assert terminated["exitCode"] == 137
    body = get_json(f"{product.service_url(GUIDE)}/v1/recommendations?user_id={CUSTOMER}&k=2")
    assert len(body["items"]) == 2
    product.cluster.kubectl("delete", "pod", name, "-n", product.namespace, "--wait=false")


def evict(product: Product, pod: str) -> subprocess.CompletedProcess[str]:
    """POST an Eviction, as `kubectl drain` does."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": product.namespace},
    }
    path = f"/api/v1/namespaces/{product.namespace}/pods/{pod}/eviction"
    return product.cluster.run_kubectl("create", "--raw", path, "-f", "-", stdin=json.dumps(body))


def test_evictions_respect_the_pod_disruption_budget(product: Product) -> None:
    def settled() -> list[dict[str, Any]] | None:
        pods = [
            p for p in product.serving_pods(GUIDE) if not p["metadata"].get("deletionTimestamp")
        ]
        budget = product.cluster.get("pdb", GUIDE, product.namespace) or {}
        allowed = budget.get("status", {}).get("disruptionsAllowed")
        return pods if len(pods) >= 2 and all(ready(p) for p in pods) and allowed == 1 else None

    pods = wait_until(settled, 180, "two Ready serving pods and a budget of one disruption")
    first = evict(product, pods[0]["metadata"]["name"])
    assert first.returncode == 0, first.stderr
    second = evict(product, pods[1]["metadata"]["name"])
    assert second.returncode != 0, "the budget let a second pod go"
    assert "disruption budget" in second.stderr, second.stderr
    wait_until(settled, 180, "the evicted pod replaced")


def test_load_through_the_service_scales_the_guide_up_and_back_down(product: Product) -> None:
    url = f"{product.service_url(GUIDE)}/v1/recommendations?user_id={CUSTOMER}&k=10"
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def shopper() -> None:
        while not stop.is_set():
            try:
                get_json(url, timeout=10)
                outcome = "ok"
            except (urllib.error.URLError, OSError, ValueError):
                outcome = "failed"
            with lock:
                counts[outcome] += 1

    def replicas() -> int:
        hpa = product.cluster.get("hpa", GUIDE, product.namespace) or {}
        return int(hpa.get("status", {}).get("currentReplicas") or 0)

    # Loading models at start-up costs CPU: the HPA may have scaled up already. Start from
    # its minimum, once it has settled there.
    start_replicas = MIN_REPLICAS
    wait_until(lambda: replicas() == MIN_REPLICAS, 300, "the HPA at its minimum", interval=3)
    threads = [threading.Thread(target=shopper, daemon=True) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_until(
            lambda: replicas() > start_replicas, 240, "the HPA to add serving pods", interval=2
        )
        scale_up = time.monotonic() - started
        wait_until(
            lambda: sum(ready(p) for p in product.serving_pods(GUIDE)) > start_replicas,
            180,
            "the added serving pods Ready",
            interval=2,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    print(f"scale-up after {scale_up:.0f}s; requests ok={counts['ok']} failed={counts['failed']}")
    wait_until(lambda: replicas() == start_replicas, 300, "the HPA to scale back down", interval=3)
    assert counts["ok"] > 100
    assert counts["failed"] == 0, counts


def test_the_kubectl_plugin_as_kubectl_runs_it(product: Product) -> None:
    """kubectl finds kubectl-shoppingguide on PATH and passes the rest of the line verbatim,
    its own global flags included, wherever the user wrote them."""
    plugin = Path(sys.executable).with_name("kubectl-shoppingguide")
    env = {**product.cluster.env, "PATH": f"{plugin.parent}:{product.cluster.env.get('PATH', '')}"}
    kubeconfig = str(product.cluster.kubeconfig)

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(product.cluster.bin_dir / "kubectl"), "shoppingguide", *args],
            capture_output=True, text=True, env=env, check=False, timeout=60,
        )  # fmt: skip

    stable = product.status(GUIDE)["stable"]["version"]
    status = kubectl("status", GUIDE, "-n", product.namespace, "--kubeconfig", kubeconfig)
    assert status.returncode == 0, status.stderr
    assert stable in status.stdout
    history = kubectl("-n", product.namespace, "history", GUIDE, f"--kubeconfig={kubeconfig}")
    assert history.returncode == 0 and "VERSION" in history.stdout, history.stderr
    missing = kubectl(
        "status", "no-such-guide", "-n", product.namespace, "--kubeconfig", kubeconfig
    )
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert kubectl("rollback", GUIDE, "--kubeconfig", kubeconfig).returncode == 2
