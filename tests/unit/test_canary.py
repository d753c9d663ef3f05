"""The rollout state machine, tick by tick, with an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from shopping_guide_operator.analysis import Result, Verdict
from shopping_guide_operator.canary import (
    CanaryState,
    Manual,
    Observed,
    Phase,
    Plan,
    Step,
    advance,
    analysis_due,
    plan_from_spec,
    start,
)

PLAN = Plan(
    steps=(Step(5, 120), Step(25, 120), Step(50, 120)),
    interval_seconds=60,
    failure_limit=2,
    progress_deadline_seconds=3600,
)
PASS = Verdict(Result.PASS)
FAIL = Verdict(Result.FAIL, ("error rate 0.2 above 0.01",))
UNSURE = Verdict(Result.INCONCLUSIVE, ("3 canary requests, fewer than 100",))


@dataclass
class World:
    """The serving pods and the clock, as the operator would see them."""

    plan: Plan = PLAN
    now: float = 1000.0
    applied: int = 0
    state: CanaryState = field(init=False)
    events: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = start("v2", generation=5, now=self.now)

    def tick(
        self, seconds: float, verdict: Verdict | None = None, manual: Manual | None = None
    ) -> None:
        self.now += seconds
        if verdict is not None:
            assert analysis_due(self.state, self.plan, self.now), "analysis was not due"
        decision = advance(
            self.state,
            self.plan,
            Observed(self.applied, verdict, manual),
            self.now,
        )
        self.state = decision.state
        self.events.extend(e for e in decision.events if e != "routing")

    def phase(self) -> Phase:
        return self.state.phase

    @property
    def weight(self) -> int:
        return self.state.weight_basis_points(self.plan)


def test_waits_for_the_routing_generation_before_measuring() -> None:
    world = World()
    assert world.phase() == Phase.WAITING and world.weight == 500
    world.tick(30)
    assert world.phase() == Phase.WAITING
    assert not analysis_due(world.state, PLAN, world.now + 600)
    world.applied = 5
    world.tick(1)
    assert world.phase() == Phase.PROGRESSING
    assert not analysis_due(world.state, PLAN, world.now + 59)
    assert analysis_due(world.state, PLAN, world.now + 60)


def test_a_good_canary_is_promoted_through_every_step() -> None:
    world = World()
    weights = []
    for step in range(3):
        world.applied = world.state.routing_generation
        world.tick(1)
        weights.append(world.weight)
        world.tick(60, PASS)
        assert world.state.step == step  # the pause (120 s) has not elapsed yet
        world.tick(60, PASS)
    assert weights == [500, 2500, 5000]
    assert world.phase() == Phase.PROMOTED and world.state.reason == "AnalysisPassed"
    assert world.weight == 0
    assert world.events[-1] == "Promoted v2"


def test_a_failing_canary_rolls_back_at_the_failure_limit() -> None:
    world = World()
    world.applied = 5
    world.tick(1)
    world.tick(60, FAIL)
    assert world.phase() == Phase.PROGRESSING and world.state.failures == 1
    world.tick(60, FAIL)
    assert world.phase() == Phase.ROLLED_BACK
    assert world.state.reason == "AnalysisFailed"
    assert "error rate" in world.events[-1]


def test_a_pass_resets_the_failure_count() -> None:
    world = World(plan=Plan((Step(5, 600), Step(50, 600)), 60, 2, 3600))
    world.applied = 5
    world.tick(1)
    world.tick(60, FAIL)
    world.tick(60, PASS)
    world.tick(60, FAIL)
    assert world.phase() == Phase.PROGRESSING and world.state.failures == 1


def test_no_traffic_holds_and_rolls_back_at_the_deadline() -> None:
    world = World()
    world.applied = 5
    world.tick(1)
    while world.now - world.state.started_at <= PLAN.progress_deadline_seconds - 60:
        world.tick(60, UNSURE)
        assert world.phase() == Phase.PROGRESSING and world.state.step == 0
    world.tick(120)
    assert world.phase() == Phase.ROLLED_BACK
    assert world.state.reason == "ProgressDeadlineExceeded"
    assert world.state.inconclusive >= 55


def test_manual_promote_abort_and_retry() -> None:
    world = World()
    world.tick(1, manual="promote")
    assert world.phase() == Phase.PROMOTED and world.state.reason == "PromotedManually"

    world = World()
    world.tick(1, manual="abort")
    assert world.phase() == Phase.ROLLED_BACK and world.state.reason == "Aborted"
    world.tick(1, manual="retry")
    assert world.phase() == Phase.WAITING and world.state.step == 0
    assert world.state.routing_generation == 6


def test_pause_stops_the_clocks() -> None:
    world = World()
    world.applied = 5
    world.tick(1)
    world.plan = Plan(PLAN.steps, 60, 2, 3600, paused=True)
    world.tick(10)
    assert world.phase() == Phase.PAUSED
    world.tick(7200)  # far past the deadline, but paused
    assert world.phase() == Phase.PAUSED
    world.plan = PLAN
    world.tick(1)
    assert world.phase() == Phase.PROGRESSING
    world.tick(60, PASS)
    assert world.phase() == Phase.PROGRESSING


def test_state_survives_a_round_trip_through_status() -> None:
    world = World()
    world.applied = 5
    world.tick(1)
    world.tick(60, FAIL)
    restored = CanaryState.from_status(world.state.to_status())
    assert restored == world.state
    assert restored.last_verdict == world.state.last_verdict


def test_terminal_states_stay_put() -> None:
    world = World()
    world.tick(1, manual="abort")
    before = world.state
    world.tick(10_000)
    assert world.state == before


def test_plan_from_spec_defaults() -> None:
    plan = plan_from_spec({"steps": [{"weight": 10, "pause": "5m"}], "analysis": {}})
    assert plan.steps == (Step(10, 300),) and plan.interval_seconds == 60
    assert plan_from_spec({}).steps == (Step(100, 0),)
    with pytest.raises(ValueError, match="not a duration"):
        plan_from_spec({"steps": [{"weight": 10, "pause": "ten minutes"}]})
