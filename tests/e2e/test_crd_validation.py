"""Bad ShoppingGuides are refused at `kubectl apply`, each with a message that says what to fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopping_guide_operator.spec import Guide
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


def _all(*mutations: Mutation) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(body)

    return mutate


# (what is wrong, how, a piece of the message the user must see)
S3_STORE: dict[str, Any] = {
    "bucket": "shop-models",
    "endpoint": "http://s3.storage.svc:7070",
    "credentialsSecret": {"name": "s3-keys"},
}


def _s3_store(**changes: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["spec"]["modelStore"] = {"s3": {**copy.deepcopy(S3_STORE), **changes}}
        for key in [k for k, v in changes.items() if v is None]:
            del body["spec"]["modelStore"]["s3"][key]

    return mutate


def _s3_events(**changes: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        interactions = body["spec"]["data"]["interactions"]
        del interactions["persistentVolumeClaim"], interactions["path"]
        interactions["s3"] = {**copy.deepcopy(S3_STORE), "key": "events/log.csv.xz"}
        # Anything else lands beside s3, e.g. a claim's `path`.
        interactions.update(changes)

    return mutate


INVALID: list[tuple[str, Mutation, str]] = [
    (
        "both kinds of model store",
        _set("spec.modelStore.s3", S3_STORE),
        "modelStore needs exactly one of persistentVolumeClaim and s3",
    ),
    (
        "no model store",
        _set("spec.modelStore", {"keep": 3}),
        "modelStore needs exactly one of persistentVolumeClaim and s3",
    ),
    (
        "an s3 store without credentials",
        _s3_store(credentialsSecret=None),
        "spec.modelStore.s3.credentialsSecret: Required value",
    ),
    (
        "an s3 store with a path for an endpoint",
        _s3_store(endpoint="http://s3.storage.svc:7070/models"),
        "spec.modelStore.s3.endpoint in body should match",
    ),
    (
        "an s3 prefix that climbs",
        _s3_store(prefix="models/../other"),
        "prefix must not start with '/' or contain '..'",
    ),
    (
        "a bucket name S3 refuses",
        _s3_store(bucket="Shop_Models"),
        "spec.modelStore.s3.bucket in body should match",
    ),
    (
        "events on a claim and in s3",
        _set("spec.data.interactions.s3", {**S3_STORE, "key": "events.csv"}),
        "data.interactions needs exactly one of persistentVolumeClaim (with path) and s3",
    ),
    (
        "s3 events with a claim's path",
        _s3_events(path="e.csv"),
        "an s3 events file is named by s3.key",
    ),
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
        "model.neighbours applies to the itemknn and ease algorithms only",
    ),
    (
        "k1 with ease",
        _set("spec.model", {"algorithm": "ease", "k1": 1.2}),
        "model.similarity, k1 and b apply to the itemknn algorithm only",
    ),
    (
        "factors with ease",
        _set("spec.model", {"algorithm": "ease", "factors": 8}),
        "apply to als and bpr, not ease",
    ),
    (
        "parameters with auto",
        _set("spec.model", {"algorithm": "auto", "regularization": 1.0}),
        "model.algorithm auto tunes every family",
    ),
    (
        "binary with als",
        _set("spec.model", {"algorithm": "als", "binary": False}),
        "model.binary applies to the ease algorithm only",
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
    # Names that become object names or references to them (DNS-1123 subdomains).
    (
        "an events claim name with capitals",
        _set("spec.data.interactions.persistentVolumeClaim.claimName", "Events"),
        "spec.data.interactions.persistentVolumeClaim.claimName in body should match",
    ),
    (
        "a model store claim name with a slash",
        _set("spec.modelStore.persistentVolumeClaim.claimName", "models/a"),
        "spec.modelStore.persistentVolumeClaim.claimName in body should match",
    ),
    (
        "a model store claim name too long",
        _set("spec.modelStore.persistentVolumeClaim.claimName", "m" * 254),
        "spec.modelStore.persistentVolumeClaim.claimName: Too long",
    ),
    (
        "an image pull secret with an underscore",
        _set("spec.imagePullSecrets", [{"name": "pull_secret"}]),
        "spec.imagePullSecrets[0].name in body should match",
    ),
    # Image references.
    (
        "an image with a space",
        _set("spec.image", "registry.example.com/a b:1"),
        "spec.image in body should match",
    ),
    (
        "an image with capitals in its path",
        _set("spec.image", "registry.example.com/Shop/rec:1"),
        "spec.image in body should match",
    ),
    (
        "an image with an empty tag",
        _set("spec.image", "registry.example.com/rec:"),
        "spec.image in body should match",
    ),
    (
        "an image with a short digest",
        _set("spec.image", "rec@sha256:abc"),
        "spec.image in body should match",
    ),
    (
        "an image given as a URL",
        _set("spec.image", "https://registry.example.com/rec:1"),
        "spec.image in body should match",
    ),
    # Cron schedules: five fields, each within its range.
    (
        "a minute of 60",
        _set("spec.training.schedule", "60 * * * *"),
        "spec.training.schedule: Invalid value",
    ),
    (
        "an hour of 24",
        _set("spec.training.schedule", "0 24 * * *"),
        "must be a cron schedule of five fields",
    ),
    (
        "a day of month 0",
        _set("spec.training.schedule", "0 0 0 * *"),
        "must be a cron schedule of five fields",
    ),
    (
        "a month of 13",
        _set("spec.training.schedule", "0 0 1 13 *"),
        "must be a cron schedule of five fields",
    ),
    (
        "a day of week 8",
        _set("spec.training.schedule", "0 0 * * 8"),
        "must be a cron schedule of five fields",
    ),
    (
        "a cron schedule of six fields",
        _set("spec.training.schedule", "0 0 * * * *"),
        "must be a cron schedule of five fields",
    ),
    (
        "a step of zero",
        _set("spec.training.schedule", "*/0 * * * *"),
        "must be a cron schedule of five fields",
    ),
    (
        "a cron schedule of words",
        _set("spec.training.schedule", "every day"),
        "must be a cron schedule of five fields",
    ),
    (
        "an unknown macro",
        _set("spec.training.schedule", "@fortnightly"),
        "must be a cron schedule of five fields",
    ),
    # Time zones.
    (
        "a time zone that climbs out",
        _set("spec.training.timeZone", "../../etc/passwd"),
        "spec.training.timeZone in body should match",
    ),
    (
        "a time zone with a space",
        _set("spec.training.timeZone", "Europe/Ber lin"),
        "spec.training.timeZone in body should match",
    ),
    # Quantities.
    (
        "a negative memory request",
        _set("spec.serving.resources", {"requests": {"memory": "-1Gi"}}),
        "spec.serving.resources.requests.memory in body should match",
    ),
    (
        "a cpu of 'two'",
        _set("spec.training.resources", {"requests": {"cpu": "two"}}),
        "spec.training.resources.requests.cpu in body should match",
    ),
    (
        "a memory unit of GB",
        _set("spec.training.resources", {"limits": {"memory": "4GB"}}),
        "spec.training.resources.limits.memory in body should match",
    ),
    (
        "a limit below its request",
        _set(
            "spec.serving.resources", {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}
        ),
        "resources.limits must not be below resources.requests",
    ),
    (
        "a resource name that is no resource",
        _set("spec.serving.resources", {"requests": {"gpus": "1"}}),
        "resource names are cpu, memory, ephemeral-storage",
    ),
    (
        "a custom metric target that is no quantity",
        _set("spec.serving.autoscaling.metric", {"name": "rps", "averageValue": "lots"}),
        "spec.serving.autoscaling.metric.averageValue in body should match",
    ),
    # Durations, in the units the operator reads.
    (
        "a retry delay in days",
        _set("spec.training.retry", {"initialDelay": "1d"}),
        "spec.training.retry.initialDelay in body should match",
    ),
    (
        "a negative max delay",
        _set("spec.training.retry", {"maxDelay": "-5m"}),
        "spec.training.retry.maxDelay in body should match",
    ),
    (
        "an analysis interval without a unit",
        _set("spec.rollout.analysis", {"interval": "60"}),
        "spec.rollout.analysis.interval in body should match",
    ),
    (
        "a progress deadline in words",
        _set("spec.rollout.progressDeadline", "an hour"),
        "spec.rollout.progressDeadline in body should match",
    ),
    # Version names.
    (
        "a pinned version that climbs out",
        _set("spec.model.pinnedVersion", ".."),
        "spec.model.pinnedVersion in body should match",
    ),
    (
        "a pinned version with '..' inside",
        _set("spec.model.pinnedVersion", "v1..v2"),
        "model.pinnedVersion must be a model version name",
    ),
    (
        "a pinned version with a slash",
        _set("spec.model.pinnedVersion", "models/v1"),
        "spec.model.pinnedVersion in body should match",
    ),
    (
        "a pinned version with capitals",
        _set("spec.model.pinnedVersion", "V1"),
        "spec.model.pinnedVersion in body should match",
    ),
    # URLs.
    (
        "a Prometheus address with a query",
        _set("spec.rollout.analysis", {"prometheus": {"address": "http://prometheus:9090/?x=1"}}),
        "http(s)://host[:port][/path]",
    ),
    (
        "a Prometheus address with credentials",
        _set("spec.rollout.analysis", {"prometheus": {"address": "http://u:p@prometheus:9090"}}),
        "rollout.analysis.prometheus.address must be an http:// or https:// URL",
    ),
    (
        "a Prometheus address with port 99999",
        _set("spec.rollout.analysis", {"prometheus": {"address": "http://prometheus:99999"}}),
        "rollout.analysis.prometheus.address must be an http:// or https:// URL",
    ),
    (
        "a Prometheus address of another scheme",
        _set("spec.rollout.analysis", {"prometheus": {"address": "ftp://prometheus"}}),
        "rollout.analysis.prometheus.address must be an http:// or https:// URL",
    ),
    (
        "a Prometheus selector key that is no label name",
        _set(
            "spec.rollout.analysis",
            {"prometheus": {"address": "http://p:9090", "selector": {"app-name": "x"}}},
        ),
        "selector keys must be Prometheus label names",
    ),
    # Ports.
    (
        "a serving port below 1024",
        _set("spec.serving.port", 80),
        "spec.serving.port: Invalid value",
    ),
    (
        "a metrics port above 65535",
        _set("spec.serving.metricsPort", 70000),
        "spec.serving.metricsPort: Invalid value",
    ),
    (
        "metrics on the serving port",
        _set("spec.serving.metricsPort", 8080),
        "serving.port and serving.metricsPort must differ",
    ),
    (
        "a service port of 0",
        _set("spec.serving.service", {"port": 0}),
        "spec.serving.service.port: Invalid value",
    ),
    # Percentages and counts.
    (
        "a CPU target of 150%",
        _set("spec.serving.autoscaling.targetCPUUtilizationPercentage", 150),
        "spec.serving.autoscaling.targetCPUUtilizationPercentage: Invalid value",
    ),
    (
        "a PDB of 150%",
        _set("spec.serving.podDisruptionBudget", {"maxUnavailable": "150%"}),
        "percentage from 0% to 100%",
    ),
    (
        "a rollout weight of 0",
        _set("spec.rollout.steps", [{"weight": 0}]),
        "spec.rollout.steps[0].weight: Invalid value",
    ),
    (
        "maxReplicas 0",
        _set("spec.serving.autoscaling.maxReplicas", 0),
        "spec.serving.autoscaling.maxReplicas: Invalid value",
    ),
    (
        "maxReplicas below the default minReplicas",
        _set("spec.serving.autoscaling", {"maxReplicas": 1, "targetCPUUtilizationPercentage": 50}),
        "minReplicas must not exceed maxReplicas",
    ),
    # Merchandiser rules, exploration and trending.
    (
        "a pin without its item",
        _set("spec.serving.rules", [{"type": "pin", "position": 1}]),
        "a pin rule needs item and position",
    ),
    (
        "a boost without a match",
        _set("spec.serving.rules", [{"type": "boost", "positions": 2}]),
        "boost, bury and promote rules need match.categories, match.items or match.attributes",
    ),
    (
        "a boost on an attribute with no values",
        _set(
            "spec.serving.rules",
            [{"type": "boost", "positions": 2, "match": {"attributes": {"colour": []}}}],
        ),
        "spec.serving.rules[0].match.attributes.colour",
    ),
    (
        "an attribute value that is not a list",
        _set(
            "spec.serving.rules",
            [{"type": "bury", "match": {"attributes": {"colour": "red"}}}],
        ),
        "spec.serving.rules[0].match.attributes.colour",
    ),
    (
        "a trending refresh without a time column",
        _set("spec.serving.trending", {"refreshEvery": "1h"}),
        "serving.trending.refreshEvery needs data.interactions.columns.time",
    ),
    (
        "a trending refresh every minute",
        _set("spec.serving.trending", {"refreshEvery": "1m"}),
        "serving.trending.refreshEvery must be at least 5m",
    ),
    (
        "a trending refresh period without a unit",
        _set("spec.serving.trending", {"refreshEvery": "90"}),
        "spec.serving.trending.refreshEvery",
    ),
    (
        "a promotion without its share",
        _set("spec.serving.rules", [{"type": "promote", "match": {"categories": ["mugs"]}}]),
        "a promote rule needs share",
    ),
    (
        "an unknown rule",
        _set("spec.serving.rules", [{"type": "shuffle"}]),
        "spec.serving.rules[0].type: Unsupported value",
    ),
    (
        "a rule that ends before it starts",
        _set(
            "spec.serving.rules",
            [
                {
                    "type": "hideOutOfStock",
                    "from": "2026-12-01T00:00:00Z",
                    "until": "2026-11-01T00:00:00Z",
                }
            ],
        ),
        "a rule's until must be after its from",
    ),
    (
        "a rule window that is no time",
        _set("spec.serving.rules", [{"type": "hideOutOfStock", "from": "tomorrow"}]),
        "spec.serving.rules[0].from",
    ),
    (
        "exploration above half the slots",
        _set("spec.serving.exploration", {"share": 0.8}),
        "spec.serving.exploration.share: Invalid value",
    ),
    (
        "a trending window of no hours",
        _set("spec.serving.trending", {"windowHours": 0}),
        "spec.serving.trending.windowHours: Invalid value",
    ),
    # Label selectors, node selectors and tolerations.
    (
        "a network policy peer with a bad operator",
        _set(
            "spec.serving.networkPolicy",
            {"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}}]},
        ),
        "podSelector.matchExpressions[0].operator: Unsupported value",
    ),
    (
        "a metrics peer without a selector",
        _set("spec.serving.networkPolicy", {"metricsFrom": [{}]}),
        "each serving.networkPolicy.metricsFrom entry needs a podSelector",
    ),
    (
        "a metrics peer CIDR that is no CIDR",
        _set(
            "spec.serving.networkPolicy", {"metricsFrom": [{"ipBlock": {"cidr": "198.18.0.300/8"}}]}
        ),
        "ipBlock.cidr must be a CIDR",
    ),
    (
        "a node selector key with a space",
        _set("spec.serving.nodeSelector", {"node pool": "a"}),
        "nodeSelector keys must be label keys",
    ),
    (
        "a node selector value too long",
        _set("spec.training.nodeSelector", {"pool": "a" * 64}),
        "spec.training.nodeSelector.pool: Too long",
    ),
    (
        "a toleration without key or Exists",
        _set("spec.training.tolerations", [{"operator": "Equal", "value": "x"}]),
        "a toleration without a key must have operator Exists",
    ),
    (
        "tolerationSeconds on NoSchedule",
        _set(
            "spec.serving.tolerations",
            [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}],
        ),
        "tolerationSeconds applies to the NoExecute effect only",
    ),
]


@pytest.fixture(scope="module")
def crd(kube: Kube) -> Kube:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.wait_established("shoppingguides.shoppingguide.io")
    return kube


def apply(kube: Kube, namespace: str, body: dict[str, Any], *flags: str) -> Any:
    return kube.kubectl(
        "apply", "-n", namespace, *flags, "-f", "-", stdin=yaml.safe_dump(body), check=False
    )


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_are_accepted(crd: Kube, namespace: str, path: Path) -> None:
    example = yaml.safe_load(path.read_text())
    example["metadata"]["namespace"] = namespace
    out = apply(crd, namespace, example, "--dry-run=server")
    assert out.returncode == 0, out.stderr


# (what is right, how): edge cases of the rules above that must pass.
VALID_VARIANTS: list[tuple[str, Mutation]] = [
    ("the valid manifest", _set("spec.image", VALID["spec"]["image"])),
    (
        "an image by digest",
        _set("spec.image", "registry.example.com:5000/shop/rec@sha256:" + "a" * 64),
    ),
    (
        "an image on a local registry",
        _set("spec.image", "localhost/shopping-guide/recommender:0.1.0"),
    ),
    ("an image without a registry", _set("spec.image", "recommender")),
    (
        "merchandiser rules, exploration and a trending window",
        _set(
            "spec.serving",
            {
                **VALID["spec"]["serving"],
                "rules": [
                    {
                        "type": "pin",
                        "item": "85123A",
                        "position": 1,
                        "until": "2026-12-24T00:00:00Z",
                    },
                    {"type": "bury", "match": {"categories": ["clearance"]}},
                    {
                        "type": "boost",
                        "positions": 3,
                        "match": {"attributes": {"colour": ["red", "pink"], "brand": ["Acme"]}},
                    },
                    {"type": "promote", "match": {"items": ["22423"]}, "share": 0.2},
                    {"type": "noRepurchase", "repeatableCategories": ["tea"]},
                    {"type": "diversity", "maxPerCategory": 3},
                    {"type": "hideOutOfStock"},
                ],
                "exploration": {"share": 0.1},
                "trending": {"windowHours": 48, "minCount": 5},
            },
        ),
    ),
    (
        "a trending refresh every 30 minutes, from the time column",
        _all(
            _set("spec.data.interactions.columns", {"event": "event", "time": "ts"}),
            _set("spec.serving.trending", {"refreshEvery": "30m"}),
        ),
    ),
    (
        "a cron of lists, ranges and steps",
        _set("spec.training.schedule", "0,30 8-18/2 1-15 JAN-JUN mon-fri"),
    ),
    ("a cron with ? and 7 for Sunday", _set("spec.training.schedule", "15 3 ? * 7")),
    ("a cron macro", _set("spec.training.schedule", "@daily")),
    ("the algorithm chosen by tuning", _set("spec.model", {"algorithm": "auto"})),
    (
        "ease with its parameters",
        _set(
            "spec.model",
            {"algorithm": "ease", "regularization": 50, "neighbours": 50, "binary": True},
        ),
    ),
    ("a time zone", _set("spec.training.timeZone", "America/Argentina/Buenos_Aires")),
    ("UTC", _set("spec.training.timeZone", "UTC")),
    (
        "quantities",
        _set(
            "spec.serving.resources",
            {
                "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1},
                "limits": {"memory": "1.5Gi", "cpu": 2},
            },
        ),
    ),
    ("a pinned version", _set("spec.model.pinnedVersion", "v20261201-115447-a1b2c3")),
    (
        "a Prometheus address with a path",
        _set(
            "spec.rollout.analysis",
            {"prometheus": {"address": "https://prom.monitoring.svc:9090/prometheus"}},
        ),
    ),
    (
        "a Prometheus address by IPv6",
        _set("spec.rollout.analysis", {"prometheus": {"address": "http://[fd00::1]:9090"}}),
    ),
    ("a PDB of 100%", _set("spec.serving.podDisruptionBudget", {"minAvailable": "100%"})),
    (
        "metrics peers",
        _set(
            "spec.serving.networkPolicy",
            {
                "metricsFrom": [
                    {"ipBlock": {"cidr": "198.19.0.1/32"}},
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    },
                ]
            },
        ),
    ),
    ("a toleration of every taint", _set("spec.serving.tolerations", [{"operator": "Exists"}])),
    ("durations", _set("spec.training.retry", {"initialDelay": "1.5s", "maxDelay": "1h30m"})),
    ("models in s3", _s3_store(caBundle={"configMapName": "s3-ca"}, prefix="shop/models")),
    ("models in AWS S3", _s3_store(endpoint=None, region="eu-west-1")),
    ("events in s3", _s3_events()),
]


@pytest.mark.parametrize(("case", "mutate"), VALID_VARIANTS, ids=[c[0] for c in VALID_VARIANTS])
def test_valid_variants_are_accepted(
    crd: Kube, namespace: str, case: str, mutate: Mutation
) -> None:
    body = copy.deepcopy(VALID)
    mutate(body)
    out = apply(crd, namespace, body, "--dry-run=server")
    assert out.returncode == 0, out.stderr


def test_the_spec_hash_ignores_the_defaults_the_api_server_fills_in(
    crd: Kube, namespace: str
) -> None:
    out = apply(crd, namespace, VALID, "--dry-run=server", "-o", "json")
    assert out.returncode == 0, out.stderr
    stored = yaml.safe_load(out.stdout)
    assert stored["spec"] != VALID["spec"]  # defaults were filled in
    assert Guide.parse(stored).model_spec_hash() == Guide.parse(VALID).model_spec_hash()


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


def test_the_corpus_is_large() -> None:
    assert len(INVALID) >= 40


@pytest.mark.parametrize(("case", "mutate", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected(
    crd: Kube, namespace: str, case: str, mutate: Mutation, message: str
) -> None:
    body = copy.deepcopy(VALID)
    mutate(body)
    out = apply(crd, namespace, body, "--dry-run=server")
    assert out.returncode != 0, f"{case} was accepted"
    assert message in out.stderr, out.stderr


def test_the_kind_of_model_store_and_its_bucket_cannot_change(crd: Kube, namespace: str) -> None:
    assert apply(crd, namespace, VALID).returncode == 0
    moved = copy.deepcopy(VALID)
    _s3_store()(moved)
    out = apply(crd, namespace, moved)
    assert out.returncode != 0
    assert "modelStore cannot change between a claim and s3" in out.stderr
    crd.kubectl("delete", "sg", "storefront", "-n", namespace, "--wait=true")
    assert apply(crd, namespace, moved).returncode == 0
    elsewhere = copy.deepcopy(moved)
    elsewhere["spec"]["modelStore"]["s3"]["bucket"] = "other-models"
    out = apply(crd, namespace, elsewhere)
    assert out.returncode != 0
    assert "modelStore.s3 bucket and prefix cannot change" in out.stderr
    crd.kubectl("delete", "sg", "storefront", "-n", namespace, "--wait=false")


def test_the_model_store_claim_cannot_change(crd: Kube, namespace: str) -> None:
    assert apply(crd, namespace, VALID).returncode == 0
    moved = copy.deepcopy(VALID)
    moved["spec"]["modelStore"]["persistentVolumeClaim"]["claimName"] = "elsewhere"
    out = apply(crd, namespace, moved)
    assert out.returncode != 0
    assert "claimName cannot change: the stable model lives on that claim" in out.stderr
    crd.kubectl("delete", "sg", "storefront", "-n", namespace, "--wait=false")
