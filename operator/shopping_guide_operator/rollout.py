"""The canary in the operator: status in, serving pods and Prometheus asked, status out.

`canary.py` decides; this module feeds it. Each pass reads the rollout from `status.canary`
(the only place it lives, so a restarted operator resumes at the same step and weight), asks
the metrics provider what the serving pods applied and, when an analysis is due, how canary and
stable did, advances the state machine once, and folds the outcome back into status: the
canary, the stable model, the history and the Events. The routing document is derived from that
status by reconcile, so a new weight, a promotion and a rollback reach the pods the same way.

Manual control arrives as annotations written by people (or the kubectl plugin). Each acts once
per distinct value: the handled value is kept in `status.manual`, and neither spec nor
annotations are ever written back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import canary as machine
from .analysis import Result, Thresholds, Verdict, VersionMetrics, analyse
from .canary import CanaryState, Decision, Manual, Phase, Plan
from .conditions import now_rfc3339
from .constants import (
    ANNOTATION_ABORT,
    ANNOTATION_PROMOTE,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK_TO,
)
from .prometheus_provider import MeasurementError, MetricsProvider, PrometheusProvider
from .spec import Guide
from .status import HISTORY_LIMIT, Event

ProviderFactory = Callable[[Guide], MetricsProvider | None]

# How often a pass runs while a canary is active: soon enough to see a new weight applied and
# to measure on time, whatever the resync period.
ACTIVE_REQUEUE_SECONDS = 10.0
WAITING_REQUEUE_SECONDS = 1.0

MANUAL_KEYS = {
    "promote": ANNOTATION_PROMOTE,
    "abort": ANNOTATION_ABORT,
    "retry": ANNOTATION_RETRY,
    "rollbackTo": ANNOTATION_ROLLBACK_TO,
}


def prometheus_provider(guide: Guide) -> MetricsProvider | None:
    """The provider `spec.rollout.analysis.prometheus` names; None without one.

    The selector defaults to this guide's serving pods, `{namespace, guide}`: every server
    metric carries the guide's name, so two guides in one namespace never mix their metrics.
    `prometheus.selector` replaces it (for setups that name the labels otherwise). An address
    the operator's allow-list refuses gives a provider that refuses every query.
    """
    config = ((guide.rollout or {}).get("analysis") or {}).get("prometheus") or {}
    address = config.get("address")
    if not address:
        return None
    selector = config.get("selector") or {"namespace": guide.namespace, "guide": guide.name}
    return PrometheusProvider(str(address), {str(k): str(v) for k, v in selector.items()})


def uses_canary(guide: Guide) -> bool:
    return bool((guide.rollout or {}).get("steps"))


def plan_of(guide: Guide) -> Plan:
    return machine.plan_from_spec(dict(guide.rollout or {}))


@dataclass
class Outcome:
    """What one pass of the rollout changed."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def active(status: Mapping[str, Any]) -> CanaryState | None:
    document = status.get("canary")
    if not document or not document.get("version"):
        return None
    return CanaryState.from_status(dict(document))


def canary_routing(status: Mapping[str, Any], guide: Guide) -> tuple[str | None, int]:
    """The canary version and weight (basis points) the routing must carry."""
    state = active(status)
    if state is None:
        return None, 0
    return state.version, state.weight_basis_points(plan_of(guide))


def begin(
    status: dict[str, Any], version: str, metrics: Mapping[str, Any], job: str, now: float
) -> list[Event]:
    """A gated version enters at the first step; a canary still running is superseded."""
    events: list[Event] = []
    old = active(status)
    if old is not None:
        events += _finish(status, old, "Superseded", f"superseded by {version}", now)
    generation = int((status.get("routing") or {}).get("generation", 0)) + 1
    state = machine.start(version, generation, now)
    status["canary"] = {**state.to_status(), "metrics": dict(metrics), "job": job}
    events.append(("Normal", "CanaryStarted", f"canary {version} starts at the first step"))
    return events


def _history(status: dict[str, Any], entry: dict[str, Any]) -> None:
    status["history"] = [entry, *(status.get("history") or [])][:HISTORY_LIMIT]


def _finish(
    status: dict[str, Any], state: CanaryState, outcome: str, reason: str, now: float
) -> list[Event]:
    """Clear the canary; record how it ended. The stable model served throughout."""
    document = dict(status.get("canary") or {})
    status["canary"] = None
    status["lastCanary"] = {**document, **state.to_status(), "weight": 0}
    entry: dict[str, Any] = {
        "version": state.version,
        "outcome": outcome,
        "reason": reason,
        "at": now_rfc3339(now),
        "metrics": dict(document.get("metrics") or {}),
    }
    if state.last_verdict:
        entry["analysis"] = state.last_verdict
    if document.get("job"):
        entry["job"] = document["job"]
    _history(status, entry)
    if outcome == "Promoted":
        status["stable"] = {
            "version": state.version,
            "metrics": dict(document.get("metrics") or {}),
            "job": document.get("job", ""),
            "promotedAt": now_rfc3339(now),
        }
        return [("Normal", "ModelPromoted", f"{state.version} is stable: {reason}")]
    return [("Warning", "CanaryRolledBack", f"{state.version} rolled back: {reason}")]


