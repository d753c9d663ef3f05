"""The canary in the operator: status in, serving pods and Prometheus asked, status out.

`canary.py` decides; this module feeds it. Each pass reads the rollout from `status.canary`
(the only place it lives, so a restarted operator resumes at the same step and weight), asks
the metrics provider what the serving pods applied, whether they could load the canary and,
when an analysis is due, how canary and stable did, advances the state machine once, and folds
the decision back into status (`_commit`, the one place that changes the canary in status):
the canary, the stable model, the history and the Events, whose type and reason come from the
decision's typed transition. The routing document is derived from that status by reconcile, so
a new weight, a promotion and a rollback reach the pods the same way.

The plan (steps, interval, failure limit, deadline) is frozen into `status.canary.plan` when
the canary starts, with a hash of the `spec.rollout` it came from; an edit of `spec.rollout`
during a canary restarts it at the first step of the new plan, removing the steps aborts it,
and `paused` acts on the running canary (see `canary.py`).

Prometheus is asked only at addresses the operator's configuration allows
(`prometheus_provider.AllowList`, set from `--prometheus-allowed-address` or
`SHOPPING_GUIDE_PROMETHEUS_ALLOWED_ADDRESSES`); a guide naming another address gets no query,
its canary holds, and status and an Event say why. The default selector is the guide's own
pods: `{namespace: <namespace>, guide: <name>}`.

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
from .canary import CanaryState, Decision, Manual, Phase, Plan, Tick, Transition
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


def spec_plan(guide: Guide) -> Plan | None:
    """The plan the guide's spec asks for now; None without steps."""
    return machine.plan_from_spec(dict(guide.rollout or {}))


@dataclass
class RolloutPass:
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
    return state.version, machine.freeze(state, spec_plan(guide)).weight_basis_points()


def begin(
    status: dict[str, Any], version: str, metrics: Mapping[str, Any], job: str, now: float
) -> list[Event]:
    """A gated version enters at the first step; a canary still running is superseded.

    The plan is frozen by the rollout's pass that follows in the same reconcile pass.
    """
    events: list[Event] = []
    old = active(status)
    if old is not None:
        events += _commit(status, machine.stop(old, "Superseded", f"{version} supersedes it"), now)
    generation = int((status.get("routing") or {}).get("generation", 0)) + 1
    started = Decision(
        machine.start(version, generation, now),
        Transition.STARTED,
        f"canary {version} starts at the first step",
    )
    return events + _commit(status, started, now, carried={"metrics": dict(metrics), "job": job})


def _history(status: dict[str, Any], entry: dict[str, Any]) -> None:
    status["history"] = [entry, *(status.get("history") or [])][:HISTORY_LIMIT]


def event_of(decision: Decision) -> list[Event]:
    """The Event of a decision's transition, typed by the transition itself."""
    if decision.transition is None:
        return []
    transition = decision.transition
    return [(transition.event_type, transition.event_reason, decision.message)]


def _commit(
    status: dict[str, Any],
    decision: Decision,
    now: float,
    error: str | None = None,
    carried: Mapping[str, Any] | None = None,
) -> list[Event]:
    """Every change of the canary in status: the running canary, or how it ended.

    `carried` is the canary document whose metrics and job the state keeps (the current one by
    default). An ended canary is cleared (the stable model served throughout), recorded in
    `lastCanary` and the history, and a promoted one becomes stable.
    """
    state = decision.state
    events = event_of(decision)
    previous = dict(carried if carried is not None else (status.get("canary") or {}))
    if state.phase not in machine.TERMINAL:
        status["canary"] = {
            **{k: v for k, v in previous.items() if k in ("metrics", "job")},
            **state.to_status(),
            "weight": state.weight_basis_points() / 100,
            "steps": len(state.plan.steps) if state.plan is not None else 0,
            "prometheusError": error,
        }
        return events
    status["canary"] = None
    status["lastCanary"] = {**previous, **state.to_status(), "weight": 0}
    if state.phase == Phase.PROMOTED:
        outcome = "Promoted"
        reason = "promoted by hand" if state.reason == "PromotedManually" else "every step passed"
    else:
        outcome = "RolledBack"
        reason = state.reason + (f": {state.detail}" if state.detail else "")
    entry: dict[str, Any] = {
        "version": state.version,
        "outcome": outcome,
        "reason": reason,
        "at": now_rfc3339(now),
        "metrics": dict(previous.get("metrics") or {}),
    }
    if state.last_verdict:
        entry["analysis"] = state.last_verdict
    if previous.get("job"):
        entry["job"] = previous["job"]
    _history(status, entry)
    if outcome == "Promoted":
        status["stable"] = {
            "version": state.version,
            "metrics": dict(previous.get("metrics") or {}),
            "job": previous.get("job", ""),
            "promotedAt": now_rfc3339(now),
        }
        events.append(("Normal", "ModelPromoted", f"{state.version} is stable: {reason}"))
    return events


def new_manual(status: Mapping[str, Any], guide: Guide) -> dict[str, str]:
    """Manual requests whose annotation value has not been handled yet."""
    handled = status.get("manual") or {}
    fresh = {}
    for key, annotation in MANUAL_KEYS.items():
        value = guide.annotations.get(annotation)
        if value and value != handled.get(key):
            fresh[key] = value
    return fresh


