"""A canary rollout with nothing simulated but the shoppers: the operator (Helm chart, built
image) and the serving and training pods run on the real node, a real Prometheus finds the
serving pods through the Kubernetes API (kubernetes_sd_configs) and scrapes them, and a shopper
pod sends requests and clicks through the guide's Service. A model retrained on the same events
is promoted; a model trained on scrambled events loses its clicks and is rolled back, while the
stable model serves throughout."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import prometheus_binary
from tests.e2e.conftest import Kube, bin_dir, state_dir
from tests.e2e.product import RECOMMENDER_IMAGE, Cluster, Product, wait_until
from tests.e2e.test_canary import GROUPS, USERS_PER_GROUP, taste_rows
from tests.e2e.test_product import require_images
from tests.server.conftest import free_port

GUIDE = "storefront"
HOST_IP = "198.19.0.1"  # hack/node.sh: the host's cluster address, reachable from pods
SHOPPERS = Path(__file__).with_name("shopper_pod.py")


@dataclass
class Prometheus:
    """Prometheus on the host, discovering the guide's serving pods by the API."""

    root: Path
    kubeconfig: Path
    namespace: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://{HOST_IP}:{self.port}"

    def start(self, binary: str) -> None:
        config = self.root / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "shopping-guide",
                            "kubernetes_sd_configs": [
                                {
                                    "role": "pod",
                                    "kubeconfig_file": str(self.kubeconfig),
                                    "namespaces": {"names": [self.namespace]},
                                    "selectors": [
                                        {
                                            "role": "pod",
                                            "label": "app.kubernetes.io/component=serving",
                                        }
                                    ],
                                }
                            ],
                            "relabel_configs": [
                                {
                                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                                    "regex": "http",
                                    "action": "keep",
                                },
                                {
                                    "source_labels": ["__meta_kubernetes_namespace"],
                                    "target_label": "namespace",
                                },
                                {
                                    "source_labels": ["__meta_kubernetes_pod_name"],
                                    "target_label": "pod",
                                },
                            ],
                        }
                    ],
                }
            )
        )
        with (self.root / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address={HOST_IP}:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: status(self.address + "/-/ready") == 200, 60, "Prometheus ready")

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.address + "/api/v1/targets", timeout=5) as response:
            return list(json.loads(response.read())["data"]["activeTargets"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def rig(
    kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Product, Prometheus]]:
    binary = prometheus_binary()
    cluster = Cluster(kube.kubeconfig, bin_dir(), kube.env)
    require_images(cluster)
    suffix = uuid.uuid4().hex[:6]
    product = Product(
        cluster, f"e2e-canary-{suffix}", f"e2e-canary-system-{suffix}", f"canary-{suffix}",
        state_dir() / "volumes",
    )  # fmt: skip
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"), kube.kubeconfig, product.namespace, free_port()
    )
    product.install_operator()
    product.volumes()
    events = product.volumes_root / f"{product.namespace}-events"
    for name, scrambled in (("taste.csv", False), ("scrambled.csv", True)):
        rows = taste_rows(scrambled)
        (events / name).write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in rows))
        (events / name).chmod(0o644)
    prometheus.start(binary)
    try:
        yield product, prometheus
    finally:
        print((prometheus.root / "prometheus.log").read_text()[-2000:])
        prometheus.stop()
        cluster.kubectl(
            "delete",
            "shoppingguide",
            "--all",
            "-n",
            product.namespace,
            "--timeout=60s",
            check=False,
        )
        cluster.helm(
            "uninstall", product.release, "--namespace", product.system_namespace, "--wait"
        )
        cluster.kubectl(
            "delete",
            "namespace",
            product.namespace,
            product.system_namespace,
            "--wait=false",
            check=False,
        )
        cluster.kubectl(
            "delete",
            "pv",
            "-l",
            f"shoppingguide.io/e2e={product.namespace}",
            "--wait=false",
            check=False,
        )