def new_manual(status: Mapping[str, Any], guide: Guide) -> dict[str, str]:
    """Manual requests whose annotation value has not been handled yet."""
    handled = status.get("manual") or {}
    fresh = {}
    for key, annotation in MANUAL_KEYS.items():
        value = guide.annotations.get(annotation)
        if value and value != handled.get(key):
            fresh[key] = value
    return fresh


async def _observe(
    provider: MetricsProvider,
    state: CanaryState,
    stable: str | None,
    plan: Plan,
    thresholds: Thresholds,
    now: float,
) -> tuple[int | None, Verdict | None, str | None]:
    """Generation applied, and a verdict when one is due; the error when Prometheus failed."""
    applied: int | None = None
    error: str | None = None
    try:
        applied = await provider.generation_applied()
    except MeasurementError as exc:
        error = str(exc)
    if not machine.analysis_due(state, plan, now):
        return applied, None, error
    try:
        measured = await provider.measure(state.version, plan.interval_seconds)
        baseline: VersionMetrics | None = None
        if stable is not None:
            baseline = await provider.measure(stable, plan.interval_seconds)
    except MeasurementError as exc:
        return applied, analyse(None, None, thresholds, unavailable=str(exc)), str(exc)
    return applied, analyse(measured, baseline, thresholds), error


def _event_of(message: str, state: CanaryState) -> Event:
    if state.phase == Phase.ROLLED_BACK:
        return ("Warning", "CanaryRolledBack", message)
    if state.phase == Phase.PROMOTED:
        return ("Normal", "CanaryPromoted", message)
    for prefix, kind, reason in (
        ("Analysis failed", "Warning", "CanaryAnalysisFailed"),
        ("Analysis inconclusive", "Normal", "CanaryInconclusive"),
        ("Paused", "Normal", "CanaryPaused"),
        ("Resumed", "Normal", "CanaryResumed"),
        ("Retrying", "Normal", "CanaryRetried"),
    ):
        if message.startswith(prefix):
            return (kind, reason, message)
    return ("Normal", "CanaryStep", message)


def _store(status: dict[str, Any], state: CanaryState, plan: Plan, error: str | None) -> None:
    previous = dict(status.get("canary") or {})
    document = {
        **{k: v for k, v in previous.items() if k in ("metrics", "job")},
        **state.to_status(),
        "weight": state.weight_basis_points(plan) / 100,
        "steps": len(plan.steps),
        "prometheusError": error,
    }
    status["canary"] = document


def progress(
    status: dict[str, Any],
    guide: Guide,
    providers: ProviderFactory,
    now: float,
) -> Outcome:
    """One pass of the rollout: manual requests, the pin, then one tick of the state machine."""
    events: list[Event] = []
    plan = plan_of(guide)
    requests = new_manual(status, guide)
    if requests:
        status["manual"] = {**(status.get("manual") or {}), **requests}
    manual: Manual | None = None
    if "abort" in requests:
        manual = "abort"
    elif "promote" in requests:
        manual = "promote"

    state = active(status)
    if guide.pinned_version and state is not None:
        pinned = f"serving is pinned to {guide.pinned_version}"
        events += _finish(status, state, "RolledBack", pinned, now)
        state = None
    if "retry" in requests:
        events += _retry(status, guide, plan, now)
        state = active(status)
    if state is None and manual is not None:
        events.append(("Warning", "NoCanary", f"nothing to {manual}: no canary is running"))
    if "rollbackTo" in requests:
        events += _rollback_to(status, guide, requests["rollbackTo"], now)
        state = active(status)
    if state is None:
        return Outcome(status, events)

    provider = providers(guide)
    stable = (status.get("stable") or {}).get("version")
    error: str | None = None
    if provider is None:
        # Without analysis the steps advance on their pauses alone.
        applied: int | None = state.routing_generation
        verdict: Verdict | None = None
        if machine.analysis_due(state, plan, now):
            verdict = Verdict(Result.PASS, ("no analysis configured",))
    else:
        thresholds = Thresholds.from_spec(dict((guide.rollout or {}).get("analysis") or {}))
        applied, verdict, error = asyncio.run(
            _observe(provider, state, stable, plan, thresholds, now)
        )
        was = (status.get("canary") or {}).get("prometheusError")
        if error and not was:
            events.append(("Warning", "PrometheusUnreachable", f"holding the canary: {error}"))
        elif was and not error:
            events.append(("Normal", "PrometheusReachable", "measuring the canary again"))

    decision = machine.advance(state, plan, machine.Observed(applied, verdict, manual), now)
    events += [_event_of(m, decision.state) for m in decision.events if m != "routing"]
    events += _apply(status, decision, plan, error, now)
    return Outcome(status, events, _requeue(decision, plan, now))


