"""One level-based pass over one ShoppingGuide: observe, decide, apply, write status once.

Every pass re-reads the guide and its children and computes everything from them and from
status, so it does not matter which event woke it, how many were missed, or whether the
operator restarted in between. Builders and the decisions are pure; this module only wires
them to the `Cluster` and counts nothing but what it observes.
"""

from __future__ import annotations

import copy
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shopping_guide_contracts.routing import CONFIGMAP_KEY, RoutingError
from shopping_guide_contracts.routing import parse as parse_routing

from . import conditions as c
from . import erasure, rollout, runs, trending_refresh
from .builders.attribution import attribution_secret_name, build_attribution_secret
from .builders.common import cronjob_name, routing_configmap_name
from .builders.deployment import build_deployment
from .builders.erasure import COMPONENT_ERASURE, build_erasure_job
from .builders.hpa import build_hpa
from .builders.networkpolicy import build_network_policy
from .builders.pdb import build_pdb
from .builders.routing import build_routing_configmap
from .builders.service import build_service
from .builders.training import TRIGGER_SCHEDULE, build_cronjob, build_job
from .builders.trending import COMPONENT_TRENDING, build_trending_job
from .conditions import parse_rfc3339
from .constants import (
    COMPONENT_TRAINING,
    LABEL_COMPONENT,
    LABEL_GUIDE,
    LABEL_TRIGGER,
    TRAINER_CONTAINER,
)
from .kube import (
    ApiError,
    Cluster,
    ConflictError,
    NotOwnedError,
    create_owned,
    ensure,
    ensure_absent,
    owned_by,
    status_patch,
)
from .spec import JSON, Guide, SpecError
from .status import (
    DeploymentView,
    Event,
    Observed,
    finish,
    next_routing,
    record_finished,
    routing_status,
)

log = logging.getLogger(__name__)

# Set by the Job controller on every pod of a Job (Kubernetes 1.27+).
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"

RESYNC_SECONDS = 60.0
BUSY_SECONDS = 15.0
ERROR_SECONDS = 10.0


@dataclass
class PassResult:
    body: JSON
    events: list[Event] = field(default_factory=list)
    requeue_after: float = RESYNC_SECONDS


def job_view(job: JSON) -> runs.JobView:
    meta, status = job.get("metadata", {}), job.get("status") or {}
    trigger = (meta.get("labels") or {}).get(LABEL_TRIGGER, "")
    uid = str(meta.get("uid", ""))
    started = parse_rfc3339(status.get("startTime"))
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            finished = parse_rfc3339(
                status.get("completionTime") or condition.get("lastTransitionTime")
            )
            return runs.JobView(meta["name"], trigger, "Succeeded", started, finished, uid=uid)
        if condition.get("type") == "Failed":
            reason = condition.get("message") or condition.get("reason") or ""
            finished = parse_rfc3339(condition.get("lastTransitionTime"))
            return runs.JobView(meta["name"], trigger, "Failed", started, finished, reason, uid)
    return runs.JobView(meta["name"], trigger, "Active", started, uid=uid)


def training_jobs(cluster: Cluster, guide: Guide) -> list[runs.JobView]:
    """Our on-demand Jobs, and the Jobs our CronJob created (owned by the CronJob)."""
    items = cluster.list(
        "Job", guide.namespace, {LABEL_GUIDE: guide.name, LABEL_COMPONENT: COMPONENT_TRAINING}
    )
    mine = []
    for job in items:
        refs = job.get("metadata", {}).get("ownerReferences") or []
        from_cron = any(
            r.get("kind") == "CronJob" and r.get("name") == cronjob_name(guide) for r in refs
        )
        if owned_by(job, guide.uid) or from_cron:
            mine.append(job_view(job))
    return mine


def termination_message(cluster: Cluster, namespace: str, job: runs.JobView) -> str | None:
    """The trainer's result: the termination message of the Job's last terminated pod.

    Pods are chosen by the Job's uid as well as its name: a Job deleted and re-created under
    the same name (by anyone) must not lend its result to ours.
    """
    selector = {"batch.kubernetes.io/job-name": job.name}
    if job.uid:
        selector[JOB_UID_LABEL] = job.uid
    pods = cluster.list("Pod", namespace, selector)
    pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""), reverse=True)
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != TRAINER_CONTAINER:
                continue
            for state in (status.get("state"), status.get("lastState")):
                message = ((state or {}).get("terminated") or {}).get("message")
                if message:
                    return str(message)
    return None


