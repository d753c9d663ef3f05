"""Reconcile under change and conflict: foreign Jobs, lost status, two runs at once."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest

from shopping_guide_contracts.routing import parse
from shopping_guide_operator.constants import (
    LABEL_COMPONENT,
    LABEL_GUIDE,
    LABEL_MANAGED_BY,
    LABEL_TRIGGER,
    MANAGED_BY,
)
from shopping_guide_operator.reconcile import reconcile

from .conftest import BASE
from .fake_cluster import FakeCluster
from .test_reconcile import NAME, NS, T0, _promote_v1, _retrain, conditions, jobs, result, run
from .test_reconcile import status as status_of


@pytest.fixture
def world() -> FakeCluster:
    cluster = FakeCluster()
    cluster.put(copy.deepcopy(BASE))
    return cluster


def _routing(world: FakeCluster) -> Any:
    configmap = world.get("ConfigMap", NS, "storefront-routing")
    assert configmap is not None
    return parse(configmap["data"]["routing.json"])


def test_a_foreign_job_with_our_name_is_reported_not_adopted(world: FakeCluster) -> None:
    run(world)
    (name,) = jobs(world)
    # Someone else's Job takes the name (ours was deleted by hand, theirs has no owner).
    del world.objects[("Job", NS, name)]
    world.put({"kind": "Job", "metadata": {"name": name, "namespace": NS}, "spec": {}})
    outcome = reconcile(world, NS, NAME, T0 + 5)
    assert outcome is not None
    assert not any(reason == "TrainingStarted" for _, reason, _ in outcome.events)
    assert conditions(world)["Degraded"] == ("True", "ApplyFailed")
    assert "not owned by this ShoppingGuide" in status_of(world)["conditions"][3]["message"]


def test_the_result_is_read_from_the_pods_of_this_very_job(world: FakeCluster) -> None:
    run(world)
    (name,) = jobs(world)
    world.finish_job(NS, name, result("v1", 0.3))
    # A newer pod of an earlier Job of the same name (another uid) holds another result.
    world.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-old",
                "namespace": NS,
                "labels": {
                    "batch.kubernetes.io/job-name": name,
                    "batch.kubernetes.io/controller-uid": "uid-of-another-job",
                },
                "creationTimestamp": "2026-06-01T00:00:00Z",
            },
            "status": {
                "containerStatuses": [
                    {"name": "trainer", "state": {"terminated": {"message": result("vX", 0.9)}}}
                ]
            },
        }
    )
    run(world, T0 + 20)
    assert status_of(world)["stable"]["version"] == "v1"


def test_lost_status_keeps_the_stable_model_routed(world: FakeCluster) -> None:
    _promote_v1(world)
    before = _routing(world)
    assert before.stable == "v1"
    # Restored from a backup without status, or status reset by hand.
    world.objects[("ShoppingGuide", NS, NAME)].pop("status")
    outcome = reconcile(world, NS, NAME, T0 + 60)
    assert outcome is not None
    after = _routing(world)
    assert after.stable == "v1"
    assert after.generation >= before.generation  # pods never see the generation go back
    assert status_of(world)["stable"]["version"] == "v1"
    assert any(reason == "StableRecovered" for _, reason, _ in outcome.events)
    assert world.get("Deployment", NS, NAME) is not None
    # The finished run of v1 is still there: judged again, it restores v1's metrics and history
    # (so `rollback --to v1` works again) instead of being gated against itself.
    st = status_of(world)
    assert st["stable"]["metrics"]["ndcg@10"] == 0.3
    assert st["history"][0]["version"] == "v1"
    assert st["history"][0]["outcome"] == "Promoted"
    assert conditions(world)["Degraded"] == ("False", "Healthy")


def _scheduled_job(world: FakeCluster, name: str, active: bool = True) -> None:
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    world.put(
        {
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {
                    LABEL_GUIDE: NAME,
                    LABEL_COMPONENT: "training",
                    LABEL_MANAGED_BY: MANAGED_BY,
                    LABEL_TRIGGER: "schedule",
                },
                "ownerReferences": [
                    {"kind": "CronJob", "name": f"{NAME}-train", "controller": True, "uid": "c"}
                ],
            },
            "status": {"startTime": "2026-01-01T00:00:00Z"} if active else {},
        }
    )
    assert guide


def test_an_on_demand_run_waits_for_the_scheduled_one(world: FakeCluster) -> None:
    world.objects[("ShoppingGuide", NS, NAME)]["spec"]["training"]["schedule"] = "0 3 * * *"
    _promote_v1(world)
    _scheduled_job(world, "storefront-train-sched-1")
    _retrain(world, "again")
    run(world, T0 + 100)
    on_demand = [j for j in jobs(world) if j != "storefront-train-sched-1"]
    assert len(on_demand) == 1  # only the first, finished run: the retrain waits
    world.finish_job(NS, "storefront-train-sched-1", result("v2", 0.31))
    run(world, T0 + 110)
    run(world, T0 + 120)
    assert len([j for j in jobs(world) if j != "storefront-train-sched-1"]) == 2


def test_the_schedule_is_suspended_while_an_on_demand_run_trains(world: FakeCluster) -> None:
    world.objects[("ShoppingGuide", NS, NAME)]["spec"]["training"]["schedule"] = "0 3 * * *"
    run(world)
    cronjob = world.get("CronJob", NS, f"{NAME}-train")
    assert cronjob is not None and cronjob["spec"]["suspend"] is True
    # A scheduled Job that slipped in before the suspension is stopped.
    _scheduled_job(world, "storefront-train-sched-2")
    run(world, T0 + 5)
    assert ("Job", NS, "storefront-train-sched-2") not in world.objects
    (job,) = jobs(world)
    world.finish_job(NS, job, result("v1", 0.3))
    run(world, T0 + 20)
    cronjob = world.get("CronJob", NS, f"{NAME}-train")
    assert cronjob is not None and not cronjob["spec"].get("suspend")


def test_a_status_that_lost_only_its_stable_model_keeps_the_routing(world: FakeCluster) -> None:
    _promote_v1(world)
    world.objects[("ShoppingGuide", NS, NAME)]["status"].pop("stable")
    run(world, T0 + 60)
    assert _routing(world).stable == "v1"
    assert status_of(world)["stable"]["version"] == "v1"


class EditedMidPass(FakeCluster):
    """Someone edits the guide between the pass's read and its status write, once."""

    edits = 1

    def patch_status(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        resource_version: str | None,
        kind: str = "ShoppingGuide",
    ) -> dict[str, Any]:
        if self.edits:
            self.edits -= 1
            guide = self.objects[("ShoppingGuide", namespace, name)]
            guide["spec"]["serving"]["replicas"] = 4
            self._bump(guide)
        return super().patch_status(namespace, name, patch, resource_version, kind)


