"""Models and events in object storage, on the real node: versitygw (an S3 gateway over a
directory) runs as a pod behind a Service; the guide keeps no claim at all. It trains from an
s3:// events object, serves through its Service, canaries a retrained model and promotes it,
prunes old versions from the bucket, refuses a version whose object was damaged after upload
(the canary rolled back with the reason in status and an Event, the stable serving on), and
rides out a minute without the store, then trains and promotes again."""

from __future__ import annotations

import gzip
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs
import pytest

from tests.conftest import prometheus_binary
from tests.e2e.conftest import Kube, bin_dir, state_dir
from tests.e2e.product import RECOMMENDER_IMAGE, Cluster, Product, Prometheus, wait_until
from tests.e2e.test_canary import GROUPS, USERS_PER_GROUP, taste_rows
from tests.e2e.test_product import require_images
from tests.s3 import ACCESS_KEY, SECRET_KEY
from tests.server.conftest import free_port

pytestmark = pytest.mark.e2e

GUIDE = "storefront"
S3_IMAGE = "localhost/shopping-guide/versitygw:v1.8.0"
S3_UID = 65532
PREFIX = "shop"
ORPHAN = "v20000101-000000-0a0a0a"


def s3_manifests(namespace: str, root: str) -> list[dict[str, Any]]:
    labels = {"app": "s3"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-keys", "namespace": namespace},
            "stringData": {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "s3", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "versitygw",
                                "image": S3_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["--port", ":7070", "posix", "/data"],
                                "env": [
                                    {
                                        "name": name,
                                        "valueFrom": {
                                            "secretKeyRef": {"name": "s3-keys", "key": key}
                                        },
                                    }
                                    for name, key in (
                                        ("ROOT_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
                                        ("ROOT_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
                                    )
                                ],
                                "ports": [{"name": "s3", "containerPort": 7070}],
                                "readinessProbe": {"tcpSocket": {"port": 7070}, "periodSeconds": 2},
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        # A directory of the host: the objects outlive the pod (the outage).
                        "volumes": [
                            {"name": "data", "hostPath": {"path": root, "type": "Directory"}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s3", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"name": "s3", "port": 7070}]},
        },
    ]


class Store:
    """The bucket as the test sees it, from the host through the Service's address."""

    def __init__(self, product: Product) -> None:
        service = product.cluster.get("service", "s3", product.namespace)
        assert service is not None
        self.fs = pafs.S3FileSystem(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, scheme="http", region="us-east-1",
            endpoint_override=f"{service['spec']['clusterIP']}:7070",
            allow_bucket_creation=True, connect_timeout=2, request_timeout=10,
        )  # fmt: skip
        self.home = f"models/{PREFIX}/guides/{product.namespace}/{GUIDE}"

    def create_buckets(self) -> bool:
        for bucket in ("models", "events"):
            self.fs.create_dir(bucket)
        return True

    def versions(self) -> set[str]:
        selector = pafs.FileSelector(self.home, allow_not_found=True)
        return {
            info.base_name
            for info in self.fs.get_file_info(selector)
            if self.fs.get_file_info(f"{info.path}/manifest.json").type == pafs.FileType.File
        }

    def copy_version(self, source: str, target: str) -> None:
        selector = pafs.FileSelector(f"{self.home}/{source}", recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                self.fs.copy_file(info.path, info.path.replace(f"/{source}/", f"/{target}/"))

    def damage(self, version: str, name: str) -> None:
        key = f"{self.home}/{version}/{name}"
        with self.fs.open_input_stream(key) as stream:
            raw = bytearray(stream.read())
        raw[len(raw) // 2] ^= 0xFF
        with self.fs.open_output_stream(key) as out:
            out.write(bytes(raw))


@pytest.fixture(scope="module")
def rig(
    kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Product, Prometheus, Store]]:
    binary = prometheus_binary()
    cluster = Cluster(kube.kubeconfig, bin_dir(), kube.env)
    require_images(cluster)
    images = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.images}")
    if S3_IMAGE not in images:
        pytest.fail(f"{S3_IMAGE} is not on the node: hack/cluster.sh up loads it", pytrace=False)
    suffix = uuid.uuid4().hex[:6]
    product = Product(
        cluster, f"e2e-s3-{suffix}", f"e2e-s3-system-{suffix}", f"s3-{suffix}",
        state_dir() / "volumes",
    )  # fmt: skip
    root = product.volumes_root / f"{product.namespace}-s3"
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, S3_UID, S3_UID)
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"), kube.kubeconfig, product.namespace, free_port()
    )
    product.install_operator()
    cluster.apply(*s3_manifests(product.namespace, str(root)))
    cluster.kubectl("rollout", "status", "deployment/s3", "-n", product.namespace, "--timeout=120s")
    store = Store(product)
    wait_until(store.create_buckets, 60, "the store to take buckets", ignore=(OSError,))
    rows = "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in taste_rows(False))
    with store.fs.open_output_stream("events/taste.csv.gz") as out:
        out.write(gzip.compress(rows.encode()))
    prometheus.start(binary)
    try:
        yield product, prometheus, store
    finally:
        prometheus.stop()
        cluster.kubectl(
            "delete", "shoppingguide", "--all", "-n", product.namespace, "--timeout=60s",
            check=False,
        )  # fmt: skip
        cluster.helm(
            "uninstall", product.release, "--namespace", product.system_namespace, "--wait"
        )
        cluster.kubectl(
            "delete", "namespace", product.namespace, product.system_namespace, "--wait=false",
            check=False,
        )  # fmt: skip


def guide(product: Product, prometheus: Prometheus) -> dict[str, Any]:
    s3 = {
        "endpoint": f"http://s3.{product.namespace}.svc.cluster.local:7070",
        "credentialsSecret": {"name": "s3-keys"},
    }
    return {
        "apiVersion": "shoppingguide.io/v1alpha1",
        "kind": "ShoppingGuide",
        "metadata": {"name": GUIDE, "namespace": product.namespace},
        "spec": {
            "image": RECOMMENDER_IMAGE,
            "imagePullPolicy": "Never",
            "data": {"interactions": {"s3": {**s3, "bucket": "events", "key": "taste.csv.gz"}}},
            "modelStore": {"s3": {**s3, "bucket": "models", "prefix": PREFIX}, "keep": 1},
            "model": {"algorithm": "als", "factors": 8, "iterations": 15},
            "training": {
                "qualityGate": {"metric": "ndcg@10", "minimum": 0.0, "maxRegression": 1.0}
            },
            "serving": {
                "replicas": 2,
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
            "rollout": {
                "steps": [{"weight": 50, "pause": "6s"}],
                "analysis": {
                    "prometheus": {"address": prometheus.address},
                    "interval": "4s",
                    "failureLimit": 2,
                    "minRequests": 20,
                    "maxErrorRate": 0.05,
                },
                "progressDeadline": "150s",
            },
        },
    }


def test_models_in_a_bucket_train_serve_canary_prune_refuse_damage_and_survive_an_outage(
    rig: tuple[Product, Prometheus, Store],
) -> None:
    product, prometheus, store = rig
    try:
        scenario(product, prometheus, store)
    except BaseException:
        print(product.diagnose())
        for component in ("training", "serving"):
            print(
                product.cluster.kubectl(
                    "logs",
                    "-n",
                    product.namespace,
                    "--tail=40",
                    "--prefix",
                    "-l",
                    f"app.kubernetes.io/component={component}",
                    check=False,
                )
            )
        raise


def scenario(product: Product, prometheus: Prometheus, store: Store) -> None:
    product.cluster.apply(guide(product, prometheus))
    first = product.wait_serving(GUIDE, timeout=600)["stable"]["version"]
    assert store.versions() == {first}
    # A version no status names (left by an earlier guide of the same name, say): the next
    # run prunes it, with keep 1; the versions that were ever stable stay for a rollback.
    store.copy_version(first, ORPHAN)
    assert store.versions() == {first, ORPHAN}
    product.start_shoppers("--groups", GROUPS, "--users", str(USERS_PER_GROUP))

    def served() -> int:
        return sum(v for k, v in product.shopper_counts().items() if k.startswith("served:"))

    wait_until(lambda: served() > 50, 120, "shoppers served through the Service")

    # 1. Retrained: a canary, promoted; the orphan pruned.
    product.retrain("second")
    second = product.canary_version({first, ORPHAN})
    assert product.outcome(second)["outcome"] == "Promoted"
    assert store.versions() == {first, second}

    # 2. A version damaged in the bucket after its upload: no pod serves it, the canary is
    # rolled back with the reason, and the stable model serves throughout.
    product.retrain("third")
    known = {first, second, ORPHAN}
    third = wait_until(
        lambda: next(iter(store.versions() - known), None), 300, "the third version", interval=0.2
    )
    store.damage(third, "item_factors.npy")
    entry = product.outcome(third)
    assert entry["outcome"] == "RolledBack", entry
    assert "failed to load" in entry["reason"] and "sha256" in entry["reason"], entry
    events = product.cluster.kubectl(
        "get", "events", "-n", product.namespace, "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{'\\n'}{end}",
    )  # fmt: skip
    assert any(
        line.startswith("CanaryRolledBack:") and third in line and "sha256" in line
        for line in events.splitlines()
    ), events
    assert product.status(GUIDE)["stable"]["version"] == second

    # 3. A minute without the store: every shopper is still answered.
    before = product.shopper_counts()
    product.cluster.kubectl("scale", "deployment/s3", "-n", product.namespace, "--replicas=0")
    wait_until(
        lambda: not product.cluster.items("pods", product.namespace, "app=s3"), 60, "the store down"
    )
    time.sleep(60)
    during = product.shopper_counts()
    assert served_between(before, during) > 50, (before, during)
    product.cluster.kubectl("scale", "deployment/s3", "-n", product.namespace, "--replicas=1")
    product.cluster.kubectl(
        "rollout", "status", "deployment/s3", "-n", product.namespace, "--timeout=120s"
    )
    # ...and once it is back, the guide trains and promotes again by itself.
    product.retrain("fourth")
    fourth = product.canary_version({first, second, third})
    assert product.outcome(fourth)["outcome"] == "Promoted"
    counts = product.shopper_counts()
    failed = {k: v for k, v in counts.items() if k.startswith("failed:")}
    print(f"\nshoppers: {counts}; bucket: {sorted(store.versions())}")
    assert not failed, counts
    assert third not in {k.removeprefix("served:") for k in counts if k.startswith("served:")}


def served_between(before: dict[str, int], after: dict[str, int]) -> int:
    def total(counts: dict[str, int]) -> int:
        return sum(v for k, v in counts.items() if k.startswith("served:"))

    return total(after) - total(before)
