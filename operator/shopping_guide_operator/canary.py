"""The canary rollout of one model version, as an explicit state machine.

`advance(state, plan, observed, now)` is the only transition function: pure, one step per
reconcile tick, with the clock passed in. The operator persists `CanaryState` in status (so a
restart resumes at the same step and weight), writes the routing ConfigMap when the decision
asks for a new weight, and asks Prometheus for a verdict only when `analysis_due` says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from .analysis import Result, Verdict
from .durations import parse_duration

Manual = Literal["promote", "abort", "retry"]


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    """The canary serves its step's weight; analyses run at every interval."""
    WAITING = "WaitingForRouting"
    """A new weight was written; serving pods have not all reported its routing generation yet,
    so nothing is measured (traffic would still follow the old weight)."""
    PAUSED = "Paused"
    """Held by `spec.rollout.paused`: no analysis, no step, and the deadline clock stops."""
    PROMOTED = "Promoted"
    """Terminal: the canary became stable."""
    ROLLED_BACK = "RolledBack"
    """Terminal: the canary was cleared and its version rejected (see `reason`)."""


TERMINAL = (Phase.PROMOTED, Phase.ROLLED_BACK)


@dataclass(frozen=True)
class Step:
    weight_percent: float
    pause_seconds: float


@dataclass(frozen=True)
class Plan:
    """`spec.rollout`, parsed."""

    steps: tuple[Step, ...]
    interval_seconds: float = 60.0
    failure_limit: int = 2
    progress_deadline_seconds: float = 3600.0
    paused: bool = False


@dataclass(frozen=True)
class CanaryState:
    version: str
    phase: Phase
    step: int
    routing_generation: int
    started_at: float
    step_started_at: float
    last_analysis_at: float | None = None
    passed_in_step: int = 0
    failures: int = 0
    inconclusive: int = 0
    paused_at: float | None = None
    reason: str = ""
    last_verdict: dict[str, Any] | None = field(default=None, compare=False)

    def weight_basis_points(self, plan: Plan) -> int:
        if self.phase in TERMINAL or not plan.steps:
            return 0
        return round(plan.steps[min(self.step, len(plan.steps) - 1)].weight_percent * 100)

    def to_status(self) -> dict[str, Any]:
        document = asdict(self)
        document["phase"] = self.phase.value
        return document

    @classmethod
    def from_status(cls, document: dict[str, Any]) -> CanaryState:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in document.items() if k in known}
        values["phase"] = Phase(values["phase"])
        return cls(**values)


@dataclass(frozen=True)
class Observed:
    """What the operator saw this tick."""

    generation_applied: int | None
    verdict: Verdict | None = None
    manual: Manual | None = None


@dataclass(frozen=True)
class Decision:
    state: CanaryState
    events: tuple[str, ...] = ()

    @property
    def routing_changed(self) -> bool:
        return "routing" in self.events


def start(version: str, generation: int, now: float) -> CanaryState:
    """A gated version enters at the first step; the caller writes that weight."""
    return CanaryState(
        version=version,
        phase=Phase.WAITING,
        step=0,
        routing_generation=generation,
        started_at=now,
        step_started_at=now,
    )


def analysis_due(state: CanaryState, plan: Plan, now: float) -> bool:
    if state.phase != Phase.PROGRESSING:
        return False
    since = state.last_analysis_at if state.last_analysis_at is not None else state.step_started_at
    return now - since >= plan.interval_seconds


def _end(state: CanaryState, phase: Phase, reason: str, event: str) -> Decision:
    ended = replace(state, phase=phase, reason=reason, paused_at=None)
    return Decision(ended, ("routing", event))


