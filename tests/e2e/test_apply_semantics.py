"""The apply layer against a real API server: what server-side apply removes, keeps and
refuses, which no in-memory fake can prove."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from shopping_guide_operator.constants import FIELD_MANAGER
from shopping_guide_operator.kube import ApiCluster, ensure
from tests.e2e.conftest import FAKE_NODE_TOLERATION, ON_FAKE_NODES, Kube

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"
IMAGE = "registry.invalid/shopping-guide/recommender"


class Counted:
    """The requests an ApiCluster sends, by method: counted around the client, not in it."""

    def __init__(self, api: client.ApiClient) -> None:
        self.methods: Counter[str] = Counter()
        original = api.call_api

        def call_api(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.methods[method] += 1
            return original(method, url, *args, **kwargs)

        api.call_api = call_api  # type: ignore[method-assign]

    def writes(self) -> int:
        return sum(n for method, n in self.methods.items() if method != "GET")


@pytest.fixture
def cluster(kube: Kube) -> Iterator[tuple[ApiCluster, Counted]]:
    api = client.ApiClient(kube.api.configuration)
    counted = Counted(api)
    yield ApiCluster(api), counted
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def owner(kube: Kube, namespace: str) -> dict[str, Any]:
    """A real object to own the children (a missing owner would have them collected)."""
    made = json.loads(
        kube.kubectl("create", "configmap", "owner", "-n", namespace, "-o", "json").stdout
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": made["metadata"]["uid"],
        "controller": True,
    }


def deployment(namespace: str, owner: dict[str, Any], **pod: Any) -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "recommender", "image": f"{IMAGE}:1"}], **pod},
            },
        },
    }


def live(kube: Kube, namespace: str) -> dict[str, Any]:
    out = kube.kubectl(
        "get", "deployment", "web", "-n", namespace, "-o", "json", "--show-managed-fields"
    ).stdout
    found: dict[str, Any] = json.loads(out)
    return found


def test_a_field_removed_from_the_desired_object_leaves_the_live_one(
    kube: Kube, namespace: str, owner: dict[str, Any], cluster: tuple[ApiCluster, Counted]
) -> None:
    api, counted = cluster
    placed = deployment(namespace, owner, **copy.deepcopy(ON_FAKE_NODES))
    _, wrote = ensure(api, placed, owner["uid"])
    assert wrote
    pod = live(kube, namespace)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == ON_FAKE_NODES["nodeSelector"]
    assert FAKE_NODE_TOLERATION in pod["tolerations"]

    plain = deployment(namespace, owner)
    _, wrote = ensure(api, plain, owner["uid"])
    assert wrote
    pod = live(kube, namespace)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod

    # Converged: the same desired object again costs one read and no write. (The
    # resourceVersion moves on regardless: the Deployment controller writes status.)
    before = live(kube, namespace)["metadata"]["generation"]
    counted.methods.clear()
    _, wrote = ensure(api, plain, owner["uid"])
    assert not wrote
    assert counted.writes() == 0, counted.methods
    assert counted.methods == Counter({"GET": 1})
    assert live(kube, namespace)["metadata"]["generation"] == before


def test_a_field_someone_else_changed_is_corrected(
    kube: Kube, namespace: str, owner: dict[str, Any], cluster: tuple[ApiCluster, Counted]
) -> None:
    api, _ = cluster
    desired = deployment(namespace, owner)
    ensure(api, desired, owner["uid"])
    kube.kubectl(
        "patch",
        "deployment",
        "web",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{"name": "recommender", "image": f"{IMAGE}:edited"}]
                        }
                    }
                }
            }
        ),
    )
    _, wrote = ensure(api, desired, owner["uid"])
    assert wrote
    (container,) = live(kube, namespace)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{IMAGE}:1"


def test_autoscaling_takes_replicas_over_without_changing_them(
    kube: Kube, namespace: str, owner: dict[str, Any], cluster: tuple[ApiCluster, Counted]
) -> None:
    api, _ = cluster
    ensure(api, deployment(namespace, owner, **copy.deepcopy(ON_FAKE_NODES)), owner["uid"])
    assert live(kube, namespace)["spec"]["replicas"] == 3

    autoscaled = deployment(namespace, owner, **copy.deepcopy(ON_FAKE_NODES))
    del autoscaled["spec"]["replicas"]
    autoscaled["spec"]["template"]["spec"]["containers"][0]["image"] = f"{IMAGE}:2"
    ensure(api, autoscaled, owner["uid"])
    after = live(kube, namespace)
    assert after["spec"]["replicas"] == 3
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:2"
    ours = [
        entry
        for entry in after["metadata"]["managedFields"]
        if entry["manager"] == FIELD_MANAGER and entry["operation"] == "Apply"
    ]
    assert ours
    assert "f:replicas" not in ours[0]["fieldsV1"]["f:spec"]

    # The next change with replicas left to the HPA keeps them too.
    autoscaled["spec"]["template"]["spec"]["containers"][0]["image"] = f"{IMAGE}:3"
    ensure(api, autoscaled, owner["uid"])
    assert live(kube, namespace)["spec"]["replicas"] == 3


@pytest.fixture
def guide(kube: Kube, namespace: str) -> str:
    crd = kube.kubectl("get", "crd", "shoppingguides.shoppingguide.io", check=False)
    if crd.returncode != 0:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.wait_established("shoppingguides.shoppingguide.io")
    from tests.unit.operator.conftest import BASE

    body = copy.deepcopy(BASE)
    body["metadata"] = {"name": "storefront", "namespace": namespace}
    kube.kubectl("create", "-f", "-", stdin=yaml.safe_dump(body))
    return "storefront"


def test_a_status_patch_from_a_stale_read_is_refused(
    namespace: str, guide: str, cluster: tuple[ApiCluster, Counted]
) -> None:
    from shopping_guide_operator.kube import ConflictError

    api, _ = cluster
    read = api.get("ShoppingGuide", namespace, guide)
    assert read is not None
    version = read["metadata"]["resourceVersion"]
    written = api.patch_status(namespace, guide, {"status": {"phase": "Ready"}}, version)
    assert written["status"]["phase"] == "Ready"
    with pytest.raises(ConflictError) as refused:
        api.patch_status(namespace, guide, {"status": {"phase": "Training"}}, version)
    assert refused.value.status == 409
    now = api.get("ShoppingGuide", namespace, guide)
    assert now is not None
    assert now["status"]["phase"] == "Ready"
    # With the version just read it goes through.
    current = now["metadata"]["resourceVersion"]
    api.patch_status(namespace, guide, {"status": {"phase": "Training"}}, current)


def test_create_owned_finds_its_own_object(
    namespace: str, owner: dict[str, Any], cluster: tuple[ApiCluster, Counted]
) -> None:
    from shopping_guide_operator.kube import ConflictError, NotOwnedError, create_owned

    api, _ = cluster
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "run-1", "namespace": namespace, "ownerReferences": [owner]},
        "data": {"a": "1"},
    }
    first = create_owned(api, config_map, owner["uid"])
    with pytest.raises(ConflictError):
        api.create(config_map)
    again = create_owned(api, config_map, owner["uid"])
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    with pytest.raises(NotOwnedError):
        create_owned(api, config_map, "someone-else")