def test_a_status_computed_from_a_stale_read_is_not_written_and_the_pass_repeats() -> None:
    world = EditedMidPass()
    world.put(copy.deepcopy(BASE))
    outcome = reconcile(world, NS, NAME, T0)
    assert outcome is not None
    assert outcome.requeue_after == 0.0
    assert not status_of(world)  # nothing from the stale pass
    assert any(reason == "TrainingStarted" for _, reason, _ in outcome.events)
    again = reconcile(world, NS, NAME, T0 + 1)
    assert again is not None and again.requeue_after > 0
    assert status_of(world)["phase"] == "Training"
    assert len(jobs(world)) == 1  # the Job the first pass created is found, not doubled


def test_turning_autoscaling_on_keeps_the_replicas_until_the_hpa_acts(
    world: FakeCluster,
) -> None:
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["spec"]["serving"].pop("autoscaling")
    _promote_v1(world)
    deployment = world.get("Deployment", NS, NAME)
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    guide["spec"]["serving"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 8}
    world._bump(guide)
    run(world, T0 + 100)
    guide["spec"]["image"] = "registry.example.com/shopping-guide/recommender:0.2.0"
    world._bump(guide)
    run(world, T0 + 110)
    deployment = world.get("Deployment", NS, NAME)
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3  # not reset to 1 by the apply without it
    assert world.get("HorizontalPodAutoscaler", NS, NAME) is not None


def test_a_placement_removed_from_the_spec_leaves_the_deployment(world: FakeCluster) -> None:
    guide = world.objects[("ShoppingGuide", NS, NAME)]
    guide["spec"]["serving"]["nodeSelector"] = {"pool": "serving"}
    guide["spec"]["serving"]["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    _promote_v1(world)
    pod = world.objects[("Deployment", NS, NAME)]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "serving"}
    del guide["spec"]["serving"]["nodeSelector"]
    del guide["spec"]["serving"]["tolerations"]
    world._bump(guide)
    run(world, T0 + 100)
    pod = world.objects[("Deployment", NS, NAME)]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod


def _erasure(world: FakeCluster, name: str, *users: str) -> None:
    world.put(
        {
            "kind": "ShoppingGuideErasure",
            "metadata": {
                "name": name,
                "namespace": NS,
                "creationTimestamp": f"2026-01-0{len(world.objects) % 9 + 1}T00:00:00Z",
            },
            "spec": {
                "guide": NAME,
                "userIdSha256": [hashlib.sha256(u.encode()).hexdigest() for u in users],
            },
        }
    )


def test_an_erasure_runs_as_the_only_writer_and_is_audited(world: FakeCluster) -> None:
    _promote_v1(world)
    _erasure(world, "gdpr-1", "12748", "17850")
    outcome = reconcile(world, NS, NAME, T0 + 100)
    assert outcome is not None
    request = world.objects[("ShoppingGuideErasure", NS, "gdpr-1")]
    assert request["status"]["phase"] == "Running"
    job_name = request["status"]["job"]
    job = world.objects[("Job", NS, job_name)]
    assert "12748" not in json.dumps(job)  # users by hash only
    assert any(reason == "ErasureStarted" for _, reason, _ in outcome.events)
    # A retrain asked for meanwhile waits: the store has one writer.
    _retrain(world, "during-erasure")
    run(world, T0 + 110)
    assert len(jobs(world)) == 2  # the first training run and the erasure Job only
    world.finish_job(NS, job_name, json.dumps({"versions": ["v1"], "users": 2}))
    outcome = reconcile(world, NS, NAME, T0 + 120)
    assert outcome is not None
    done = world.objects[("ShoppingGuideErasure", NS, "gdpr-1")]["status"]
    assert done["phase"] == "Succeeded"
    assert done["versionsRewritten"] == ["v1"] and done["users"] == 2
    assert any(reason == "UsersForgotten" for _, reason, _ in outcome.events)
    # Every pod loads the rewritten versions again: the routing's models revision rose.
    routing = _routing(world)
    assert routing.models_revision == 1 == done["routingRevision"]
    assert status_of(world)["routing"]["generation"] == routing.generation
    run(world, T0 + 130)
    assert len(jobs(world)) == 3  # now the retrain starts