def advance(state: CanaryState, plan: Plan, observed: Observed, now: float) -> Decision:
    """One tick of the rollout."""
    if state.phase in TERMINAL:
        if observed.manual == "retry" and state.phase == Phase.ROLLED_BACK:
            again = start(state.version, state.routing_generation + 1, now)
            return Decision(again, ("routing", f"Retrying {state.version} from the first step"))
        return Decision(state)
    if observed.manual == "abort":
        return _end(state, Phase.ROLLED_BACK, "Aborted", f"Aborted {state.version}")
    if observed.manual == "promote":
        return _end(state, Phase.PROMOTED, "PromotedManually", f"Promoted {state.version} by hand")

    if plan.paused:
        if state.phase == Phase.PAUSED:
            return Decision(state)
        paused = replace(state, phase=Phase.PAUSED, paused_at=now)
        return Decision(paused, (f"Paused at step {state.step + 1}",))
    if state.phase == Phase.PAUSED:
        # Resume with every clock shifted by the pause: paused time counts for nothing.
        held = now - (state.paused_at if state.paused_at is not None else now)
        state = replace(
            state,
            phase=Phase.PROGRESSING,
            paused_at=None,
            started_at=state.started_at + held,
            step_started_at=state.step_started_at + held,
            last_analysis_at=None
            if state.last_analysis_at is None
            else state.last_analysis_at + held,
        )
        return Decision(state, (f"Resumed at step {state.step + 1}",))

    if now - state.started_at > plan.progress_deadline_seconds:
        return _end(
            state,
            Phase.ROLLED_BACK,
            "ProgressDeadlineExceeded",
            f"Rolled back {state.version}: no promotion within "
            f"{plan.progress_deadline_seconds:.0f}s",
        )

    if state.phase == Phase.WAITING:
        applied = observed.generation_applied
        if applied is None or applied < state.routing_generation:
            return Decision(state)
        measuring = replace(state, phase=Phase.PROGRESSING, step_started_at=now)
        return Decision(measuring, (f"Step {state.step + 1}: serving pods apply the weight",))

    verdict = observed.verdict
    if verdict is None:
        return Decision(state)
    record = {"result": verdict.result.value, "at": now, "reasons": list(verdict.reasons),
              "values": dict(verdict.values)}  # fmt: skip
    state = replace(state, last_analysis_at=now, last_verdict=record)
    if verdict.result == Result.FAIL:
        failures = state.failures + 1
        state = replace(state, failures=failures)
        if failures >= plan.failure_limit:
            return _end(
                state,
                Phase.ROLLED_BACK,
                "AnalysisFailed",
                f"Rolled back {state.version}: {verdict.summary()}",
            )
        return Decision(state, (f"Analysis failed ({failures}/{plan.failure_limit}): "
                                f"{verdict.summary()}",))  # fmt: skip
    if verdict.result == Result.INCONCLUSIVE:
        state = replace(state, inconclusive=state.inconclusive + 1)
        return Decision(state, (f"Analysis inconclusive, holding: {verdict.summary()}",))

    state = replace(state, passed_in_step=state.passed_in_step + 1, failures=0)
    step = plan.steps[state.step]
    if now - state.step_started_at < step.pause_seconds:
        return Decision(state)
    if state.step + 1 >= len(plan.steps):
        return _end(state, Phase.PROMOTED, "AnalysisPassed", f"Promoted {state.version}")
    following = replace(
        state,
        phase=Phase.WAITING,
        step=state.step + 1,
        routing_generation=state.routing_generation + 1,
        step_started_at=now,
        last_analysis_at=None,
        passed_in_step=0,
    )
    weight = plan.steps[following.step].weight_percent
    return Decision(following, ("routing", f"Step {following.step + 1}: canary weight {weight}%"))


def plan_from_spec(rollout: dict[str, Any]) -> Plan:
    steps = tuple(
        Step(float(s.get("weight", 0)), parse_duration(s.get("pause", "0s")))
        for s in rollout.get("steps", [])
    ) or (Step(100.0, 0.0),)
    analysis = rollout.get("analysis", {})
    return Plan(
        steps=steps,
        interval_seconds=parse_duration(analysis.get("interval", "1m")),
        failure_limit=int(analysis.get("failureLimit", 2)),
        progress_deadline_seconds=parse_duration(rollout.get("progressDeadline", "1h")),
        paused=bool(rollout.get("paused", False)),
    )
