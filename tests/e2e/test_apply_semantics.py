"""The apply layer against a real API server: what server-side apply removes, keeps and
refuses, which no in-memory fake can prove."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from shopping_guide_operator.kube import ApiCluster, ConflictError, NotOwnedError, create_owned
from tests.e2e.conftest import Kube

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"


@pytest.fixture
def api(kube: Kube) -> Iterator[ApiCluster]:
    client_ = client.ApiClient(kube.api.configuration)
    yield ApiCluster(client_)
    client_.close()  # type: ignore[no-untyped-call]


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


@pytest.fixture
def guide(kube: Kube, namespace: str) -> str:
    crd = kube.kubectl("get", "crd", "shoppingguides.shoppingguide.io", check=False)
    if crd.returncode != 0:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/shoppingguides.shoppingguide.io",
    )
    from tests.unit.operator.conftest import BASE

    body = copy.deepcopy(BASE)
    body["metadata"] = {"name": "storefront", "namespace": namespace}
    kube.kubectl("create", "-f", "-", stdin=yaml.safe_dump(body))
    return "storefront"


def test_a_status_patch_from_a_stale_read_is_refused(
    namespace: str, guide: str, api: ApiCluster
) -> None:
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
    namespace: str, owner: dict[str, Any], api: ApiCluster
) -> None:
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
