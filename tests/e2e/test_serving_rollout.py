"""A rolling update and a scale-down of the serving Deployment lose no request: shoppers send
a steady stream through the guide's Service (by ClusterIP from the host, some opening a
connection per request, some keeping theirs alive) while a change to the guide's spec replaces
every serving pod, and then while one pod is scaled away."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.conftest import Kube, bin_dir, state_dir
from tests.e2e.product import RECOMMENDER_IMAGE, Cluster, Product, ready, wait_until
from tests.e2e.test_canary import GROUPS, USERS_PER_GROUP, taste_rows
from tests.e2e.test_product import require_images

GUIDE = "storefront"
REPLICAS = 3


@pytest.fixture(scope="module")
def product(kube: Kube) -> Iterator[Product]:
    cluster = Cluster(kube.kubeconfig, bin_dir(), kube.env)
    require_images(cluster)
    suffix = uuid.uuid4().hex[:6]
    p = Product(
        cluster, f"e2e-rollout-{suffix}", f"e2e-rollout-system-{suffix}", f"rollout-{suffix}",
        state_dir() / "volumes",
    )  # fmt: skip
    p.install_operator()
    p.volumes()
    events = p.volumes_root / f"{p.namespace}-events" / "taste.csv"
    events.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in taste_rows()))
    events.chmod(0o644)
    try:
        yield p
    finally:
        cluster.kubectl(
            "delete", "shoppingguide", "--all", "-n", p.namespace, "--timeout=60s", check=False
        )
        cluster.helm("uninstall", p.release, "--namespace", p.system_namespace, "--wait")
        cluster.kubectl(
            "delete", "namespace", p.namespace, p.system_namespace, "--wait=false", check=False
        )
        cluster.kubectl(
            "delete", "pv", "-l", f"shoppingguide.io/e2e={p.namespace}", "--wait=false", check=False
        )


def guide(product: Product, replicas: int, cpu: str) -> dict[str, Any]:
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
            "serving": {
                "replicas": replicas,
                "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}},
            },
        },
    }


@dataclass
class Shoppers:
    """Threads sending requests to `url` until stopped, counting outcomes by kind."""

    url: str
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, per_request: int, kept_alive: int) -> None:
        for n in range(per_request):
            self.threads.append(threading.Thread(target=self._per_request, args=(n,)))
        for n in range(kept_alive):
            self.threads.append(threading.Thread(target=self._kept_alive, args=(n,)))
        for thread in self.threads:
            thread.start()

    def join(self) -> dict[str, int]:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        return dict(self.counts)

    def _record(self, kind: str, error: str | None) -> None:
        with self.lock:
            self.counts[f"{kind}:{'failed' if error else 'ok'}"] += 1
            if error:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}")

    def _path(self, n: int, i: int) -> str:
        user = f"{GROUPS[i % len(GROUPS)]}-user-{(n * 31 + i) % USERS_PER_GROUP}"
        return f"/v1/recommendations?user_id={user}&k=5"

    def _per_request(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            error = None
            try:
                with urllib.request.urlopen(self.url + self._path(n, i), timeout=10) as response:
                    if len(json.loads(response.read())["items"]) != 5:
                        error = "not 5 items"
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                error = repr(exc)
            self._record("per-request", error)
            time.sleep(0.01)

    def _kept_alive(self, n: int) -> None:
        """As an HTTP client with a connection pool does: one connection for many requests,
        a new one when the server says `Connection: close`."""
        address = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(address.netloc, timeout=10)
        i = 0
        while not self.stop.is_set():
            i += 1
            error = None
            try:
                connection.request("GET", self._path(n, i))
                response = connection.getresponse()
                body = json.loads(response.read())
                if response.status != 200 or len(body["items"]) != 5:
                    error = f"{response.status} {body}"
            except (http.client.HTTPException, OSError, ValueError, KeyError) as exc:
                error = repr(exc)
                connection.close()
            self._record("kept-alive", error)
            time.sleep(0.01)
        connection.close()


def serving_pods(product: Product) -> list[dict[str, Any]]:
    return product.serving_pods(GUIDE)


def settled(product: Product, replicas: int) -> list[dict[str, Any]] | None:
    """The serving pods once the Deployment has exactly `replicas` Ready pods of its current
    template, and no other pod (none terminating)."""
    deployment = product.cluster.get("deployment", GUIDE, product.namespace) or {}
    status = deployment.get("status", {})
    spec = deployment.get("spec", {})
    pods = serving_pods(product)
    done = (
        status.get("observedGeneration") == deployment.get("metadata", {}).get("generation")
        and spec.get("replicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and len(pods) == replicas
        and all(ready(p) for p in pods)
    )
    return pods if done else None


def names(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


def replaced(
    pods: list[dict[str, Any]] | None, before: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    return pods if pods is not None and not names(pods) & names(before) else None


def test_a_rollout_and_a_scale_down_lose_no_request(product: Product) -> None:
    product.cluster.apply(guide(product, REPLICAS, "100m"))
    product.wait_serving(GUIDE, timeout=600)
    before = wait_until(lambda: settled(product, REPLICAS), 300, f"{REPLICAS} Ready pods")
    template = product.cluster.get("deployment", GUIDE, product.namespace) or {}
    prestop = template["spec"]["template"]["spec"]["containers"][0].get("lifecycle")
    print(f"serving pods {sorted(names(before))}; preStop {prestop}")

    shoppers = Shoppers(product.service_url(GUIDE))
    shoppers.start(per_request=3, kept_alive=3)
    try:
        time.sleep(5)
        # A change to the pod template: the Deployment replaces every pod, one at a time.
        product.cluster.apply(guide(product, REPLICAS, "110m"))
        rolled = wait_until(
            lambda: replaced(settled(product, REPLICAS), before),
            420, "every serving pod replaced", interval=2,
        )  # fmt: skip
        time.sleep(5)
        product.cluster.apply(guide(product, REPLICAS - 1, "110m"))
        after = wait_until(
            lambda: settled(product, REPLICAS - 1), 180, "one pod scaled away", interval=2
        )
        time.sleep(5)
    finally:
        counts = shoppers.join()
    print(f"requests {counts}; pods after the rollout {sorted(names(rolled))}")
    print("\n".join(shoppers.failures[:40]))
    assert names(after) < names(rolled)
    ok = sum(v for k, v in counts.items() if k.endswith(":ok"))
    assert counts.get("kept-alive:ok", 0) > 100 and counts.get("per-request:ok", 0) > 100, counts
    assert ok > 500, counts
    assert not shoppers.failures, f"{len(shoppers.failures)} failed requests: {counts}"
