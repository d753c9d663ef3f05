"""The whole status of one pass, computed from what was observed. Pure.

Reconcile gathers observations, this module turns them into the next status document and the
events that explain the change; reconcile then writes the status once, and only if it differs.
`canary` belongs to the rollout (`rollout.py`); a model that passes the gate enters it, or
becomes stable directly when there is no stable model yet or no rollout steps.
`routing.generation` rises with every change of the routing
document, which is how serving pods (and later the rollout) tell routings apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shopping_guide_contracts.routing import Routing

from . import conditions as c
from .conditions import Condition, now_rfc3339
from .runs import Finished

HISTORY_LIMIT = 10
Event = tuple[str, str, str]  # (Normal|Warning, reason, message)


@dataclass(frozen=True)
class DeploymentView:
    exists: bool
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    available: bool = False

    @classmethod
    def of(cls, live: Mapping[str, Any] | None) -> DeploymentView:
        if live is None:
            return cls(exists=False)
        status = live.get("status") or {}
        available = any(
            x.get("type") == "Available" and x.get("status") == "True"
            for x in status.get("conditions") or []
        )
        return cls(
            exists=True,
            generation=int(live.get("metadata", {}).get("generation", 0)),
            observed_generation=int(status.get("observedGeneration", 0)),
            replicas=int(status.get("replicas", 0)),
            ready=int(status.get("readyReplicas", 0)),
            updated=int(status.get("updatedReplicas", 0)),
            available=available,
        )

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.replicas
            and self.ready >= self.replicas
        )


Admission = str  # what a gated model becomes: "stable", "canary", or "held" (serving pinned)


def record_finished(
    status: dict[str, Any], finished: Finished, now: float, admission: Admission = "stable"
) -> tuple[dict[str, Any], list[Event]]:
    """Fold one judged training run into status: last run, history, maybe a new stable."""
    status = dict(status)
    run: dict[str, Any] = {
        "job": finished.job,
        "trigger": finished.trigger,
        "outcome": finished.outcome,
        "message": finished.message,
        "finishedAt": now_rfc3339(finished.finished_at),
    }
    if finished.started_at is not None:
        run["startedAt"] = now_rfc3339(finished.started_at)
    if finished.version:
        run["version"] = finished.version
        run["metrics"] = dict(finished.metrics)
    status["lastTrainingRun"] = run
    events: list[Event] = []
    if finished.outcome == "Failed":
        events.append(("Warning", c.TRAINING_FAILED, f"{finished.job}: {finished.message}"))
        return status, events

    outcome: str = finished.outcome
    if finished.outcome == "Promoted" and admission != "stable":
        outcome = "Canary" if admission == "canary" else "Held"
    entry = {
        "version": finished.version,
        "outcome": outcome,
        "reason": finished.message,
        "job": finished.job,
        "at": now_rfc3339(now),
        "metrics": dict(finished.metrics),
    }
    status["history"] = [entry, *(status.get("history") or [])][:HISTORY_LIMIT]
    if outcome == "Canary":
        gated = f"{finished.version} passed the quality gate ({finished.message}): canary starts"
        events.append(("Normal", "ModelGated", gated))
    elif outcome == "Held":
        held = f"{finished.version} passed the quality gate, not promoted: serving is pinned"
        events.append(("Normal", "ModelHeld", held))
    elif finished.outcome == "Promoted":
        status["stable"] = {
            "version": finished.version,
            "metrics": dict(finished.metrics),
            "job": finished.job,
            "promotedAt": now_rfc3339(now),
        }
        events.append(
            ("Normal", "ModelPromoted", f"{finished.version} is stable: {finished.message}")
        )
    else:
        rejected = f"{finished.version} rejected by the quality gate: {finished.message}"
        events.append(("Warning", c.MODEL_REJECTED, rejected))
    return status, events


def next_routing(
    previous: Mapping[str, Any] | None,
    stable: str | None,
    salt: str,
    canary: str | None = None,
    weight_basis_points: int = 0,
    models_rewritten: bool = False,
) -> Routing:
    """The routing for this pass; the generation rises only when the content changes.
    `models_rewritten` (users were forgotten) raises the models revision, which makes every
    pod load its versions again."""
    previous = previous or {}
    generation = int(previous.get("generation", 0))
    revision = int(previous.get("modelsRevision", 0)) + (1 if models_rewritten else 0)
    if canary is None:
        weight_basis_points = 0
    before = (
        previous.get("stable"),
        previous.get("canary"),
        round(float(previous.get("weight", 0)) * 100),
        int(previous.get("modelsRevision", 0)),
    )
    if before != (stable, canary, weight_basis_points, revision) or not previous:
        generation += 1
    return Routing(
        stable=stable,
        canary=canary,
        canary_weight_basis_points=weight_basis_points,
        salt=salt,
        generation=generation,
        models_revision=revision,
    )


def routing_status(routing: Routing, configmap: str) -> dict[str, Any]:
    return {
        "configMap": configmap,
        "generation": routing.generation,
        "stable": routing.stable,
        "canary": routing.canary,
        "weight": routing.canary_weight_basis_points / 100,
        "modelsRevision": routing.models_revision,
    }


@dataclass(frozen=True)
class Observed:
    generation: int
    spec_error: str | None = None
    apply_errors: tuple[str, ...] = ()
    deployment: DeploymentView = field(default_factory=lambda: DeploymentView(exists=False))
    active_jobs: tuple[str, ...] = ()
    next_attempt_at: str | None = None


def wanted_conditions(status: Mapping[str, Any], seen: Observed) -> list[Condition]:
    # What serves as stable: the pin wins over the last promoted version.
    stable = (status.get("routing") or {}).get("stable") or (status.get("stable") or {}).get(
        "version"
    )
    last = status.get("lastTrainingRun") or {}
    deployment = seen.deployment

    if stable is None:
        ready = Condition(
            c.READY, False, c.NO_STABLE_MODEL, "no model has passed the quality gate yet"
        )
    elif not deployment.exists:
        ready = Condition(
            c.READY, False, c.DEPLOYMENT_UNAVAILABLE, "the serving Deployment does not exist yet"
        )
    elif deployment.available and deployment.ready > 0:
        ready = Condition(
            c.READY, True, c.AVAILABLE, f"serving {stable} from {deployment.ready} ready pods"
        )
    else:
        counts = f"{deployment.ready}/{deployment.replicas} serving pods ready"
        ready = Condition(c.READY, False, c.DEPLOYMENT_UNAVAILABLE, counts)

    if seen.active_jobs:
        training = Condition(
            c.TRAINING, True, c.JOB_RUNNING, f"training Job {', '.join(seen.active_jobs)} running"
        )
    elif seen.next_attempt_at:
        training = Condition(
            c.TRAINING, False, c.WAITING_TO_RETRY, f"next attempt at {seen.next_attempt_at}"
        )
    else:
        detail = f"last run {last['job']}: {last['outcome']}" if last else "no training run yet"
        training = Condition(c.TRAINING, False, c.IDLE, detail)

    if stable is None:
        progressing = Condition(
            c.PROGRESSING,
            True,
            c.AWAITING_MODEL,
            "waiting for the first model to pass the quality gate",
        )
    elif not deployment.exists or not deployment.rolled_out:
        progressing = Condition(
            c.PROGRESSING,
            True,
            c.ROLLING_OUT,
            f"rolling out the serving Deployment ({deployment.updated}/"
            f"{deployment.replicas} updated)",
        )
    else:
        progressing = Condition(c.PROGRESSING, False, c.CONVERGED, f"serving {stable}")
    canary = status.get("canary") or {}
    if canary.get("version"):
        step = f"step {int(canary.get('step', 0)) + 1}/{canary.get('steps', '?')}"
        progressing = Condition(
            c.PROGRESSING,
            True,
            c.CANARY,
            f"canary {canary['version']} at {canary.get('weight', 0)}% ({step}, "
            f"{canary.get('phase', '')})",
        )

    if seen.spec_error:
        degraded = Condition(c.DEGRADED, True, c.INVALID_SPEC, seen.spec_error)
    elif seen.apply_errors:
        degraded = Condition(c.DEGRADED, True, c.APPLY_FAILED, "; ".join(seen.apply_errors))
    elif last.get("outcome") == "Failed":
        degraded = Condition(c.DEGRADED, True, c.TRAINING_FAILED, str(last.get("message", "")))
    elif last.get("outcome") == "Rejected" and stable is None:
        degraded = Condition(
            c.DEGRADED, True, c.MODEL_REJECTED, f"{last.get('version')}: {last.get('message', '')}"
        )
    else:
        degraded = Condition(c.DEGRADED, False, c.HEALTHY, "no problem observed")
    return [ready, training, progressing, degraded]


def finish(
    status: dict[str, Any], seen: Observed, now: float
) -> tuple[dict[str, Any], list[Event]]:
    """Conditions, phase, message and observedGeneration: the last step of a pass."""
    status = dict(status)
    previous = list(status.get("conditions") or [])
    status["conditions"] = c.set_conditions(
        previous, wanted_conditions(status, seen), now, seen.generation
    )
    status["phase"] = c.phase(status["conditions"])
    by_type = {x["type"]: x for x in status["conditions"]}
    lead = {
        c.PHASE_DEGRADED: c.DEGRADED,
        c.PHASE_READY: c.READY,
        c.PHASE_TRAINING: c.TRAINING,
        c.PHASE_PROGRESSING: c.PROGRESSING,
    }.get(status["phase"], c.READY)
    status["message"] = by_type[lead]["message"]
    status["observedGeneration"] = seen.generation
    status["readyReplicas"] = seen.deployment.ready
    return prune_none(status), c.transitions(previous, status["conditions"])


def prune_none(value: Any) -> Any:
    """Drop null members: a merge patch reads null as "delete", so stored status has none."""
    if isinstance(value, dict):
        return {k: prune_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_none(v) for v in value]
    return value
