"""A canary rollout with nothing simulated but the shoppers: the operator (Helm chart, built
image) and the serving and training pods run on the real node, a real Prometheus finds the
serving pods through the Kubernetes API (kubernetes_sd_configs) and scrapes them, and a shopper
pod sends requests and clicks through the guide's Service. A model retrained on the same events
is promoted; a model trained on scrambled events loses its clicks and is rolled back, while the
stable model serves throughout."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import prometheus_binary
from tests.e2e.conftest import Kube, bin_dir, state_dir
from tests.e2e.product import RECOMMENDER_IMAGE, Cluster, Product, Prometheus, wait_until
from tests.e2e.test_canary import GROUPS, USERS_PER_GROUP, taste_rows
from tests.e2e.test_product import require_images
from tests.server.conftest import free_port

GUIDE = "storefront"


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
            # Three serving pods behind the Service: a click often reaches another pod than
            # the one that served the list, and is attributed from the signed id alone.
            "serving": {
                "replicas": 3,
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


def test_a_retrained_model_is_promoted_and_a_broken_one_rolled_back(
    rig: tuple[Product, Prometheus],
) -> None:
    product, prometheus = rig
    product.cluster.apply(guide(product, prometheus))
    first = product.wait_serving(GUIDE, timeout=600)["stable"]["version"]
    product.start_shoppers("--groups", GROUPS, "--users", str(USERS_PER_GROUP))

    # Prometheus found the serving pod through the API and scrapes it.
    def scraped() -> list[dict[str, Any]]:
        return [t for t in prometheus.targets() if t["health"] == "up"]

    targets = wait_until(scraped, 120, "Prometheus to scrape the serving pod")
    assert targets[0]["labels"]["namespace"] == product.namespace

    def served() -> int:
        return sum(v for k, v in product.shopper_counts().items() if k.startswith("served:"))

    wait_until(lambda: served() > 50, 120, "shoppers served")

    # 1. The same events, retrained: promoted through every step.
    product.retrain("second")
    second = product.canary_version({first})
    weights = set()

    def promoted() -> bool:
        s = product.status(GUIDE)
        if (s.get("canary") or {}).get("version") == second:
            weights.add(s["canary"].get("weight"))
        return bool((s.get("stable") or {}).get("version") == second)

    wait_until(promoted, 240, "the retrained model promoted", interval=1)
    entry = product.outcome(second)
    assert entry["outcome"] == "Promoted", entry
    assert weights & {20.0, 50.0}, weights

    # 2. Scrambled events: clicks collapse, rolled back; the stable model serves throughout.
    product.retrain("scrambled", "scrambled.csv")
    broken = product.canary_version({first, second})
    entry = product.outcome(broken)
    assert entry["outcome"] == "RolledBack", entry
    assert "click-through" in entry["reason"], entry
    assert product.status(GUIDE)["stable"]["version"] == second
    time.sleep(3)  # one more report from the shoppers
    counts = product.shopper_counts()
    print(f"\nshoppers: {counts}; promoted {second}; rolled back {broken}: {entry['reason']}")
    failed = {k: v for k, v in counts.items() if k.startswith("failed:")}
    assert not failed, counts
    versions = {k.removeprefix("served:") for k in counts if k.startswith("served:")}
    assert versions <= {first, second, broken}, versions
    assert counts.get(f"clicked:{second}", 0) > counts.get(f"clicked:{broken}", 0)
    # Every click was credited to the version that served it, whichever pod took it.
    clicked = {k.removeprefix("clicked:"): v for k, v in counts.items() if k.startswith("clicked:")}
    credited = {
        k.removeprefix("attributed:"): v for k, v in counts.items() if k.startswith("attributed:")
    }
    total = sum(clicked.values())
    print(f"clicks {total}; credited to {credited}; unknown {credited.get('unknown', 0)}")
    assert total > 100, counts
    assert credited == clicked, counts