def _apply(
    status: dict[str, Any], decision: Decision, plan: Plan, error: str | None, now: float
) -> list[Event]:
    state = decision.state
    if state.phase == Phase.PROMOTED:
        reason = "promoted by hand" if state.reason == "PromotedManually" else "every step passed"
        return _finish(status, state, "Promoted", reason, now)
    if state.phase == Phase.ROLLED_BACK:
        verdict = state.last_verdict or {}
        detail = "; ".join(verdict.get("reasons") or []) if state.reason == "AnalysisFailed" else ""
        reason = state.reason + (f": {detail}" if detail else "")
        _finish(status, state, "RolledBack", reason, now)
        return []  # the state machine's own event already says it
    _store(status, state, plan, error)
    return []


def _requeue(decision: Decision, plan: Plan, now: float) -> float | None:
    state = decision.state
    if state.phase in machine.TERMINAL:
        return None  # this very pass already routes without the canary
    if state.phase == Phase.WAITING:
        return WAITING_REQUEUE_SECONDS
    since = state.last_analysis_at if state.last_analysis_at is not None else state.step_started_at
    due_in = since + plan.interval_seconds - now
    return max(0.5, min(ACTIVE_REQUEUE_SECONDS, plan.interval_seconds, due_in + 0.1))


def _retry(status: dict[str, Any], guide: Guide, plan: Plan, now: float) -> list[Event]:
    last = status.get("lastCanary") or {}
    if active(status) is not None or not last.get("version"):
        return [("Warning", "NoCanary", "nothing to retry: no rolled-back canary")]
    if guide.pinned_version:
        return [("Warning", "RetryRefused", f"serving is pinned to {guide.pinned_version}")]
    previous = CanaryState.from_status(dict(last))
    if previous.phase != Phase.ROLLED_BACK:
        return [("Warning", "NoCanary", f"{previous.version} was not rolled back")]
    generation = int((status.get("routing") or {}).get("generation", 0))
    previous = replace(previous, routing_generation=generation)
    decision = machine.advance(previous, plan, machine.Observed(None, manual="retry"), now)
    _store(status, decision.state, plan, None)
    status["canary"]["metrics"] = dict(last.get("metrics") or {})
    if last.get("job"):
        status["canary"]["job"] = last["job"]
    _history(
        status,
        {
            "version": previous.version,
            "outcome": "Canary",
            "reason": "retried by hand",
            "at": now_rfc3339(now),
            "metrics": dict(last.get("metrics") or {}),
        },
    )
    return [_event_of(m, decision.state) for m in decision.events if m != "routing"]


def _rollback_to(status: dict[str, Any], guide: Guide, value: str, now: float) -> list[Event]:
    version = value.split("@", 1)[0]
    if guide.pinned_version:
        refused = f"not rolling back to {version}: serving is pinned to {guide.pinned_version}"
        return [("Warning", "RollbackRefused", refused)]
    stable = status.get("stable") or {}
    if version == stable.get("version"):
        return [("Normal", "RollbackNoop", f"{version} is already stable")]
    known = next(
        (
            h
            for h in status.get("history") or []
            if h.get("version") == version and h.get("outcome") in ("Promoted", "Restored")
        ),
        None,
    )
    if known is None:
        refused = f"not rolling back to {version}: it was never stable (see status.history)"
        return [("Warning", "RollbackRefused", refused)]
    events: list[Event] = []
    state = active(status)
    if state is not None:
        events += _finish(status, state, "RolledBack", f"rollback to {version} requested", now)
    status["stable"] = {
        "version": version,
        "metrics": dict(known.get("metrics") or {}),
        "job": known.get("job", ""),
        "promotedAt": now_rfc3339(now),
    }
    reason = f"rolled back from {stable.get('version')} by hand"
    _history(
        status,
        {
            "version": version,
            "outcome": "Restored",
            "reason": reason,
            "at": now_rfc3339(now),
            "metrics": dict(known.get("metrics") or {}),
        },
    )
    events.append(("Normal", "RolledBackToVersion", f"{version} is stable again: {reason}"))
    return events
