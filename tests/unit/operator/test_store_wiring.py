"""Pods of a guide whose models (and events) live in object storage: the recommender's own
argument parser takes what the builders pass, credentials come from the Secret, the CA
bundle from its ConfigMap, and serving pods get a cache instead of a claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from shopping_guide.cli import build_parser
from shopping_guide_operator.builders.deployment import build_deployment
from shopping_guide_operator.builders.erasure import build_erasure_job
from shopping_guide_operator.builders.training import build_job
from shopping_guide_operator.erasure import Request
from shopping_guide_operator.spec import Guide, SpecError

MakeGuide = Callable[..., Guide]
S3 = {
    "bucket": "shop-models",
    "prefix": "prod",
    "endpoint": "https://s3.storage.svc:7070",
    "region": "eu-west-1",
    "credentialsSecret": {"name": "s3-keys", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
    "caBundle": {"configMapName": "s3-ca", "key": "bundle.pem"},
    "cacheSizeLimit": "8Gi",
}
SPEC: dict[str, Any] = {
    "modelStore": {"persistentVolumeClaim": None, "s3": S3},
    "data": {
        "interactions": {
            "persistentVolumeClaim": None,
            "path": None,
            "s3": {
                "bucket": "shop-events",
                "key": "exports/events.csv.xz",
                "credentialsSecret": {"name": "event-keys"},
            },
        }
    },
}


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return dict(only)


def secret_env(c: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_the_trainer_reads_events_and_writes_models_in_object_storage(
    make_guide: MakeGuide,
) -> None:
    guide = make_guide(SPEC)
    pod = build_job(guide, "abcdef12", 1, "manual", None)["spec"]["template"]
    c = container(pod)
    args = build_parser().parse_args(c["args"])
    assert args.model_store == "s3://shop-models/prod"
    assert args.s3_endpoint == "https://s3.storage.svc:7070" and args.s3_region == "eu-west-1"
    assert str(args.s3_ca_file) == "/etc/shopping-guide/s3-ca/bundle.pem"
    assert args.events == "s3://shop-events/exports/events.csv.xz"
    assert args.events_s3_endpoint is None and args.events_s3_ca_file is None
    assert secret_env(c) == {
        "AWS_ACCESS_KEY_ID": ("s3-keys", "id"),
        "AWS_SECRET_ACCESS_KEY": ("s3-keys", "key"),
        "EVENTS_AWS_ACCESS_KEY_ID": ("event-keys", "AWS_ACCESS_KEY_ID"),
        "EVENTS_AWS_SECRET_ACCESS_KEY": ("event-keys", "AWS_SECRET_ACCESS_KEY"),
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    assert volumes["s3-ca"] == {"name": "s3-ca", "configMap": {"name": "s3-ca"}}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["s3-ca"] == "/etc/shopping-guide/s3-ca"


def test_serving_pods_download_into_a_cache_of_the_set_size(make_guide: MakeGuide) -> None:
    pod = build_deployment(make_guide(SPEC))["spec"]["template"]
    c = container(pod)
    args = build_parser().parse_args(c["args"])
    assert args.model_store == "s3://shop-models/prod"
    assert str(args.model_cache) == "/var/cache/shopping-guide"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model-cache"]["emptyDir"] == {"sizeLimit": "8Gi"}
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    assert secret_env(c)["AWS_SECRET_ACCESS_KEY"] == ("s3-keys", "key")
    # The guide's own name for its metrics stays in the env beside the credentials.
    assert any(e["name"] == "SHOPPING_GUIDE_NAME" for e in c["env"])


def test_erasure_rewrites_the_bucket(make_guide: MakeGuide) -> None:
    job = build_erasure_job(
        make_guide(SPEC), Request("forget-1", "uid-9", "2026-12-01T00:00:00Z", ("a" * 64,))
    )
    c = container(job["spec"]["template"])
    args = build_parser().parse_args(c["args"])
    assert args.model_store == "s3://shop-models/prod" and args.user_sha256 == ["a" * 64]
    assert set(secret_env(c)) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_a_claim_store_builds_what_it_built_before(make_guide: MakeGuide) -> None:
    pod = build_deployment(make_guide())["spec"]["template"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert "model-cache" not in volumes
    assert "--model-cache" not in container(pod)["args"]


def test_exactly_one_store_is_a_spec_error_otherwise(make_guide: MakeGuide) -> None:
    with pytest.raises(SpecError, match="exactly one of persistentVolumeClaim and s3"):
        make_guide({"modelStore": {"s3": S3}})
    with pytest.raises(SpecError, match=r"credentialsSecret\.name is required"):
        make_guide({"modelStore": {"persistentVolumeClaim": None, "s3": {"bucket": "b"}}})