def _write_status(cluster: Cluster, guide_body: JSON, old: JSON, new: JSON) -> bool:
    patch = status_patch(old, new)
    if patch is None:
        return False
    meta = guide_body["metadata"]
    try:
        cluster.patch_status(meta["namespace"], meta["name"], patch, meta.get("resourceVersion"))
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _fail_spec(cluster: Cluster, body: JSON, error: str, now: float) -> PassResult:
    old = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 0))
    new, events = finish(copy.deepcopy(old), Observed(generation, spec_error=error), now)
    _write_status(cluster, body, old, new)
    return PassResult(body, events, RESYNC_SECONDS)


# Kubernetes caps a condition message at 32 KiB; a traceback-sized text helps nobody there.
FAILURE_MESSAGE_LIMIT = 1000


def report_failure(
    cluster: Cluster, namespace: str, name: str, error: str, now: float
) -> PassResult | None:
    """A pass that raised: say so where users look, `Degraded=True` (ReconcileError) and an
    Event on the transition. Best effort: the caller ignores a failure of this write too.
    Only the Degraded condition changes; what the failed pass did not observe stays as it was.
    """
    body = cluster.get("ShoppingGuide", namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    old: JSON = body.get("status") or {}
    previous = list(old.get("conditions") or [])
    kept = [
        c.Condition(x["type"], x.get("status") == "True", x.get("reason", ""), x.get("message", ""))
        for x in previous
        if x.get("type") in c.CONDITION_TYPES and x.get("type") != c.DEGRADED
    ]
    message = f"reconcile failed: {error}"[:FAILURE_MESSAGE_LIMIT]
    degraded = c.Condition(c.DEGRADED, True, c.RECONCILE_ERROR, message)
    generation = int(body["metadata"].get("generation", 0))
    new = dict(old)
    new["conditions"] = c.set_conditions(previous, [*kept, degraded], now, generation)
    new["phase"] = c.phase(new["conditions"])
    new["message"] = message
    _write_status(cluster, body, old, new)
    return PassResult(body, c.transitions(previous, new["conditions"]), ERROR_SECONDS)


def _create_job(cluster: Cluster, job: JSON, guide: Guide, purpose: str) -> str | None:
    """Create a Job (`purpose`: training, erasure); the error for status, or None when the
    Job is (now) ours."""
    name = job["metadata"]["name"]
    try:
        create_owned(cluster, job, guide.uid)
    except NotOwnedError:
        return (
            f"{purpose} Job {name} already exists and is not owned by this ShoppingGuide; "
            f"delete it to let the {purpose} run"
        )
    except ApiError as exc:
        return f"{purpose} Job {name}: {exc.message}"
    return None


def _ensure_attribution_key(cluster: Cluster, guide: Guide) -> str | None:
    """The serving pods' shared signing key: created once with a random key, never rewritten
    (a new key would make the ids already issued unattributable); the error for status."""
    name = attribution_secret_name(guide)
    live = cluster.get("Secret", guide.namespace, name)
    if live is not None:
        if owned_by(live, guide.uid):
            return None
        return f"Secret {name} already exists and is not owned by this ShoppingGuide"
    try:
        create_owned(cluster, build_attribution_secret(guide, secrets.token_urlsafe(32)), guide.uid)
    except NotOwnedError as exc:
        return str(exc)
    except ApiError as exc:
        return f"Secret {name}: {exc.message}"
    return None


def recover_stable(cluster: Cluster, guide: Guide, status: dict[str, Any]) -> list[Event]:
    """A status without a stable model (restored from a backup, reset by hand) takes it back
    from the routing ConfigMap the pods serve from, generation included, so that the next
    routing never drops the model every pod is serving (they would all answer 503)."""
    if (status.get("stable") or {}).get("version"):
        return []
    routed = (status.get("routing") or {}).get("stable")
    if routed and routed != guide.pinned_version:
        status["stable"] = {"version": routed, "recoveredFrom": "status.routing"}
        return [
            ("Warning", "StableRecovered", f"status had no stable model; {routed} still routed")
        ]
    live = cluster.get("ConfigMap", guide.namespace, routing_configmap_name(guide))
    if live is None or not owned_by(live, guide.uid):
        return []
    try:
        routing = parse_routing(str((live.get("data") or {}).get(CONFIGMAP_KEY, "")))
    except RoutingError:
        return []
    if routing.stable is None:
        return []
    status["stable"] = {"version": routing.stable, "recoveredFrom": "routing ConfigMap"}
    # The canary, if any, is not resumed: its analysis state went with the status.
    kept = replace(routing, canary=None, canary_weight_basis_points=0)
    status["routing"] = routing_status(kept, routing_configmap_name(guide))
    recovered = f"status had no stable model; {routing.stable} recovered from the routing"
    return [("Warning", "StableRecovered", recovered)]


def reconcile(
    cluster: Cluster,
    namespace: str,
    name: str,
    now: float,
    resync: float = RESYNC_SECONDS,
    providers: rollout.ProviderFactory = rollout.prometheus_provider,
) -> PassResult | None:
    """One pass; None when the guide is gone or going (owner references clean up)."""
    body = cluster.get("ShoppingGuide", namespace, name)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        guide = Guide.parse(body)
    except SpecError as exc:
        return _fail_spec(cluster, body, str(exc), now)

    old: JSON = body.get("status") or {}
    status: dict[str, Any] = copy.deepcopy(old)
    events: list[Event] = recover_stable(cluster, guide, status)
    stable: str | None = (status.get("stable") or {}).get("version")
    errors: list[str] = []

    reader: Callable[[runs.JobView], str | None] = lambda job: termination_message(  # noqa: E731
        cluster, namespace, job
    )
    jobs = training_jobs(cluster, guide)
    requests = erasure.requests_for(_erasure_requests(cluster, namespace), guide.name)
    erasing = _component_jobs(cluster, guide, COMPONENT_ERASURE) if requests else {}
    busy = next((j.name for j in erasing.values() if j.state == "Active"), None)
    step = runs.advance(status.get("training") or {}, guide, stable, jobs, now, reader, busy)
    status["training"] = step.training
    if step.create is not None:
        job = build_job(
            guide, step.create.run_key, step.create.attempt, step.create.trigger, stable, status
        )
        error = _create_job(cluster, job, guide, "training")
        if error is None:
            started = f"started {job['metadata']['name']} ({step.create.trigger})"
            events.append(("Normal", "TrainingStarted", started))
        else:
            errors.append(error)
    scheduled = {j.name for j in jobs if j.trigger == TRIGGER_SCHEDULE}
    for superseded in step.delete:
        why = (
            "an on-demand run trains the same store now"
            if superseded in scheduled
            else "the model spec changed"
        )
        try:
            cluster.delete("Job", namespace, superseded)
            events.append(("Normal", "TrainingSuperseded", f"stopped {superseded}: {why}"))
        except ApiError as exc:
            errors.append(f"Job {superseded}: {exc.message}")
    refresh, refresh_errors = _refresh_trending(cluster, guide, status, requests, busy, now, reader)
    events, errors = events + list(refresh.events), errors + refresh_errors
    rewritten = refresh.rewritten
    if refresh.start is not None:
        events.append(("Normal", "TrendingRefreshStarted", f"started {refresh.start}"))
    if requests:
        # One rewriter of versions at a time: an erasure waits for training and a refresh.
        writing = bool(step.active) or refresh.busy is not None
        erased = _erase(cluster, guide, status, requests, erasing, writing, now, reader)
        events, errors, rewritten = events + erased[0], errors + erased[1], rewritten or erased[2]
    if step.finished is not None:
        events += _admit(status, step.finished, guide, stable, now)
    progressed = rollout.progress(status, guide, providers, now)
    events += progressed.events
    stable = (status.get("stable") or {}).get("version")
    # A pin decides what serves; the operator's own choice of stable stays in status.stable.
    served = guide.pinned_version or stable
    canary, weight = rollout.canary_routing(status, guide)
    routing = next_routing(
        status.get("routing"), served, guide.routing_salt, canary, weight, rewritten
    )
    status["routing"] = routing_status(routing, routing_configmap_name(guide))
    if canary is not None:
        # The generation that carries this weight is the one the pods must report.
        status["canary"]["routing_generation"] = routing.generation

    wanted: list[JSON] = [build_routing_configmap(guide, routing), build_service(guide)]
    absent: list[tuple[str, str]] = []
    cronjob = build_cronjob(guide, stable, status)
    suspend = False
    if cronjob is not None and (step.create is not None or _on_demand_active(step, jobs)):
        # One training at a time: no scheduled run while an on-demand one trains.
        suspend = True
    if cronjob is not None:
        # Always set, so that lifting the suspension is an apply like any other.
        cronjob["spec"]["suspend"] = suspend
    optional = [("CronJob", cronjob_name(guide), cronjob)]
    if served is not None:
        # Serving starts once a model passed the gate: before that a pod has nothing to load.
        wanted.append(build_deployment(guide))
        optional += [
            ("HorizontalPodAutoscaler", guide.name, build_hpa(guide)),
            ("PodDisruptionBudget", guide.name, build_pdb(guide)),
            ("NetworkPolicy", guide.name, build_network_policy(guide)),
        ]
    for kind, child, manifest in optional:
        if manifest is None:
            absent.append((kind, child))
        else:
            wanted.append(manifest)

    if served is not None:
        key_error = _ensure_attribution_key(cluster, guide)
        if key_error is not None:
            errors.append(key_error)
    deployment: JSON | None = None
    for manifest in wanted:
        try:
            live, _ = ensure(cluster, manifest, guide.uid)
        except (ApiError, NotOwnedError) as exc:
            errors.append(f"{manifest['kind']} {manifest['metadata']['name']}: {exc}")
            continue
        if manifest["kind"] == "Deployment":
            deployment = live
    for kind, child in absent:
        try:
            ensure_absent(cluster, kind, namespace, child, guide.uid)
        except ApiError as exc:
            errors.append(f"{kind} {child}: {exc.message}")

    waiting = None if step.active else step.training.get("nextAttemptAt")
    seen = Observed(
        generation=guide.generation,
        apply_errors=tuple(errors),
        deployment=DeploymentView.of(deployment),
        active_jobs=step.active,
        next_attempt_at=waiting,
    )
    new, condition_events = finish(status, seen, now)
    try:
        _write_status(cluster, body, old, new)
    except ConflictError:
        # The guide changed since this pass read it (an edit, or another writer): this
        # status was computed from a stale read. Nothing is written; the next pass, at once,
        # reads again and computes it anew (the actions above are idempotent).
        return PassResult(body, events, 0.0)
    requeue = _requeue(step, seen, now, resync, progressed.requeue_after)
    return PassResult(body, events + condition_events, requeue)


def _erasure_requests(cluster: Cluster, namespace: str) -> list[JSON]:
    try:
        return cluster.list(erasure.KIND, namespace, {})
    except ApiError as exc:
        if exc.status != 404:
            raise
        # An installation without the erasure CRD (an older chart): nothing to erase.
        log.debug("no %s resource: %s", erasure.KIND, exc.message)
        return []


def _component_jobs(cluster: Cluster, guide: Guide, component: str) -> dict[str, runs.JobView]:
    items = cluster.list(
        "Job", guide.namespace, {LABEL_GUIDE: guide.name, LABEL_COMPONENT: component}
    )
    return {j["metadata"]["name"]: job_view(j) for j in items if owned_by(j, guide.uid)}


def _refresh_trending(
    cluster: Cluster,
    guide: Guide,
    status: dict[str, Any],
    requests: list[erasure.Request],
    erasing: str | None,
    now: float,
    reader: Callable[[runs.JobView], str | None],
) -> tuple[trending_refresh.RefreshStep, list[str]]:
    """Judge the trending refresh of status, or start one when due; an erasure running or
    waiting goes first (a refresh would rewrite the versions it rewrites)."""
    previous = status.get("trending") or {}
    every = guide.serving.trending_refresh_every
    if every is None and not previous:
        return trending_refresh.RefreshStep(), []
    pending = next((r.name for r in requests if r.phase not in erasure.DONE), None)
    busy = erasing or (f"{erasure.KIND} {pending}" if pending else None)
    served = guide.pinned_version or (status.get("stable") or {}).get("version")
    jobs = _component_jobs(cluster, guide, COMPONENT_TRENDING)
    step = trending_refresh.advance(guide.name, previous, every, jobs, served, busy, now, reader)
    errors: list[str] = []
    if step.start is not None:
        error = _create_job(cluster, build_trending_job(guide, step.start), guide, "trending")
        if error is not None:
            # Nothing runs: status keeps what it said, and the next pass tries again.
            errors.append(error)
            return replace(step, start=None, busy=None, status=dict(previous)), errors
    if step.status:
        status["trending"] = step.status
    return step, errors


def _erase(
    cluster: Cluster,
    guide: Guide,
    status: dict[str, Any],
    requests: list[erasure.Request],
    jobs: dict[str, runs.JobView],
    training_active: bool,
    now: float,
    reader: Callable[[runs.JobView], str | None],
) -> tuple[list[Event], list[str], bool]:
    """Erasure requests for this guide: start the next, record the finished ones; true when
    versions were rewritten, so that the serving pods load them again (the routing's
    `modelsRevision` rises in this pass)."""
    step = erasure.advance(guide.name, requests, jobs, training_active, now, reader)
    events: list[Event] = []
    errors: list[str] = []
    statuses = dict(step.statuses)
    if step.start is not None:
        error = _create_job(cluster, build_erasure_job(guide, step.start), guide, "erasure")
        if error is not None:
            errors.append(error)
            statuses.pop(step.start.name, None)
        else:
            events.append(("Normal", "ErasureStarted", statuses[step.start.name]["message"]))
    revision = int((status.get("routing") or {}).get("modelsRevision", 0)) + 1
    by_name = {r.name: r for r in requests}
    for name, update in statuses.items():
        wanted = dict(update)
        if wanted["phase"] == erasure.SUCCEEDED:
            wanted["routingRevision"] = revision
            events.append(("Normal", "UsersForgotten", f"{name}: {wanted['message']}"))
        elif wanted["phase"] == erasure.FAILED:
            events.append(("Warning", "ErasureFailed", f"{name}: {wanted['message']}"))
        stored = by_name[name].status
        if all(stored.get(key) == value for key, value in wanted.items()):
            continue
        try:
            cluster.patch_status(guide.namespace, name, {"status": wanted}, None, kind=erasure.KIND)
        except ApiError as exc:
            errors.append(f"{erasure.KIND} {name}: {exc.message}")
    return events, errors, bool(step.finished)


def _on_demand_active(step: runs.Step, jobs: list[runs.JobView]) -> bool:
    superseded = set(step.delete)
    return any(
        j.trigger != TRIGGER_SCHEDULE and j.state == "Active" and j.name not in superseded
        for j in jobs
    )


def _admit(
    status: dict[str, Any], finished: runs.Finished, guide: Guide, stable: str | None, now: float
) -> list[Event]:
    """A judged run into status; a gated model becomes stable, a canary, or waits (pinned)."""
    admission = "stable"
    if finished.version is not None and finished.version == stable and finished.outcome != "Failed":
        # The run of the model that already serves, judged again because status was lost:
        # it restores the stable model's metrics and history, it is not a new candidate.
        finished = replace(finished, outcome="Promoted", message="the model serving as stable")
    elif finished.outcome == "Promoted":
        if guide.pinned_version:
            admission = "held"
        elif stable is not None and rollout.uses_canary(guide):
            admission = "canary"
    recorded, events = record_finished(status, finished, now, admission)
    status.clear()
    status.update(recorded)
    if admission == "canary" and finished.version:
        events += rollout.begin(status, finished.version, finished.metrics, finished.job, now)
    return events


def _requeue(
    step: runs.Step, seen: Observed, now: float, resync: float, rollout_after: float | None
) -> float:
    if step.finished is not None:
        return 0.0  # another finished Job may be waiting to be judged
    delays = [resync]
    if rollout_after is not None:
        delays.append(rollout_after)
    retry_at = parse_rfc3339(seen.next_attempt_at)
    if retry_at is not None:
        delays.append(max(0.5, retry_at - now + 0.5))
    if seen.apply_errors:
        delays.append(ERROR_SECONDS)
    if step.active or (seen.deployment.exists and not seen.deployment.rolled_out):
        delays.append(BUSY_SECONDS)
    return min(delays)


__all__ = ["TRIGGER_SCHEDULE", "PassResult", "reconcile"]
