"""The canary rollout of one model version, as an explicit state machine.

`advance(state, tick, now)` is the only transition function: pure, one step per reconcile
tick, with the clock passed in. It returns the next state and at most one typed `Transition`
with its message; the Event's type and reason are derived from the transition. The operator
persists `CanaryState` in status (so a restart resumes at the same step and weight), writes
the routing ConfigMap from the state's weight, and asks Prometheus for a verdict only when
`analysis_due` says so.

The plan is frozen when the canary starts, as Flagger and Argo Rollouts do: `CanaryState.plan`
holds the steps, interval, failure limit and progress deadline, and a hash of the
`spec.rollout` they came from (`paused` left out). Every later tick is driven by the frozen
plan, never by the spec. Each tick compares the spec's plan with it:

- the same hash: nothing changes;
- another hash (steps, weights, interval, thresholds, ... edited while the canary runs): a new
  rollout of the same version, restarted at the first step of the new plan (its weight, never
  a later one; every counter and the deadline start over), with a `Restarted` transition;
- no steps any more (`spec.rollout` removed): the canary is aborted (`RolloutRemoved`), the
  stable version keeps serving.

`spec.rollout.paused` is not part of the plan: it acts on the running canary (`Tick.paused`),
and resuming returns to the phase the pause left (`paused_from`), so a canary paused while
waiting for the serving pods to apply its routing waits again before anything is measured.
A state without a frozen plan (written by an older operator, or begun this very pass) is
frozen from the spec's plan on first sight.

A canary version that the serving pods report they failed to load (`Tick.load_failure`,
trusted once the pods report the canary's routing generation, so a stale failure of an earlier
routing does not count) is rolled back at once (`CanaryLoadFailed`, the pods' reasons in
`detail`), whatever the phase.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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


class Transition(StrEnum):
    """What one tick did; each has its Event type and reason."""

    STARTED = "Started"
    ROUTING_APPLIED = "RoutingApplied"
    STEP_ADVANCED = "StepAdvanced"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    ANALYSIS_FAILED = "AnalysisFailed"
    INCONCLUSIVE = "Inconclusive"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    RETRIED = "Retried"
    RESTARTED = "Restarted"

    @property
    def event_type(self) -> str:
        warnings = (Transition.ANALYSIS_FAILED, Transition.ROLLED_BACK)
        return "Warning" if self in warnings else "Normal"

    @property
    def event_reason(self) -> str:
        return _EVENT_REASONS[self]


_EVENT_REASONS = {
    Transition.STARTED: "CanaryStarted",
    Transition.ROUTING_APPLIED: "CanaryRoutingApplied",
    Transition.STEP_ADVANCED: "CanaryStep",
    Transition.PAUSED: "CanaryPaused",
    Transition.RESUMED: "CanaryResumed",
    Transition.ANALYSIS_FAILED: "CanaryAnalysisFailed",
    Transition.INCONCLUSIVE: "CanaryInconclusive",
    Transition.PROMOTED: "CanaryPromoted",
    Transition.ROLLED_BACK: "CanaryRolledBack",
    Transition.RETRIED: "CanaryRetried",
    Transition.RESTARTED: "CanaryRestarted",
}


@dataclass(frozen=True)
class PlanStep:
    weight_percent: float
    pause_seconds: float


@dataclass(frozen=True)
class Plan:
    """`spec.rollout`, parsed and frozen into the canary (`paused` is not part of it)."""

    steps: tuple[PlanStep, ...]
    interval_seconds: float = 60.0
    failure_limit: int = 2
    progress_deadline_seconds: float = 3600.0
    spec_hash: str = ""

    def to_status(self) -> dict[str, Any]:
        """Plain JSON (lists, not tuples), as status holds it."""
        return {**asdict(self), "steps": [asdict(step) for step in self.steps]}

    @classmethod
    def from_status(cls, document: Mapping[str, Any]) -> Plan:
        return cls(
            steps=tuple(
                PlanStep(float(s["weight_percent"]), float(s["pause_seconds"]))
                for s in document.get("steps") or []
            ),
            interval_seconds=float(document.get("interval_seconds", 60.0)),
            failure_limit=int(document.get("failure_limit", 2)),
            progress_deadline_seconds=float(document.get("progress_deadline_seconds", 3600.0)),
            spec_hash=str(document.get("spec_hash", "")),
        )


@dataclass(frozen=True)
class CanaryState:
    version: str
    phase: Phase
    step: int
    routing_generation: int
    started_at: float
    step_started_at: float
    plan: Plan | None = None
    """Frozen when the canary starts; None only in status from an older operator."""
    last_analysis_at: float | None = None
    passed_in_step: int = 0
    failures: int = 0
    inconclusive: int = 0
    paused_at: float | None = None
    paused_from: Phase | None = None
    reason: str = ""
    detail: str = ""
    """What `reason` does not say, e.g. why the serving pods could not load the canary."""
    last_verdict: dict[str, Any] | None = field(default=None, compare=False)

    def weight_basis_points(self) -> int:
        steps = self.plan.steps if self.plan is not None else ()
        if self.phase in TERMINAL or not steps:
            return 0
        return round(steps[min(self.step, len(steps) - 1)].weight_percent * 100)

    def to_status(self) -> dict[str, Any]:
        document = asdict(self)
        document["phase"] = self.phase.value
        document["paused_from"] = None if self.paused_from is None else self.paused_from.value
        if self.plan is None:
            document.pop("plan")
        else:
            document["plan"] = self.plan.to_status()
        return document

    @classmethod
    def from_status(cls, document: Mapping[str, Any]) -> CanaryState:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in document.items() if k in known}
        values["phase"] = Phase(values["phase"])
        if values.get("paused_from"):
            values["paused_from"] = Phase(values["paused_from"])
        if values.get("plan") is not None:
            values["plan"] = Plan.from_status(values["plan"])
        return cls(**values)


@dataclass(frozen=True)
class Tick:
    """What the operator saw this tick."""

    plan: Plan | None
    """The plan `spec.rollout` asks for now; None when it has no steps."""
    generation_applied: int | None
    verdict: Verdict | None = None
    manual: Manual | None = None
    paused: bool = False
    load_failure: str | None = None
    """Why serving pods could not load the canary version; None when none reports it."""
    generation_read: int | None = None
    """The lowest routing generation the pods have read. A pod holds `generation_applied`
    back while a routed version does not load, so a canary no pod can load is never applied:
    its failures count once the pods have read the routing that carries it."""


@dataclass(frozen=True)
class Decision:
    state: CanaryState
    transition: Transition | None = None
    message: str = ""


def start(version: str, generation: int, now: float, plan: Plan | None = None) -> CanaryState:
    """A gated version enters at the first step; the caller writes that weight."""
    return CanaryState(
        version=version,
        phase=Phase.WAITING,
        step=0,
        routing_generation=generation,
        started_at=now,
        step_started_at=now,
        plan=plan,
    )


def freeze(state: CanaryState, plan: Plan | None) -> CanaryState:
    """A state without a frozen plan takes the spec's (or none: an empty plan, which aborts)."""
    if state.plan is not None:
        return state
    return replace(state, plan=plan if plan is not None else Plan(steps=()))


