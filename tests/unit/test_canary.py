"""The rollout state machine, tick by tick, with an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from shopping_guide_operator.analysis import Result, Verdict
from shopping_guide_operator.canary import (
    CanaryState,
    Manual,
    Phase,
    Plan,
    PlanStep,
    Tick,
    Transition,
    advance,
    analysis_due,
    plan_from_spec,
    rollout_hash,
    start,
)

PLAN = Plan(
    steps=(PlanStep(5, 120), PlanStep(25, 120), PlanStep(50, 120)),
    interval_seconds=60,
    failure_limit=2,
    progress_deadline_seconds=3600,
    spec_hash="plan-1",
)
PASS = Verdict(Result.PASS)
FAIL = Verdict(Result.FAIL, ("error rate 0.2 above 0.01",))
UNSURE = Verdict(Result.INCONCLUSIVE, ("3 canary requests, fewer than 100",))


@dataclass
class World:
    """The serving pods and the clock, as the operator would see them."""

    plan: Plan | None = PLAN  # what the spec asks for
    now: float = 1000.0
    applied: int = 0
    paused: bool = False
    load_failure: str | None = None
    read: int | None = None
    state: CanaryState = field(init=False)
    events: list[str] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = start("v2", generation=5, now=self.now, plan=self.plan)

    def tick(
        self, seconds: float, verdict: Verdict | None = None, manual: Manual | None = None
    ) -> None:
        self.now += seconds
        if verdict is not None:
            assert analysis_due(self.state, self.now), "analysis was not due"
        seen = Tick(
            self.plan, self.applied, verdict, manual, self.paused, self.load_failure, self.read
        )
        decision = advance(self.state, seen, self.now)
        self.state = decision.state
        if decision.transition is not None:
            self.transitions.append(decision.transition)
            self.events.append(decision.message)

    def phase(self) -> Phase:
        return self.state.phase

    @property
    def weight(self) -> int:
        return self.state.weight_basis_points()


def test_waits_for_the_routing_generation_before_measuring() -> None:
    world = World()
    assert world.phase() == Phase.WAITING and world.weight == 500
    world.tick(30)
    assert world.phase() == Phase.WAITING
    assert not analysis_due(world.state, world.now + 600)
    world.applied = 5
    world.tick(1)
    assert world.phase() == Phase.PROGRESSING
    assert not analysis_due(world.state, world.now + 59)
    assert analysis_due(world.state, world.now + 60)


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
    assert world.transitions == [
        Transition.ROUTING_APPLIED,
        Transition.STEP_ADVANCED,
        Transition.ROUTING_APPLIED,
        Transition.STEP_ADVANCED,
        Transition.ROUTING_APPLIED,
        Transition.PROMOTED,
    ]


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
    world = World(plan=Plan((PlanStep(5, 600), PlanStep(50, 600)), 60, 2, 3600))
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
    world.paused = True
    world.tick(10)
    assert world.phase() == Phase.PAUSED
    world.tick(7200)  # far past the deadline, but paused
    assert world.phase() == Phase.PAUSED
    world.paused = False
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
    assert plan is not None
    assert plan.steps == (PlanStep(10, 300),) and plan.interval_seconds == 60
    assert plan_from_spec({}) is None  # no steps: no canary, never one 100 % step
    assert plan_from_spec({"paused": True}) is None


def test_the_plan_hash_leaves_pause_out() -> None:
    rollout = {"steps": [{"weight": 10}], "progressDeadline": "1h"}
    assert rollout_hash(rollout) == rollout_hash({**rollout, "paused": True})
    assert rollout_hash(rollout) != rollout_hash({**rollout, "progressDeadline": "2h"})


# --- the frozen plan ------------------------------------------------------------------------


def measuring_at_the_second_step() -> World:
    world = World()
    world.applied = 5
    world.tick(1)
    world.tick(60, PASS)
    world.tick(60, PASS)
    world.applied = 6
    world.tick(1)
    assert (world.state.step, world.phase(), world.weight) == (1, Phase.PROGRESSING, 2500)
    return world


def test_a_new_plan_restarts_at_its_first_step() -> None:
    world = measuring_at_the_second_step()
    world.tick(60, FAIL)
    world.plan = Plan((PlanStep(10, 60), PlanStep(90, 60)), 30, 3, 600, spec_hash="plan-2")
    world.tick(1)
    assert world.transitions[-1] == Transition.RESTARTED
    assert "restarting v2 at step 1 of 2 (weight 10%)" in world.events[-1]
    state = world.state
    assert (state.phase, state.step, state.failures, state.passed_in_step) == (
        Phase.WAITING, 0, 0, 0)  # fmt: skip
    assert state.plan == world.plan and state.started_at == world.now
    assert world.weight == 1000  # the first weight of the new plan, not its second (90 %)
    assert state.routing_generation == 7
    world.tick(1)
    assert world.transitions[-1] == Transition.RESTARTED  # no second restart
    assert world.phase() == Phase.WAITING


def test_a_shorter_plan_restarts_instead_of_indexing_past_its_end() -> None:
    world = measuring_at_the_second_step()
    world.plan = Plan((PlanStep(5, 0),), 60, 2, 3600, spec_hash="plan-2")
    world.tick(60, PASS)
    assert world.transitions[-1] == Transition.RESTARTED and world.state.step == 0
    world.applied = 7
    world.tick(1)
    world.tick(60, PASS)
    assert world.phase() == Phase.PROMOTED


def test_a_removed_plan_aborts_and_the_stable_version_serves() -> None:
    world = measuring_at_the_second_step()
    world.plan = None
    world.tick(1)
    assert world.phase() == Phase.ROLLED_BACK and world.state.reason == "RolloutRemoved"
    assert world.weight == 0
    assert world.transitions[-1] == Transition.ROLLED_BACK
    assert "spec.rollout has no steps" in world.events[-1]


def test_a_state_without_a_frozen_plan_freezes_the_spec_on_first_sight() -> None:
    world = measuring_at_the_second_step()
    legacy = world.state.to_status()
    legacy.pop("plan")
    world.state = CanaryState.from_status(legacy)
    assert world.state.plan is None
    world.tick(1)
    assert world.state.plan == PLAN and world.state.step == 1
    assert world.transitions[-1] != Transition.RESTARTED
    world.tick(60, PASS)
    world.tick(60, PASS)
    assert world.state.step == 2


def test_a_state_without_a_plan_and_a_spec_without_steps_aborts() -> None:
    world = World(plan=None)
    assert world.weight == 0
    world.tick(1)
    assert world.phase() == Phase.ROLLED_BACK and world.state.reason == "RolloutRemoved"


def test_pausing_leaves_the_frozen_plan_alone() -> None:
    world = measuring_at_the_second_step()
    frozen = world.state.plan
    world.paused = True
    world.tick(1)
    world.paused = False
    world.tick(1)
    assert world.state.plan == frozen and Transition.RESTARTED not in world.transitions


def test_a_new_plan_while_paused_restarts_paused() -> None:
    world = measuring_at_the_second_step()
    world.paused = True
    world.tick(1)
    world.plan = Plan((PlanStep(10, 60),), 60, 2, 3600, spec_hash="plan-2")
    world.tick(1)
    assert world.transitions[-1] == Transition.RESTARTED
    assert (world.phase(), world.state.step, world.weight) == (Phase.PAUSED, 0, 1000)
    world.paused = False
    world.tick(1)
    assert world.phase() == Phase.WAITING


# --- pause and resume -----------------------------------------------------------------------


def test_a_pause_while_waiting_for_the_routing_resumes_waiting() -> None:
    world = World()
    world.paused = True
    world.tick(1)
    assert world.phase() == Phase.PAUSED and world.state.paused_from == Phase.WAITING
    restored = CanaryState.from_status(world.state.to_status())
    assert restored.paused_from == Phase.WAITING
    world.paused = False
    world.tick(30)
    assert world.phase() == Phase.WAITING and world.transitions[-1] == Transition.RESUMED
    assert not analysis_due(world.state, world.now + 600)
    world.applied = 5
    world.tick(1)
    assert world.phase() == Phase.PROGRESSING


# --- the canary the serving pods could not load ---------------------------------------------


def test_a_canary_that_failed_to_load_rolls_back_at_once() -> None:
    world = World()
    world.load_failure = "out of memory (2 pods)"
    world.tick(1)
    assert world.phase() == Phase.WAITING  # not yet routed: a stale report of an old routing
    world.applied = 5
    world.paused = True  # not even a pause holds a canary that cannot serve
    world.tick(1)
    assert world.phase() == Phase.ROLLED_BACK and world.state.reason == "CanaryLoadFailed"
    assert "out of memory (2 pods)" in world.state.detail
    assert world.transitions[-1] == Transition.ROLLED_BACK
    assert "failed to load v2: out of memory (2 pods)" in world.events[-1]
    assert world.weight == 0


def test_a_canary_that_no_pod_loads_rolls_back_once_its_routing_is_read() -> None:
    world = World()
    world.load_failure = "ArtifactError: v2/item_factors.npy does not match its sha256"
    world.read = 4  # an older routing: the report may be about something else
    world.tick(1)
    assert world.phase() == Phase.WAITING
    world.read = 5  # read, never applied: the pods hold the generation back
    world.tick(1)
    assert world.phase() == Phase.ROLLED_BACK and world.state.reason == "CanaryLoadFailed"
