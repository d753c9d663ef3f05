"""The attribution key: one Secret per guide, made once with a random key, owned by the guide
and mounted into every serving pod; a deleted Secret is made anew (that is the rotation)."""

from __future__ import annotations

import base64
import copy

import pytest

from shopping_guide_operator.builders.attribution import (
    attribution_key_path,
    build_attribution_secret,
)
from shopping_guide_operator.builders.deployment import build_deployment
from shopping_guide_operator.spec import Guide

from .conftest import BASE
from .fake_cluster import FakeCluster
from .test_reconcile import NAME, NS, T0, _promote_v1, run

SECRET = f"{NAME}-attribution"


@pytest.fixture
def world() -> FakeCluster:
    cluster = FakeCluster()
    cluster.put(copy.deepcopy(BASE))
    return cluster


def key_of(world: FakeCluster) -> bytes:
    secret = world.get("Secret", NS, SECRET)
    assert secret is not None
    return base64.b64decode(secret["data"]["key"])


def test_serving_gets_one_random_key_that_is_kept(world: FakeCluster) -> None:
    run(world)
    assert world.get("Secret", NS, SECRET) is None  # nothing serves yet
    _promote_v1(world)
    key = key_of(world)
    assert len(key) >= 32
    secret = world.get("Secret", NS, SECRET)
    assert secret is not None
    guide = world.get("ShoppingGuide", NS, NAME)
    assert guide is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == guide["metadata"]["uid"]
    before = world.writes
    run(world, T0 + 90)
    assert key_of(world) == key and world.writes == before  # never rewritten
    world.delete("Secret", NS, SECRET)
    run(world, T0 + 100)
    assert key_of(world) != key  # deleting the Secret rotates the key


def test_someone_elses_secret_of_that_name_is_left_alone_and_reported(world: FakeCluster) -> None:
    guide = Guide.parse(world.get("ShoppingGuide", NS, NAME) or {})
    foreign = build_attribution_secret(guide, "x" * 43)
    foreign["metadata"]["ownerReferences"] = []
    world.create(foreign)
    _promote_v1(world)
    assert key_of(world) == b"x" * 43
    status = (world.get("ShoppingGuide", NS, NAME) or {})["status"]
    assert f"Secret {SECRET} already exists" in status["message"]


def test_the_serving_pods_mount_the_key_and_are_told_where(world: FakeCluster) -> None:
    guide = Guide.parse(world.get("ShoppingGuide", NS, NAME) or {})
    pod = build_deployment(guide)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--attribution-key-file") + 1] == attribution_key_path()
    (volume,) = [v for v in pod["volumes"] if v["name"] == "attribution"]
    assert volume["secret"] == {"secretName": SECRET}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "attribution"]
    assert mount["readOnly"] is True
    assert attribution_key_path().startswith(mount["mountPath"] + "/")