def analysis_due(state: CanaryState, now: float) -> bool:
    if state.phase != Phase.PROGRESSING or state.plan is None:
        return False
    since = state.last_analysis_at if state.last_analysis_at is not None else state.step_started_at
    return now - since >= state.plan.interval_seconds


def stop(state: CanaryState, reason: str, detail: str) -> Decision:
    """The operator ends the canary for a reason of its own (superseded, pinned, ...)."""
    return _end(state, Phase.ROLLED_BACK, reason, f"Rolled back {state.version}: {detail}", detail)


def _end(state: CanaryState, phase: Phase, reason: str, message: str, detail: str = "") -> Decision:
    ended = replace(state, phase=phase, reason=reason, detail=detail, paused_at=None)
    transition = Transition.PROMOTED if phase == Phase.PROMOTED else Transition.ROLLED_BACK
    return Decision(ended, transition, message)


def _percent(weight: float) -> str:
    return f"{weight:g}%"


def advance(state: CanaryState, tick: Tick, now: float) -> Decision:
    """One tick of the rollout."""
    if state.phase in TERMINAL:
        if tick.manual == "retry" and state.phase == Phase.ROLLED_BACK and tick.plan is not None:
            again = start(state.version, state.routing_generation + 1, now, tick.plan)
            return Decision(again, Transition.RETRIED, f"Retrying {state.version} from step 1")
        return Decision(state)
    state = freeze(state, tick.plan)
    plan = state.plan
    assert plan is not None  # frozen just above
    if tick.manual == "abort":
        return _end(state, Phase.ROLLED_BACK, "Aborted", f"Aborted {state.version}")
    if tick.manual == "promote":
        return _end(state, Phase.PROMOTED, "PromotedManually", f"Promoted {state.version} by hand")

    applied = tick.generation_applied
    routed = applied is not None and applied >= state.routing_generation
    read = tick.generation_read is not None and tick.generation_read >= state.routing_generation
    if tick.load_failure and (routed or read):
        detail = f"the serving pods failed to load {state.version}: {tick.load_failure}"
        return _end(
            state,
            Phase.ROLLED_BACK,
            "CanaryLoadFailed",
            f"Rolled back {state.version}: {detail}; the stable version keeps serving",
            detail,
        )
    if tick.plan is None:
        detail = "spec.rollout has no steps any more, so the canary is aborted"
        return _end(
            state,
            Phase.ROLLED_BACK,
            "RolloutRemoved",
            f"Rolled back {state.version}: {detail}; the stable version keeps serving",
            detail,
        )
    if tick.plan.spec_hash != plan.spec_hash or state.step >= len(plan.steps):
        again = start(state.version, state.routing_generation + 1, now, tick.plan)
        if tick.paused:
            again = replace(again, phase=Phase.PAUSED, paused_at=now, paused_from=Phase.WAITING)
        first = _percent(tick.plan.steps[0].weight_percent)
        return Decision(
            again,
            Transition.RESTARTED,
            f"spec.rollout changed: restarting {state.version} at step 1 of "
            f"{len(tick.plan.steps)} (weight {first}) with the new plan",
        )

    if tick.paused:
        if state.phase == Phase.PAUSED:
            return Decision(state)
        paused = replace(state, phase=Phase.PAUSED, paused_at=now, paused_from=state.phase)
        return Decision(paused, Transition.PAUSED, f"Paused at step {state.step + 1}")
    if state.phase == Phase.PAUSED:
        # Resume where the pause left, with every clock shifted: paused time counts for nothing.
        held = now - (state.paused_at if state.paused_at is not None else now)
        state = replace(
            state,
            phase=state.paused_from or Phase.PROGRESSING,
            paused_at=None,
            paused_from=None,
            started_at=state.started_at + held,
            step_started_at=state.step_started_at + held,
            last_analysis_at=None
            if state.last_analysis_at is None
            else state.last_analysis_at + held,
        )
        return Decision(
            state, Transition.RESUMED, f"Resumed at step {state.step + 1} ({state.phase.value})"
        )

    if now - state.started_at > plan.progress_deadline_seconds:
        return _end(
            state,
            Phase.ROLLED_BACK,
            "ProgressDeadlineExceeded",
            f"Rolled back {state.version}: no promotion within "
            f"{plan.progress_deadline_seconds:.0f}s",
        )

    if state.phase == Phase.WAITING:
        if not routed:
            return Decision(state)
        measuring = replace(state, phase=Phase.PROGRESSING, step_started_at=now)
        return Decision(
            measuring,
            Transition.ROUTING_APPLIED,
            f"Step {state.step + 1}: serving pods apply the weight",
        )

    verdict = tick.verdict
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
                verdict.summary(),
            )
        return Decision(
            state,
            Transition.ANALYSIS_FAILED,
            f"Analysis failed ({failures}/{plan.failure_limit}): {verdict.summary()}",
        )
    if verdict.result == Result.INCONCLUSIVE:
        state = replace(state, inconclusive=state.inconclusive + 1)
        return Decision(
            state, Transition.INCONCLUSIVE, f"Analysis inconclusive, holding: {verdict.summary()}"
        )

    state = replace(state, passed_in_step=state.passed_in_step + 1, failures=0)
    if now - state.step_started_at < plan.steps[state.step].pause_seconds:
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
    weight = _percent(plan.steps[following.step].weight_percent)
    return Decision(
        following,
        Transition.STEP_ADVANCED,
        f"Step {following.step + 1}: canary weight {weight}",
    )


def rollout_hash(rollout: Mapping[str, Any]) -> str:
    """Identifies a `spec.rollout`; `paused` is left out (it acts on the running canary)."""
    relevant = {k: v for k, v in rollout.items() if k != "paused"}
    text = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_from_spec(rollout: Mapping[str, Any]) -> Plan | None:
    """The plan `spec.rollout` asks for; None without steps (no canary at all)."""
    steps = tuple(
        PlanStep(float(s.get("weight", 0)), parse_duration(s.get("pause", "0s")))
        for s in rollout.get("steps") or []
    )
    if not steps:
        return None
    analysis = rollout.get("analysis") or {}
    return Plan(
        steps=steps,
        interval_seconds=parse_duration(analysis.get("interval", "1m")),
        failure_limit=int(analysis.get("failureLimit", 2)),
        progress_deadline_seconds=parse_duration(rollout.get("progressDeadline", "1h")),
        spec_hash=rollout_hash(rollout),
    )