def guide(product: Product, prometheus: Prometheus) -> dict[str, Any]:
    return {
        "apiVersion": "shoppingguide.io/v1alpha1",
        "kind": "ShoppingGuide",
        "metadata": {"name": GUIDE, "namespace": product.namespace},
        "spec": {
            "image": RECOMMENDER_IMAGE,
            "imagePullPolicy": "Never",
            "data": {
                "interactions": {
                    "persistentVolumeClaim": {"claimName": "events"},
                    "path": "taste.csv",
                    "columns": {"user": "user_id", "item": "item_id"},
                }
            },
            "modelStore": {"persistentVolumeClaim": {"claimName": "models"}},
            "model": {"algorithm": "als", "factors": 8, "iterations": 15},
            "training": {
                "qualityGate": {"metric": "ndcg@10", "minimum": 0.0, "maxRegression": 1.0}
            },
            # One serving pod: feedback is attributed by the pod that served the list.
            "serving": {
                "replicas": 1,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
            "rollout": {
                "steps": [{"weight": 20, "pause": "6s"}, {"weight": 50, "pause": "6s"}],
                "analysis": {
                    "prometheus": {"address": prometheus.address},
                    "interval": "4s",
                    "failureLimit": 2,
                    "minRequests": 30,
                    "maxErrorRate": 0.05,
                    "minClickThroughRatio": 0.8,
                },
                "progressDeadline": "150s",
            },
        },
    }


def shopper_pod(product: Product) -> None:
    url = product.dns_url(GUIDE)
    product.cluster.kubectl(
        "create", "configmap", "shoppers", "-n", product.namespace, f"--from-file={SHOPPERS}",
    )  # fmt: skip
    product.cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "shoppers", "namespace": product.namespace},
            "spec": {
                "containers": [
                    {
                        "name": "shoppers",
                        "image": RECOMMENDER_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python", f"/sim/{SHOPPERS.name}", url, "--groups", GROUPS,
                                    "--users", str(USERS_PER_GROUP)],
                        "volumeMounts": [{"name": "sim", "mountPath": "/sim"}],
                        "securityContext": {
                            "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False,
                        },
                    }
                ],
                "volumes": [{"name": "sim", "configMap": {"name": "shoppers"}}],
            },
        }
    )  # fmt: skip


def shopper_counts(product: Product) -> dict[str, int]:
    """The shoppers' last report; empty until the pod has written one."""
    done = product.cluster.run_kubectl("logs", "shoppers", "-n", product.namespace, "--tail=1")
    logs = done.stdout if done.returncode == 0 else ""
    line = logs.strip().splitlines()[-1] if logs.strip() else "{}"
    counts = json.loads(line)
    counts.pop("time", None)
    return {k: int(v) for k, v in counts.items()}


def outcome(product: Product, version: str, timeout: float = 240) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        for entry in product.status(GUIDE).get("history") or []:
            if entry["version"] == version and entry["outcome"] in ("Promoted", "RolledBack"):
                return dict(entry)
        return None

    return wait_until(ended, timeout, f"the canary of {version} to end", interval=2)


def canary_version(product: Product, known: set[str]) -> str:
    def started() -> str | None:
        version = (product.status(GUIDE).get("canary") or {}).get("version")
        return version if version and version not in known else None

    return wait_until(started, 300, "a new canary", interval=2)


def retrain(product: Product, key: str, path: str | None = None) -> None:
    if path is not None:
        patch = {"spec": {"data": {"interactions": {"path": path}}}}
        product.cluster.kubectl(
            "patch", "sg", GUIDE, "-n", product.namespace, "--type=merge", "-p", json.dumps(patch)
        )
    product.cluster.kubectl(
        "annotate",
        "sg",
        GUIDE,
        "-n",
        product.namespace,
        "--overwrite",
        f"shoppingguide.io/retrain={key}",
    )


def test_a_retrained_model_is_promoted_and_a_broken_one_rolled_back(
    rig: tuple[Product, Prometheus],
) -> None:
    product, prometheus = rig
    product.cluster.apply(guide(product, prometheus))
    first = product.wait_serving(GUIDE, timeout=600)["stable"]["version"]
    shopper_pod(product)

    # Prometheus found the serving pod through the API and scrapes it.
    def scraped() -> list[dict[str, Any]]:
        return [t for t in prometheus.targets() if t["health"] == "up"]

    targets = wait_until(scraped, 120, "Prometheus to scrape the serving pod")
    assert targets[0]["labels"]["namespace"] == product.namespace

    def served() -> int:
        return sum(v for k, v in shopper_counts(product).items() if k.startswith("served:"))

    wait_until(lambda: served() > 50, 120, "shoppers served")

    # 1. The same events, retrained: promoted through every step.
    retrain(product, "second")
    second = canary_version(product, {first})
    weights = set()

    def promoted() -> bool:
        s = product.status(GUIDE)
        if (s.get("canary") or {}).get("version") == second:
            weights.add(s["canary"].get("weight"))
        return bool((s.get("stable") or {}).get("version") == second)

    wait_until(promoted, 240, "the retrained model promoted", interval=1)
    entry = outcome(product, second)
    assert entry["outcome"] == "Promoted", entry
    assert weights & {20.0, 50.0}, weights

    # 2. Scrambled events: clicks collapse, rolled back; the stable model serves throughout.
    retrain(product, "scrambled", "scrambled.csv")
    broken = canary_version(product, {first, second})
    entry = outcome(product, broken)
    assert entry["outcome"] == "RolledBack", entry
    assert "click-through" in entry["reason"], entry
    assert product.status(GUIDE)["stable"]["version"] == second
    time.sleep(3)  # one more report from the shoppers
    counts = shopper_counts(product)
    print(f"\nshoppers: {counts}; promoted {second}; rolled back {broken}: {entry['reason']}")
    failed = {k: v for k, v in counts.items() if k.startswith("failed:")}
    assert not failed, counts
    versions = {k.removeprefix("served:") for k in counts if k.startswith("served:")}
    assert versions <= {first, second, broken}, versions
    assert counts.get(f"clicked:{second}", 0) > counts.get(f"clicked:{broken}", 0)
