"""Bad ShoppingGuides are refused at `kubectl apply`, each with a message that says what to fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import Kube

pytestmark = pytest.mark.e2e

CRD = REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"
VALID: dict[str, Any] = {
    "apiVersion": "shoppingguide.io/v1alpha1",
    "kind": "ShoppingGuide",
    "metadata": {"name": "storefront"},
    "spec": {
        "image": "registry.example.com/shopping-guide/recommender:0.1.0",
        "data": {
            "interactions": {
                "persistentVolumeClaim": {"claimName": "events"},
                "path": "exports/interactions.csv",
                "columns": {"event": "event"},
            },
            "eventWeights": {"view": 1, "purchase": 10},
        },
        "modelStore": {"persistentVolumeClaim": {"claimName": "models"}},
        "model": {"algorithm": "als", "factors": 64, "alpha": 2.0},
        "training": {"schedule": "0 */6 * * *", "qualityGate": {"metric": "ndcg@10"}},
        "serving": {
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 10,
                "targetCPUUtilizationPercentage": 70,
            }
        },
        "rollout": {"steps": [{"weight": 5, "pause": "10m"}, {"weight": 50, "pause": "10m"}]},
    },
}

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return mutate


# (what is wrong, how, a piece of the message the user must see)
INVALID: list[tuple[str, Mutation, str]] = [
    ("no image", _set("spec.image", None), "spec.image: Required value"),
    (
        "minReplicas above maxReplicas",
        _set("spec.serving.autoscaling.minReplicas", 20),
        "minReplicas must not exceed maxReplicas",
    ),
    (
        "autoscaling without a target",
        _set("spec.serving.autoscaling.targetCPUUtilizationPercentage", None),
        "needs targetCPUUtilizationPercentage",
    ),
    (
        "falling rollout weights",
        _set("spec.rollout.steps", [{"weight": 50}, {"weight": 5}]),
        "weights must rise from step to step",
    ),
    (
        "repeated rollout weight",
        _set("spec.rollout.steps", [{"weight": 5}, {"weight": 5}]),
        "weights must rise from step to step",
    ),
    (
        "rollout weight above 100",
        _set("spec.rollout.steps", [{"weight": 150}]),
        "should be less than or equal to 100",
    ),
    (
        "a bad pause",
        _set("spec.rollout.steps", [{"weight": 5, "pause": "ten minutes"}]),
        "spec.rollout.steps[0].pause",
    ),
    (
        "alpha with itemknn",
        _set("spec.model", {"algorithm": "itemknn", "alpha": 2.0}),
        "model.alpha applies to the als algorithm only",
    ),
    (
        "factors with itemknn",
        _set("spec.model", {"algorithm": "itemknn", "factors": 8}),
        "apply to als and bpr, not itemknn",
    ),
    (
        "neighbours with als",
        _set("spec.model", {"algorithm": "als", "neighbours": 8}),
        "apply to the itemknn algorithm only",
    ),
    ("unknown algorithm", _set("spec.model", {"algorithm": "svd"}), 'supported values: "als"'),
    (
        "a cron schedule of four fields",
        _set("spec.training.schedule", "0 */6 * *"),
        "must be a cron schedule of five fields",
    ),
    (
        "event weights without an event column",
        _set("spec.data.interactions.columns", {"user": "u"}),
        "needs data.interactions.columns.event",
    ),
    (
        "a negative event weight",
        _set("spec.data.eventWeights", {"view": -1}),
        "should be greater than 0",
    ),
    (
        "an absolute events path",
        _set("spec.data.interactions.path", "/etc/passwd"),
        "must be relative to the claim's root",
    ),
    (
        "an events path that climbs out",
        _set("spec.data.interactions.path", "a/../../x.csv"),
        "must be relative to the claim's root",
    ),
    (
        "gate metric at another k",
        _set("spec.training.qualityGate.metric", "ndcg@20"),
        "must be measured at training.evaluation.k",
    ),
    (
        "an unknown gate metric",
        _set("spec.training.qualityGate.metric", "auc"),
        "must be precision@K, recall@K, ndcg@K, map@K or coverage",
    ),
    (
        "a time split without a time column",
        _set("spec.training.evaluation", {"split": "time"}),
        "split 'time' needs data.interactions.columns.time",
    ),
    (
        "both PDB fields",
        _set("spec.serving.podDisruptionBudget", {"minAvailable": 1, "maxUnavailable": 1}),
        "not both",
    ),
    (
        "a PDB of 'half'",
        _set("spec.serving.podDisruptionBudget", {"maxUnavailable": "half"}),
        "a number of pods or a percentage",
    ),
    ("keep 0 versions", _set("spec.modelStore.keep", 0), "should be greater than or equal to 1"),
    ("a name starting with a digit", _set("metadata.name", "1shop"), "must start with a letter"),
    ("a name too long for its children", _set("metadata.name", "a" * 41), "at most 40 characters"),
    (
        "a toleration with Exists and a value",
        _set("spec.serving.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
        "operator Exists must not set a value",
    ),
    (
        "a Prometheus address that is no URL",
        _set("spec.rollout.analysis", {"prometheus": {"address": "prometheus:9090"}}),
        "must be an http:// or https:// URL",
    ),
]


@pytest.fixture(scope="module")
def crd(kube: Kube) -> Kube:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/shoppingguides.shoppingguide.io",
    )
    return kube


def apply(kube: Kube, namespace: str, body: dict[str, Any], *flags: str) -> Any:
    return kube.kubectl(
        "apply", "-n", namespace, *flags, "-f", "-", stdin=yaml.safe_dump(body), check=False
    )


def test_the_valid_manifest_and_the_example_are_accepted(crd: Kube, namespace: str) -> None:
    assert apply(crd, namespace, VALID, "--dry-run=server").returncode == 0
    example = yaml.safe_load((REPO / "examples" / "storefront.yaml").read_text())
    example["metadata"]["namespace"] = namespace
    out = apply(crd, namespace, example, "--dry-run=server")
    assert out.returncode == 0, out.stderr


def test_defaults_are_filled_in(crd: Kube, namespace: str) -> None:
    out = apply(crd, namespace, VALID, "--dry-run=server", "-o", "json")
    assert out.returncode == 0, out.stderr
    spec = yaml.safe_load(out.stdout)["spec"]
    assert spec["modelStore"]["keep"] == 5
    assert spec["training"]["qualityGate"] == {
        "metric": "ndcg@10",
        "minimum": 0,
        "maxRegression": 0.02,
    }
    assert spec["training"]["evaluation"]["k"] == 10
    assert spec["serving"]["replicas"] == 2
    assert spec["serving"]["podDisruptionBudget"] == {"enabled": True}
    assert spec["data"]["interactions"]["columns"]["user"] == "user_id"


@pytest.mark.parametrize(("case", "mutate", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected(
    crd: Kube, namespace: str, case: str, mutate: Mutation, message: str
) -> None:
    body = copy.deepcopy(VALID)
    mutate(body)
    out = apply(crd, namespace, body, "--dry-run=server")
    assert out.returncode != 0, f"{case} was accepted"
    assert message in out.stderr, out.stderr


def test_the_model_store_claim_cannot_change(crd: Kube, namespace: str) -> None:
    assert apply(crd, namespace, VALID).returncode == 0
    moved = copy.deepcopy(VALID)
    moved["spec"]["modelStore"]["persistentVolumeClaim"]["claimName"] = "elsewhere"
    out = apply(crd, namespace, moved)
    assert out.returncode != 0
    assert "claimName cannot change: the stable model lives on that claim" in out.stderr
    crd.kubectl("delete", "sg", "storefront", "-n", namespace, "--wait=false")
