"""operator/rbac/role.yaml grants exactly what the operator's code asks of the API server."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from shopping_guide_operator import informers, permissions
from shopping_guide_operator.constants import FIELD_MANAGER
from shopping_guide_operator.reconcile import reconcile
from tests.unit.operator.conftest import BASE, deep_merge
from tests.unit.operator.fake_cluster import JSON, FakeCluster

REPO = Path(__file__).resolve().parents[1].parent
ROLE = REPO / "operator" / "rbac" / "role.yaml"
NS, NAME = "shop", "storefront"
T0 = 1_800_000_000.0


def granted() -> set[permissions.Permission]:
    rules = yaml.safe_load(ROLE.read_text())["rules"]
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_grants_exactly_what_the_code_needs() -> None:
    needed, have = permissions.required(), granted()
    assert not needed - have, f"missing from role.yaml: {sorted(needed - have)}"
    assert not have - needed, f"granted but never used: {sorted(have - needed)}"


def test_no_wildcards_and_secrets_only_created_and_cached() -> None:
    have = granted()
    assert not any("*" in part for grant in have for part in grant)
    # The guides' attribution keys: created, and watched by our label only (the cache never
    # holds another Secret); never read by name, changed or deleted.
    assert {verb for _, resource, verb in have if resource == "secrets"} == {
        "list", "watch", "create",
    }  # fmt: skip
    assert informers.WATCHED["Secret"] == informers.OURS


def test_the_chart_carries_the_same_role() -> None:
    chart = REPO / "charts" / "shopping-guide" / "files" / "role.yaml"
    assert chart.read_text() == ROLE.read_text(), (
        "cp operator/rbac/role.yaml charts/shopping-guide/files/role.yaml"
    )


def test_every_kind_the_operator_reads_is_watched_with_our_label() -> None:
    """The read side of the table: each kind reconcile reads has an informer, and every
    child informer selects on our managed-by label server-side."""
    source = (REPO / "operator" / "shopping_guide_operator" / "reconcile.py").read_text()
    kube = (REPO / "operator" / "shopping_guide_operator" / "kube.py").read_text()
    listed = set(re.findall(r'cluster\.list\(\s*"(\w+)"', source))
    fetched = set(re.findall(r'cluster\.get\("(\w+)"', source))
    assert listed | fetched <= set(informers.WATCHED)
    assert "cluster.get(desired" in kube and "cluster.get(kind" in kube  # ensure, ensure_absent
    for kind, selector in informers.WATCHED.items():
        # The guides and the erasure requests are people's objects, without our labels.
        if kind not in ("ShoppingGuide", "ShoppingGuideErasure"):
            assert selector is not None and informers.OURS in selector


class Recording(FakeCluster):
    """Which write method reconcile calls for which kind."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: set[tuple[str, str]] = set()

    def create(self, obj: JSON) -> JSON:
        self.calls.add((obj["kind"], "create"))
        return super().create(obj)

    def apply(self, obj: JSON, field_manager: str = FIELD_MANAGER) -> JSON:
        self.calls.add((obj["kind"], "apply"))
        return super().apply(obj, field_manager)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.add((kind, "delete"))
        super().delete(kind, namespace, name)

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: JSON,
        resource_version: str | None,
        kind: str = "ShoppingGuide",
    ) -> JSON:
        self.calls.add((kind, "patch_status"))
        return super().patch_status(namespace, name, patch, resource_version, kind)


def _result() -> str:
    metrics = {"ndcg@10": 0.3, "precision@10": 0.1, "recall@10": 0.2, "map@10": 0.1}
    doc: dict[str, Any] = {
        "schema": 1,
        "version": "v1",
        "artifact": "/models/v1",
        "metrics": {**metrics, "coverage": 0.5},
        "baseline": {"popularity": {"ndcg@10": 0.02}},
        "data": {"users": 10},
    }
    return json.dumps(doc)


def test_the_writes_reconcile_makes_are_in_the_table() -> None:
    """Train, serve, supersede a Job, drop the optional children: every (kind, method) seen
    is in informers.WRITES, and with it in the role."""
    world = Recording()
    body = deep_merge(
        copy.deepcopy(BASE),
        {"spec": {"training": {"schedule": "0 3 * * *"}, "serving": {"networkPolicy": {}}}},
    )
    world.put(body)
    reconcile(world, NS, NAME, T0)
    (job,) = [n for (k, _, n) in world.objects if k == "Job"]
    world.finish_job(NS, job, _result())
    reconcile(world, NS, NAME, T0 + 20)
    world.make_deployment_ready(NS, NAME)
    reconcile(world, NS, NAME, T0 + 30)
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["spec"] = deep_merge(guide["spec"], {"model": {"factors": 64}})
    reconcile(world, NS, NAME, T0 + 40)
    reconcile(world, NS, NAME, T0 + 45)
    guide["spec"] = deep_merge(guide["spec"], {"model": {"factors": 96}})  # supersedes a Job
    reconcile(world, NS, NAME, T0 + 47)
    guide["spec"]["serving"].pop("autoscaling")
    guide["spec"]["training"].pop("schedule", None)
    reconcile(world, NS, NAME, T0 + 50)
    allowed = {(kind, method) for kind, methods in informers.WRITES.items() for method in methods}
    assert world.calls <= allowed, sorted(world.calls - allowed)
    seen = {("Job", "create"), ("Job", "delete"), ("Deployment", "apply"), ("CronJob", "delete")}
    assert seen | {("HorizontalPodAutoscaler", "delete"), ("ShoppingGuide", "patch_status")} <= (
        world.calls
    )