@dataclass(frozen=True)
class _Seen:
    applied: int | None = None
    verdict: Verdict | None = None
    load_failure: str | None = None
    error: MeasurementError | None = None
    read: int | None = None


async def _observe(
    provider: MetricsProvider,
    state: CanaryState,
    stable: str | None,
    thresholds: Thresholds,
    now: float,
) -> _Seen:
    """Generation applied, load failures of the canary, and a verdict when one is due."""
    applied: int | None = None
    read: int | None = None
    load_failure: str | None = None
    error: MeasurementError | None = None
    try:
        applied = await provider.generation_applied()
        read = await provider.generation_read()
        load_failure = await provider.load_failure(state.version)
    except MeasurementError as exc:
        error = exc
    if not machine.analysis_due(state, now) or state.plan is None:
        return _Seen(applied, None, load_failure, error, read)
    window = state.plan.interval_seconds
    try:
        measured = await provider.measure(state.version, window)
        baseline: VersionMetrics | None = None
        if stable is not None:
            baseline = await provider.measure(stable, window)
    except MeasurementError as exc:
        unavailable = analyse(None, None, thresholds, unavailable=str(exc))
        return _Seen(applied, unavailable, load_failure, exc, read)
    return _Seen(applied, analyse(measured, baseline, thresholds), load_failure, error, read)


def progress(
    status: dict[str, Any],
    guide: Guide,
    providers: ProviderFactory,
    now: float,
) -> RolloutPass:
    """One pass of the rollout: manual requests, the pin, then one tick of the state machine."""
    events: list[Event] = []
    wanted = spec_plan(guide)
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
        pinned = machine.stop(state, "Pinned", f"serving is pinned to {guide.pinned_version}")
        events += _commit(status, pinned, now)
        state = None
    if "retry" in requests:
        events += _retry(status, guide, wanted, now)
        state = active(status)
    if state is None and manual is not None:
        events.append(("Warning", "NoCanary", f"nothing to {manual}: no canary is running"))
    if "rollbackTo" in requests:
        events += _rollback_to(status, guide, requests["rollbackTo"], now)
        state = active(status)
    if state is None:
        return RolloutPass(status, events)

    state = machine.freeze(state, wanted)
    provider = providers(guide)
    stable = (status.get("stable") or {}).get("version")
    if provider is None:
        # Without analysis the steps advance on their pauses alone.
        passed = Verdict(Result.PASS, ("no analysis configured",))
        due = machine.analysis_due(state, now)
        seen = _Seen(state.routing_generation, passed if due else None)
    else:
        thresholds = Thresholds.from_spec(dict((guide.rollout or {}).get("analysis") or {}))
        seen = asyncio.run(_observe(provider, state, stable, thresholds, now))
        was = (status.get("canary") or {}).get("prometheusError")
        if seen.error and not was:
            reason = seen.error.event_reason
            events.append(("Warning", reason, f"holding the canary: {seen.error}"))
        elif was and not seen.error:
            events.append(("Normal", "PrometheusReachable", "measuring the canary again"))

    tick = Tick(
        plan=wanted,
        generation_applied=seen.applied,
        verdict=seen.verdict,
        manual=manual,
        paused=bool((guide.rollout or {}).get("paused", False)),
        load_failure=seen.load_failure,
        generation_read=seen.read,
    )
    decision = machine.advance(state, tick, now)
    error = None if seen.error is None else str(seen.error)
    events += _commit(status, decision, now, error)
    return RolloutPass(status, events, _requeue(decision, now))


def _requeue(decision: Decision, now: float) -> float | None:
    state = decision.state
    if state.phase in machine.TERMINAL:
        return None  # this very pass already routes without the canary
    if state.phase == Phase.WAITING:
        return WAITING_REQUEUE_SECONDS
    interval = state.plan.interval_seconds if state.plan is not None else ACTIVE_REQUEUE_SECONDS
    since = state.last_analysis_at if state.last_analysis_at is not None else state.step_started_at
    due_in = since + interval - now
    return max(0.5, min(ACTIVE_REQUEUE_SECONDS, interval, due_in + 0.1))


def _retry(status: dict[str, Any], guide: Guide, plan: Plan | None, now: float) -> list[Event]:
    last = status.get("lastCanary") or {}
    if active(status) is not None or not last.get("version"):
        return [("Warning", "NoCanary", "nothing to retry: no rolled-back canary")]
    if guide.pinned_version:
        return [("Warning", "RetryRefused", f"serving is pinned to {guide.pinned_version}")]
    if plan is None:
        return [("Warning", "RetryRefused", "spec.rollout has no steps to retry the canary on")]
    previous = CanaryState.from_status(dict(last))
    if previous.phase != Phase.ROLLED_BACK:
        return [("Warning", "NoCanary", f"{previous.version} was not rolled back")]
    generation = int((status.get("routing") or {}).get("generation", 0))
    previous = replace(previous, routing_generation=generation)
    decision = machine.advance(previous, Tick(plan, None, manual="retry"), now)
    events = _commit(status, decision, now, carried=last)
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
    return events


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
        ended = machine.stop(state, "RolledBackByHand", f"rollback to {version} requested")
        events += _commit(status, ended, now)
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
