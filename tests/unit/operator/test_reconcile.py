"""Reconcile driven pass by pass against an in-memory cluster: assert on the world, not calls."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shopping_guide_contracts.routing import parse
from shopping_guide_operator.reconcile import reconcile

from .conftest import BASE, deep_merge
from .fake_cluster import FakeCluster

NS, NAME = "shop", "storefront"
T0 = 1_800_000_000.0


def result(version: str, ndcg: float, champion: tuple[str, float] | None = None) -> str:
    metrics = {
        "ndcg@10": ndcg,
        "precision@10": 0.1,
        "recall@10": 0.2,
        "map@10": 0.1,
        "coverage": 0.5,
    }
    doc: dict[str, Any] = {
        "schema": 1,
        "version": version,
        "artifact": f"/models/{version}",
        "metrics": metrics,
        "baseline": {"popularity": {"ndcg@10": 0.02}},
        "data": {"users": 10},
    }
    if champion:
        doc["champion"] = {"version": champion[0], "metrics": {"ndcg@10": champion[1]}}
    return json.dumps(doc)


@pytest.fixture
def world() -> FakeCluster:
    cluster = FakeCluster()
    body = copy.deepcopy(BASE)
    body["spec"]["training"]["retry"] = {"initialDelay": "10s", "maxDelay": "1m"}
    cluster.put(body)
    return cluster


def status(world: FakeCluster) -> dict[str, Any]:
    guide = world.get("ShoppingGuide", NS, NAME)
    assert guide is not None
    return dict(guide.get("status") or {})


def conditions(world: FakeCluster) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status(world)["conditions"]}


def jobs(world: FakeCluster) -> list[str]:
    return sorted(name for (kind, _, name) in world.objects if kind == "Job")


def run(world: FakeCluster, now: float = T0) -> None:
    assert reconcile(world, NS, NAME, now) is not None


def test_first_pass_starts_training_and_serves_nothing_yet(world: FakeCluster) -> None:
    run(world)
    (job,) = jobs(world)
    assert job.startswith("storefront-train-")
    assert world.get("Deployment", NS, NAME) is None
    assert world.get("Service", NS, NAME) is not None
    assert conditions(world)["Training"] == ("True", "JobRunning")
    assert status(world)["phase"] == "Training"
    routing = world.get("ConfigMap", NS, "storefront-routing")
    assert routing is not None
    assert parse(routing["data"]["routing.json"]).stable is None


def test_passing_model_becomes_stable_and_is_served(world: FakeCluster) -> None:
    run(world)
    (job,) = jobs(world)
    world.finish_job(NS, job, result("v1", 0.3))
    run(world, T0 + 20)
    st = status(world)
    assert st["stable"]["version"] == "v1"
    assert st["stable"]["metrics"]["ndcg@10"] == 0.3
    assert st["history"][0]["outcome"] == "Promoted"
    assert st["lastTrainingRun"]["outcome"] == "Promoted"
    configmap = world.get("ConfigMap", NS, "storefront-routing")
    assert configmap is not None
    routing = parse(configmap["data"]["routing.json"])
    assert (routing.stable, routing.canary, routing.generation) == ("v1", None, 2)
    assert world.get("Deployment", NS, NAME) is not None
    assert world.get("HorizontalPodAutoscaler", NS, NAME) is not None
    assert world.get("PodDisruptionBudget", NS, NAME) is not None
    assert conditions(world)["Ready"] == ("False", "DeploymentUnavailable")

    world.make_deployment_ready(NS, NAME)
    run(world, T0 + 30)
    assert conditions(world)["Ready"] == ("True", "Available")
    assert status(world)["phase"] == "Ready"
    assert jobs(world) == [job]  # no retraining without a reason

    # Converged: another pass writes nothing at all.
    before = world.writes
    run(world, T0 + 90)
    assert world.writes == before


def _promote_v1(world: FakeCluster) -> None:
    run(world)
    world.finish_job(NS, jobs(world)[0], result("v1", 0.3))
    run(world, T0 + 20)
    world.make_deployment_ready(NS, NAME)
    run(world, T0 + 30)


def _retrain(world: FakeCluster, token: str) -> None:
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["metadata"].setdefault("annotations", {})["shoppingguide.io/retrain"] = token


def test_gate_failure_is_recorded_and_stable_keeps_serving(world: FakeCluster) -> None:
    _promote_v1(world)
    _retrain(world, "1")
    run(world, T0 + 40)
    new = [j for j in jobs(world) if world.objects[("Job", NS, j)].get("status") is None]
    (job,) = new
    args = world.objects[("Job", NS, job)]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--champion") + 1] == "v1"
    world.finish_job(NS, job, result("v2", 0.2, champion=("v1", 0.3)))
    run(world, T0 + 50)
    st = status(world)
    assert st["stable"]["version"] == "v1"
    assert st["history"][0]["outcome"] == "Rejected"
    assert "below the stable model" in st["history"][0]["reason"]
    assert st["phase"] == "Ready"
    configmap = world.get("ConfigMap", NS, "storefront-routing")
    assert configmap is not None
    assert parse(configmap["data"]["routing.json"]).stable == "v1"
    run(world, T0 + 60)
    assert len(jobs(world)) == 2  # a rejection is final until the next reason to train


def test_failed_job_degrades_and_retries_with_backoff(world: FakeCluster) -> None:
    run(world)
    (first,) = jobs(world)
    world.finish_job(NS, first, '{"schema":1,"error":"events.csv: no such file"}', ok=False)
    run(world, T0 + 10)
    assert conditions(world)["Degraded"] == ("True", "TrainingFailed")
    assert "no such file" in status(world)["message"]
    assert conditions(world)["Training"] == ("False", "WaitingToRetry")
    run(world, T0 + 15)
    assert jobs(world) == [first]  # still backing off (10s)
    run(world, T0 + 21)
    second = [j for j in jobs(world) if j != first]
    assert second and second[0].endswith("-1")
    world.finish_job(NS, second[0], result("v1", 0.3))
    run(world, T0 + 40)
    assert conditions(world)["Degraded"] == ("False", "Healthy")
    assert status(world)["training"]["attempt"] == 0


def test_spec_change_retrains_and_supersedes_the_running_job(world: FakeCluster) -> None:
    run(world)
    (old,) = jobs(world)
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["spec"] = deep_merge(guide["spec"], {"model": {"factors": 64}})
    run(world, T0 + 5)
    (new,) = jobs(world)
    assert new != old


def test_drift_is_repaired(world: FakeCluster) -> None:
    _promote_v1(world)
    deployment = world.objects[("Deployment", NS, NAME)]
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    run(world, T0 + 70)
    deployment = world.objects[("Deployment", NS, NAME)]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "registry.example.com"
    )


def test_objects_of_someone_else_are_not_taken_over(world: FakeCluster) -> None:
    world.put({"kind": "Service", "metadata": {"name": NAME, "namespace": NS}, "spec": {}})
    run(world)
    assert conditions(world)["Degraded"] == ("True", "ApplyFailed")
    assert "not owned by this ShoppingGuide" in status(world)["message"]


def test_disabling_autoscaling_removes_the_hpa_and_sets_replicas(world: FakeCluster) -> None:
    _promote_v1(world)
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["spec"]["serving"].pop("autoscaling")
    run(world, T0 + 70)
    assert world.get("HorizontalPodAutoscaler", NS, NAME) is None
    deployment = world.get("Deployment", NS, NAME)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3


def test_gone_guide_is_a_no_op(world: FakeCluster) -> None:
    assert reconcile(world, NS, "missing", T0) is None
