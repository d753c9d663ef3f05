"""Conditions and phase: the part of status that `kubectl describe` and alerting read.

One helper sets a condition and keeps its lastTransitionTime unless the status flips, so a
pass that observes nothing new produces an identical status and no write. Reasons are
constants: dashboards and alerts match on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

READY = "Ready"
TRAINING = "Training"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, TRAINING, PROGRESSING, DEGRADED)

# Ready
AVAILABLE = "Available"
NO_STABLE_MODEL = "NoStableModel"
DEPLOYMENT_UNAVAILABLE = "DeploymentUnavailable"
# Training
JOB_RUNNING = "JobRunning"
WAITING_TO_RETRY = "WaitingToRetry"
IDLE = "Idle"
# Progressing
ROLLING_OUT = "RollingOut"
AWAITING_MODEL = "AwaitingFirstModel"
CONVERGED = "Converged"
CANARY = "CanaryInProgress"
# Degraded
HEALTHY = "Healthy"
TRAINING_FAILED = "TrainingFailed"
MODEL_REJECTED = "ModelRejected"
INVALID_SPEC = "InvalidSpec"
APPLY_FAILED = "ApplyFailed"
RECONCILE_ERROR = "ReconcileError"

# Phases, most urgent first: the first whose test holds is the phase.
PHASE_DEGRADED = "Degraded"
PHASE_READY = "Ready"
PHASE_TRAINING = "Training"
PHASE_PROGRESSING = "Progressing"
PHASE_PENDING = "Pending"


def now_rfc3339(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Seconds since the epoch; fractions and offsets as RFC 3339 allows them ('Z' too)."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


def set_conditions(
    previous: list[dict[str, Any]], wanted: list[Condition], now: float, generation: int
) -> list[dict[str, Any]]:
    """The wanted conditions, in CONDITION_TYPES order, keeping each lastTransitionTime
    for as long as the condition's status stays the same."""
    before = {c.get("type"): c for c in previous}
    out = []
    for condition in sorted(wanted, key=lambda c: CONDITION_TYPES.index(c.type)):
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": since or now_rfc3339(now),
                "observedGeneration": generation,
            }
        )
    return out


def is_true(conditions: list[dict[str, Any]], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def phase(conditions: list[dict[str, Any]]) -> str:
    if is_true(conditions, DEGRADED):
        return PHASE_DEGRADED
    if is_true(conditions, READY):
        return PHASE_READY
    if is_true(conditions, TRAINING):
        return PHASE_TRAINING
    if is_true(conditions, PROGRESSING):
        return PHASE_PROGRESSING
    return PHASE_PENDING


def transitions(
    previous: list[dict[str, Any]], current: list[dict[str, Any]]
) -> list[tuple[str, str, str]]:
    """(event type, reason, message) for each condition whose status or reason changed."""
    before = {c.get("type"): c for c in previous}
    events = []
    for condition in current:
        old = before.get(condition["type"])
        if old and (old.get("status"), old.get("reason")) == (
            condition["status"],
            condition["reason"],
        ):
            continue
        bad = (condition["type"], condition["status"]) == (DEGRADED, "True") or (
            condition["reason"] == DEPLOYMENT_UNAVAILABLE
        )
        kind = "Warning" if bad else "Normal"
        events.append(
            (
                kind,
                condition["reason"],
                f"{condition['type']}={condition['status']}: {condition['message']}",
            )
        )
    return events
