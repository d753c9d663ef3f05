"""The canary in the operator, pass by pass: fake cluster, fake Prometheus, injected clock.

Assertions are on the world (routing ConfigMap, status, Events), not on which calls were made.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from shopping_guide_contracts.routing import Routing, parse
from shopping_guide_operator.analysis import VersionMetrics
from shopping_guide_operator.prometheus_provider import MeasurementError, MetricsProvider
from shopping_guide_operator.reconcile import reconcile
from shopping_guide_operator.rollout import ProviderFactory, prometheus_provider
from shopping_guide_operator.spec import Guide

from .conftest import BASE
from .fake_cluster import FakeCluster
from .test_reconcile import NAME, NS, T0, jobs, result

ROLLOUT = {
    "steps": [{"weight": 10, "pause": "60s"}, {"weight": 50, "pause": "60s"}],
    "analysis": {
        "prometheus": {"address": "http://prometheus.monitoring:9090"},
        "interval": "30s",
        "failureLimit": 2,
        "minRequests": 100,
        "maxErrorRate": 0.01,
        "minClickThroughRatio": 0.9,
    },
    "progressDeadline": "10m",
}
GOOD = VersionMetrics(requests=1000, errors=0, p99_seconds=0.01, recommendations=1000, clicks=100)
BROKEN = VersionMetrics(requests=1000, errors=0, p99_seconds=0.01, recommendations=1000, clicks=9)
IDLE = VersionMetrics(requests=0, errors=0, p99_seconds=None, recommendations=0, clicks=0)


@dataclass
class FakePrometheus:
    """What serving pods report and how each version does; `down` makes every query fail."""

    applied: int | None = None
    read: int | None = None
    metrics: dict[str, VersionMetrics] = field(default_factory=dict)
    down: bool = False
    measured: list[tuple[str, float]] = field(default_factory=list)
    load_failed: dict[str, str] = field(default_factory=dict)

    async def measure(self, version: str, window_seconds: float) -> VersionMetrics:
        if self.down:
            raise MeasurementError("Prometheus at http://prometheus.monitoring:9090 unreachable")
        self.measured.append((version, window_seconds))
        return self.metrics.get(version, IDLE)

    async def generation_applied(self) -> int | None:
        if self.down:
            raise MeasurementError("Prometheus at http://prometheus.monitoring:9090 unreachable")
        return self.applied

    async def generation_read(self) -> int | None:
        if self.down:
            raise MeasurementError("Prometheus at http://prometheus.monitoring:9090 unreachable")
        return self.read

    async def load_failure(self, version: str) -> str | None:
        if self.down:
            raise MeasurementError("Prometheus at http://prometheus.monitoring:9090 unreachable")
        return self.load_failed.get(version)


@dataclass
class World:
    cluster: FakeCluster
    prometheus: FakePrometheus
    now: float = T0
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue: float = 0.0
    factory: ProviderFactory | None = None  # the real one; the fake Prometheus without it

    def providers(self, guide: Guide) -> MetricsProvider | None:
        return self.prometheus if self.factory is None else self.factory(guide)

    def run(self, seconds: float = 0.0) -> None:
        self.now += seconds
        passed = reconcile(self.cluster, NS, NAME, self.now, providers=self.providers)
        assert passed is not None
        self.events += passed.events
        self.requeue = passed.requeue_after

    @property
    def guide(self) -> dict[str, Any]:
        return self.cluster.objects[("ShoppingGuide", NS, NAME)]

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.guide.get("status") or {})

    @property
    def routing(self) -> Routing:
        configmap = self.cluster.get("ConfigMap", NS, f"{NAME}-routing")
        assert configmap is not None
        return parse(configmap["data"]["routing.json"])

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    def annotate(self, key: str, value: str) -> None:
        self.guide["metadata"].setdefault("annotations", {})[f"shoppingguide.io/{key}"] = value

    def train(self, version: str, token: str) -> None:
        """A retraining whose model passes the gate against the stable model."""
        champion = self.status["stable"]["version"]
        known = set(jobs(self.cluster))
        self.annotate("retrain", token)
        self.run(1)
        (job,) = set(jobs(self.cluster)) - known
        self.cluster.finish_job(NS, job, result(version, 0.31, champion=(champion, 0.30)))
        self.run(1)

    def apply_routing(self) -> None:
        """Every serving pod picks up the current routing document."""
        self.prometheus.applied = self.prometheus.read = self.routing.generation

    def read_routing(self) -> None:
        """Every serving pod reads the routing but cannot load all of it: it holds the
        generation it applies where it was."""
        self.prometheus.read = self.routing.generation


@pytest.fixture
def world() -> World:
    cluster = FakeCluster()
    body = copy.deepcopy(BASE)
    body["spec"]["rollout"] = copy.deepcopy(ROLLOUT)
    cluster.put(body)
    w = World(cluster, FakePrometheus(metrics={"v1": GOOD}))
    w.run()
    w.cluster.finish_job(NS, jobs(cluster)[0], result("v1", 0.3))
    w.run(10)
    cluster.make_deployment_ready(NS, NAME)
    w.run(10)
    assert w.status["stable"]["version"] == "v1"  # the first model needs no canary
    w.apply_routing()
    return w


def test_a_gated_model_enters_the_canary_at_the_first_step(world: World) -> None:
    before = world.routing.generation
    world.train("v2", "1")
    routing = world.routing
    assert (routing.stable, routing.canary) == ("v1", "v2")
    assert routing.canary_weight_basis_points == 1000
    assert routing.generation == before + 1
    canary = world.status["canary"]
    assert (canary["version"], canary["weight"]) == ("v2", 10)
    assert (canary["step"], canary["steps"]) == (0, 2)
    assert canary["phase"] == "WaitingForRouting"
    assert canary["routing_generation"] == routing.generation
    assert world.status["stable"]["version"] == "v1"
    assert world.status["history"][0]["outcome"] == "Canary"
    assert {"ModelGated", "CanaryStarted"} <= set(world.reasons())
    assert world.status["conditions"][2]["reason"] == "CanaryInProgress"
    assert world.requeue <= 1.0  # waiting for the pods: look again soon


def test_a_better_model_is_promoted_through_every_step(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.run(5)
    assert world.prometheus.measured == []  # nothing measured before the pods apply the weight
    assert world.status["canary"]["phase"] == "WaitingForRouting"
    world.apply_routing()
    world.run(1)
    assert world.status["canary"]["phase"] == "Progressing"
    assert world.requeue <= 10.0
    world.run(30)
    last = world.status["canary"]["last_verdict"]
    assert last["result"] == "Pass"
    assert last["values"]["clickThroughRatio"] == pytest.approx(1.0)
    assert last["values"]["requests"] == 1000
    world.run(30)
    assert world.status["canary"]["step"] == 1
    assert world.status["canary"]["weight"] == 50
    assert world.routing.canary_weight_basis_points == 5000
    world.apply_routing()
    for _ in range(3):
        world.run(30)
    status = world.status
    assert "canary" not in status
    assert status["stable"]["version"] == "v2"
    assert status["history"][0]["outcome"] == "Promoted"
    assert (world.routing.stable, world.routing.canary) == ("v2", None)
    assert {"CanaryStep", "CanaryPromoted", "ModelPromoted"} <= set(world.reasons())
    assert ("v2", 30.0) in world.prometheus.measured and ("v1", 30.0) in world.prometheus.measured


def test_a_model_whose_clicks_collapse_is_rolled_back(world: World) -> None:
    world.prometheus.metrics["v2"] = BROKEN
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.run(30)
    assert world.status["canary"]["failures"] == 1
    assert world.routing.canary == "v2"  # one bad interval is not yet a verdict
    world.run(30)
    status = world.status
    assert "canary" not in status
    assert status["stable"]["version"] == "v1"
    entry = status["history"][0]
    assert (entry["version"], entry["outcome"]) == ("v2", "RolledBack")
    assert "click-through ratio 0.090 below 0.9" in entry["reason"]
    assert entry["analysis"]["values"]["clickThrough"] == pytest.approx(0.009)
    assert status["lastCanary"]["phase"] == "RolledBack"
    after = world.routing
    assert (after.stable, after.canary) == ("v1", None)
    assert "CanaryAnalysisFailed" in world.reasons()
    assert world.reasons().count("CanaryRolledBack") == 1


def test_no_traffic_holds_and_rolls_back_at_the_deadline(world: World) -> None:
    world.prometheus.metrics = {}
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    for _ in range(19):
        world.run(30)
        assert world.status["canary"]["phase"] == "Progressing"
    assert world.status["canary"]["inconclusive"] >= 18
    assert world.status["canary"]["step"] == 0  # never passed: held at the first step
    world.run(30)
    entry = world.status["history"][0]
    assert (entry["outcome"], entry["reason"]) == ("RolledBack", "ProgressDeadlineExceeded")
    assert world.routing.canary is None


def test_a_restart_mid_step_resumes_at_the_same_step_and_weight(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.run(30)
    world.run(30)
    world.apply_routing()
    world.run(1)
    before = (world.status["canary"], world.routing)
    assert before[0]["step"] == 1 and before[0]["phase"] == "Progressing"
    # A new operator: a fresh provider, nothing carried over but the cluster.
    world.prometheus = FakePrometheus(
        applied=world.routing.generation, metrics={"v1": GOOD, "v2": GOOD}
    )
    writes = world.cluster.writes
    world.run(5)
    assert (world.status["canary"], world.routing) == before
    assert world.cluster.writes == writes  # nothing to change before the next analysis
    world.run(25)
    world.run(30)
    assert world.status["stable"]["version"] == "v2"


def test_promote_by_hand_acts_once_per_value(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.annotate("promote", "2026-01-01T00:00:00Z")
    world.run(1)
    assert world.status["stable"]["version"] == "v2"
    assert world.status["manual"]["promote"] == "2026-01-01T00:00:00Z"
    assert world.status["history"][0]["reason"] == "promoted by hand"
    assert world.routing.canary is None
    world.train("v3", "2")
    world.run(1)
    assert world.status["canary"]["version"] == "v3"  # the old value does not promote again
    assert "shoppingguide.io/promote" in world.guide["metadata"]["annotations"]


def test_abort_then_retry_by_hand(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.annotate("abort", "t1")
    world.run(1)
    assert world.status["history"][0]["outcome"] == "RolledBack"
    assert world.status["history"][0]["reason"] == "Aborted"
    assert world.routing.canary is None
    world.run(30)
    assert "canary" not in world.status
    world.annotate("retry", "t2")
    world.run(1)
    canary = world.status["canary"]
    assert (canary["version"], canary["step"], canary["phase"]) == ("v2", 0, "WaitingForRouting")
    assert world.routing.canary == "v2"
    assert canary["routing_generation"] == world.routing.generation
    assert "CanaryRetried" in world.reasons()


def test_a_pinned_version_serves_and_nothing_is_promoted(world: World) -> None:
    world.guide["spec"]["model"]["pinnedVersion"] = "v1"
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    status = world.status
    assert status["history"][0]["outcome"] == "Held"
    assert "canary" not in status
    assert (world.routing.stable, world.routing.canary) == ("v1", None)
    assert "ModelHeld" in world.reasons()


def test_pinning_mid_canary_clears_it_and_serves_the_pin(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.guide["spec"]["model"]["pinnedVersion"] = "v0"
    world.run(1)
    assert "canary" not in world.status
    assert (world.routing.stable, world.routing.canary) == ("v0", None)
    assert world.status["stable"]["version"] == "v1"  # the operator's choice, kept for later
    assert world.status["routing"]["stable"] == "v0"
    world.guide["spec"]["model"].pop("pinnedVersion")
    world.run(1)
    assert world.routing.stable == "v1"


def test_prometheus_down_holds_then_continues(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.prometheus.down = True
    world.run(30)
    world.run(30)
    world.run(30)
    canary = world.status["canary"]
    assert canary["step"] == 0 and canary["inconclusive"] == 3
    assert "unreachable" in canary["last_verdict"]["reasons"][0]
    assert world.reasons().count("PrometheusUnreachable") == 1  # one Event per outage
    world.prometheus.down = False
    world.run(30)
    assert "PrometheusReachable" in world.reasons()
    assert world.status["canary"]["step"] == 1


def test_paused_rollout_holds(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.guide["spec"]["rollout"]["paused"] = True
    world.run(30)
    assert world.status["canary"]["phase"] == "Paused"
    world.run(900)  # paused time does not count towards the deadline
    assert world.status["canary"]["phase"] == "Paused"
    world.guide["spec"]["rollout"]["paused"] = False
    world.run(1)
    assert world.status["canary"]["phase"] == "Progressing"


def test_rollback_to_a_previous_stable_version(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.annotate("promote", "t1")
    world.run(1)
    assert world.routing.stable == "v2"
    world.annotate("rollback-to", "v7@t2")
    world.run(1)
    assert world.routing.stable == "v2"
    assert "RollbackRefused" in world.reasons()
    world.annotate("rollback-to", "v1@t3")
    world.run(1)
    assert world.status["stable"]["version"] == "v1"
    assert world.status["history"][0]["outcome"] == "Restored"
    assert world.routing.stable == "v1"


def test_without_steps_a_gated_model_becomes_stable_directly(world: World) -> None:
    world.guide["spec"].pop("rollout")
    world.train("v2", "1")
    assert world.status["stable"]["version"] == "v2"
    assert "canary" not in world.status


def at_the_second_step(world: World) -> None:
    """v2 is the canary, measured at the second step (50 %)."""
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.run(30)
    world.run(30)
    world.apply_routing()
    world.run(1)
    canary = world.status["canary"]
    assert (canary["step"], canary["phase"], canary["weight"]) == (1, "Progressing", 50)


def test_removing_the_rollout_mid_canary_aborts_it(world: World) -> None:
    at_the_second_step(world)
    world.guide["spec"].pop("rollout")
    world.run(1)
    assert (world.routing.stable, world.routing.canary) == ("v1", None)
    assert world.routing.canary_weight_basis_points == 0
    assert "canary" not in world.status
    assert world.status["stable"]["version"] == "v1"
    entry = world.status["history"][0]
    assert (entry["version"], entry["outcome"]) == ("v2", "RolledBack")
    assert entry["reason"].startswith("RolloutRemoved")
    (message,) = [m for _, reason, m in world.events if reason == "CanaryRolledBack"]
    assert "spec.rollout" in message and "stable" in message


def test_fewer_steps_mid_canary_restart_at_the_first_step(world: World) -> None:
    at_the_second_step(world)
    world.guide["spec"]["rollout"]["steps"] = [{"weight": 20, "pause": "30s"}]
    world.run(1)
    canary = world.status["canary"]
    assert (canary["step"], canary["steps"], canary["phase"]) == (0, 1, "WaitingForRouting")
    assert world.routing.canary_weight_basis_points == 2000
    assert canary["plan"]["steps"] == [{"weight_percent": 20.0, "pause_seconds": 30.0}]
    (message,) = [m for _, reason, m in world.events if reason == "CanaryRestarted"]
    assert "spec.rollout changed" in message and "step 1" in message
    world.apply_routing()
    world.run(1)
    world.run(30)  # no IndexError on the shrunk plan: one passed analysis promotes
    assert world.status["stable"]["version"] == "v2"


def test_new_weights_mid_canary_restart_at_the_first_weight_never_jump(world: World) -> None:
    at_the_second_step(world)
    world.guide["spec"]["rollout"]["steps"] = [
        {"weight": 5, "pause": "60s"},
        {"weight": 80, "pause": "60s"},
    ]
    world.run(1)
    assert world.routing.canary_weight_basis_points == 500  # not 8000, the new second step
    canary = world.status["canary"]
    assert (canary["step"], canary["weight"], canary["failures"]) == (0, 5, 0)
    assert "CanaryRestarted" in world.reasons()
    world.run(1)
    assert world.reasons().count("CanaryRestarted") == 1  # the new plan is frozen now


def test_the_frozen_plan_drives_the_canary_not_the_spec(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    frozen = world.status["canary"]["plan"]
    assert [s["weight_percent"] for s in frozen["steps"]] == [10.0, 50.0]
    assert (frozen["interval_seconds"], frozen["failure_limit"]) == (30.0, 2)
    assert frozen["progress_deadline_seconds"] == 600.0 and frozen["spec_hash"]
    world.apply_routing()
    world.run(1)
    world.run(30)
    world.guide["spec"]["rollout"]["paused"] = True  # pausing is not a change of plan
    world.run(1)
    world.guide["spec"]["rollout"]["paused"] = False
    world.run(1)
    assert world.status["canary"]["plan"] == frozen
    assert "CanaryRestarted" not in world.reasons()


def test_status_of_an_older_operator_is_frozen_from_the_spec(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    world.apply_routing()
    world.run(1)
    world.run(30)
    world.guide["status"]["canary"].pop("plan")  # as an operator without frozen plans wrote it
    world.run(1)
    canary = world.status["canary"]
    assert (canary["step"], canary["phase"]) == (0, "Progressing")
    assert [s["weight_percent"] for s in canary["plan"]["steps"]] == [10.0, 50.0]
    assert "CanaryRestarted" not in world.reasons()
    world.run(30)
    assert world.status["canary"]["step"] == 1


def test_pausing_while_waiting_for_the_routing_resumes_waiting(world: World) -> None:
    world.prometheus.metrics["v2"] = GOOD
    world.train("v2", "1")
    assert world.status["canary"]["phase"] == "WaitingForRouting"
    world.guide["spec"]["rollout"]["paused"] = True
    world.run(1)
    assert world.status["canary"]["phase"] == "Paused"
    world.guide["spec"]["rollout"]["paused"] = False
    world.run(1)
    assert world.status["canary"]["phase"] == "WaitingForRouting"
    world.run(60)
    assert world.prometheus.measured == []  # the pods have not applied the routing yet
    world.apply_routing()
    world.run(1)
    assert world.status["canary"]["phase"] == "Progressing"


def test_a_canary_that_fails_to_load_is_rolled_back_at_once(world: World) -> None:
    world.prometheus.load_failed["v2"] = "model file truncated (2 pods)"
    world.train("v2", "1")
    world.run(1)
    assert world.status["canary"]["phase"] == "WaitingForRouting"  # the pods have not tried yet
    world.apply_routing()
    world.run(1)
    status = world.status
    assert "canary" not in status
    assert (world.routing.stable, world.routing.canary) == ("v1", None)
    assert status["lastCanary"]["reason"] == "CanaryLoadFailed"
    assert "model file truncated (2 pods)" in status["lastCanary"]["detail"]
    entry = status["history"][0]
    assert (entry["outcome"], entry["version"]) == ("RolledBack", "v2")
    assert entry["reason"].startswith("CanaryLoadFailed") and "truncated" in entry["reason"]
    (message,) = [m for _, reason, m in world.events if reason == "CanaryRolledBack"]
    assert "failed to load" in message and "model file truncated (2 pods)" in message
    assert world.prometheus.measured == []


def test_a_canary_no_pod_can_load_is_rolled_back_once_they_read_its_routing(
    world: World,
) -> None:
    world.prometheus.load_failed["v2"] = "ArtifactError: v2/item_factors.npy does not match"
    world.train("v2", "1")
    world.run(1)
    assert world.status["canary"]["phase"] == "WaitingForRouting"  # an older routing's report
    world.read_routing()  # never applied: no pod serves v2
    world.run(1)
    assert "canary" not in world.status
    assert world.status["lastCanary"]["reason"] == "CanaryLoadFailed"
    assert (world.routing.stable, world.routing.canary) == ("v1", None)


def test_an_address_the_operator_does_not_allow_holds_the_canary(world: World) -> None:
    world.factory = prometheus_provider  # the default allow-list: in-cluster services only
    world.train("v2", "1")  # the guide names http://prometheus.monitoring:9090
    world.run(1)
    world.run(30)
    world.run(30)
    canary = world.status["canary"]
    assert (canary["phase"], canary["step"], canary["weight"]) == ("WaitingForRouting", 0, 10)
    assert "not allowed by the operator's configuration" in canary["prometheusError"]
    (message,) = [m for _, r, m in world.events if r == "PrometheusAddressNotAllowed"]
    assert "http://prometheus.monitoring:9090" in message and "holding the canary" in message
    assert "PrometheusUnreachable" not in world.reasons()
