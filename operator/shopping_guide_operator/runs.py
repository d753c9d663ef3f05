"""Training runs: when to start one, and what a finished one means. Pure.

A run is wanted on the first reconcile, when the model-affecting spec changes (its hash), and
when the `shoppingguide.io/retrain` annotation takes a new value. The run key hashes both, and
the Job name is derived from the key and the attempt number, so a restarted operator finds the
Job it started (or starts the same one) from status alone. A failed attempt waits out an
exponential backoff, then the next attempt gets a new Job. Scheduled runs come from the
CronJob; each finished one is judged once (status remembers the last one handled).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shopping_guide_contracts.training_result import ResultError, decode

from . import gate as quality_gate
from .builders.common import job_name
from .builders.training import TRIGGER_SCHEDULE
from .conditions import now_rfc3339, parse_rfc3339
from .durations import parse_duration
from .spec import Gate, Guide

JobState = Literal["Active", "Succeeded", "Failed"]
Outcome = Literal["Promoted", "Rejected", "Failed"]

TRIGGER_INITIAL = "initial"
TRIGGER_SPEC = "spec-change"
TRIGGER_RETRAIN = "retrain-annotation"


@dataclass(frozen=True)
class JobView:
    """What reconcile observed of one training Job."""

    name: str
    trigger: str
    state: JobState
    started_at: float | None = None
    finished_at: float | None = None
    failure: str | None = None  # the Job's Failed condition message (deadline, eviction ...)
    uid: str = ""


@dataclass(frozen=True)
class RunRequest:
    run_key: str
    attempt: int
    trigger: str


@dataclass(frozen=True)
class Finished:
    job: str
    trigger: str
    outcome: Outcome
    message: str
    started_at: float | None
    finished_at: float
    version: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    training: dict[str, Any]
    create: RunRequest | None = None
    delete: tuple[str, ...] = ()
    finished: Finished | None = None
    active: tuple[str, ...] = ()
    waiting_for: str | None = None  # a run is due but waits for this scheduled Job to end


def run_key(spec_hash: str, token: str) -> str:
    return hashlib.sha256(f"{spec_hash}|{token}".encode()).hexdigest()[:16]


def wanted_trigger(
    training: Mapping[str, Any], spec_hash: str, token: str, legacy: tuple[str, ...] = ()
) -> str | None:
    """Why a run is wanted, or None. A run completed under the hash an earlier release
    computed (`legacy`) counts as current: an operator upgrade retrains nothing."""
    completed = training.get("completed")
    if not completed:
        return TRIGGER_INITIAL
    if completed.get("specHash") not in (spec_hash, *legacy):
        return TRIGGER_SPEC
    if completed.get("retrainToken", "") != token:
        return TRIGGER_RETRAIN
    return None


def backoff_seconds(attempt: int, initial: float, maximum: float) -> float:
    """Delay before attempt `attempt` (1 = the first retry): doubling, capped."""
    return float(min(maximum, initial * 2 ** max(0, attempt - 1)))


def _failure_text(message: str | None) -> str | None:
    """The trainer's `{"error": ...}` document, if that is what the message holds."""
    if not message:
        return None
    try:
        document = json.loads(message)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return None


def judge(
    job: JobView, message: str | None, gate: Gate, stable: str | None, now: float
) -> Finished:
    """A finished Job's meaning: a failure, or a result that the gate passes or rejects."""
    finished_at = job.finished_at or now

    def failed(text: str) -> Finished:
        return Finished(job.name, job.trigger, "Failed", text, job.started_at, finished_at)

    error = _failure_text(message)
    if error is not None:
        return failed(f"training failed: {error}")
    if job.state == "Failed":
        return failed(f"training Job failed: {job.failure or 'the trainer pod did not succeed'}")
    if not message:
        return failed("the training Job succeeded but left no result in its termination message")
    try:
        result = decode(message)
    except ResultError as exc:
        return failed(f"unreadable training result: {exc}")
    verdict = quality_gate.evaluate(result, gate, stable)
    return Finished(
        job.name,
        job.trigger,
        "Promoted" if verdict.passed else "Rejected",
        verdict.summary(),
        job.started_at,
        finished_at,
        version=str(result["version"]),
        metrics=dict(result.get("metrics") or {}),
    )


def advance(
    training: Mapping[str, Any],
    guide: Guide,
    stable: str | None,
    jobs: list[JobView],
    now: float,
    read_message: Callable[[JobView], str | None],
    store_busy: str | None = None,
) -> Step:
    """One pass over the training runs; at most one finished Job is judged per pass.

    `store_busy` names another writer of the store (an erasure Job): no run starts while it
    runs, and a scheduled run that started meanwhile is stopped.
    """
    state = dict(training)
    spec_hash, *legacy = guide.spec_hashes()
    trigger = wanted_trigger(state, spec_hash, guide.retrain_token, tuple(legacy))
    completed = state.get("completed")
    if trigger is None and completed and completed.get("specHash") != spec_hash:
        # Matched by the legacy hash: record the current one, so that a later change of the
        # legacy function (a new CRD default) cannot break the match.
        state["completed"] = {**completed, "specHash": spec_hash}
    key = run_key(spec_hash, guide.retrain_token)
    state["specHash"] = spec_hash
    by_name = {j.name: j for j in jobs}
    create: RunRequest | None = None
    finished: Finished | None = None
    wanted_job: str | None = None
    waiting_for: str | None = None

    if trigger is not None:
        if state.get("runKey") != key:
            # A new run: earlier failures belong to another spec or request.
            state.update(runKey=key, attempt=0)
            state.pop("nextAttemptAt", None)
        attempt = int(state.get("attempt", 0))
        wanted_job = job_name(guide, key, attempt)
        job = by_name.get(wanted_job)
        if job is None:
            due = parse_rfc3339(state.get("nextAttemptAt"))
            scheduled = next(
                (j for j in jobs if j.trigger == TRIGGER_SCHEDULE and j.state == "Active"), None
            )
            if store_busy is not None:
                waiting_for = store_busy
            elif scheduled is not None:
                # One training at a time per guide: two runs would train and prune the same
                # store at once. The on-demand run starts when the scheduled one ends.
                waiting_for = scheduled.name
            elif due is None or now >= due:
                create = RunRequest(key, attempt, trigger)
                state.pop("nextAttemptAt", None)
        elif job.state != "Active":
            finished = judge(job, read_message(job), guide.training.gate, stable, now)
            if finished.outcome == "Failed":
                attempt += 1
                delay = backoff_seconds(
                    attempt,
                    parse_duration(guide.training.retry_initial),
                    parse_duration(guide.training.retry_max),
                )
                state.update(attempt=attempt, nextAttemptAt=now_rfc3339(now + delay))
            else:
                state["completed"] = {
                    "specHash": spec_hash,
                    "retrainToken": guide.retrain_token,
                    "job": job.name,
                }
                state.update(attempt=0)
                state.pop("nextAttemptAt", None)

    # A run for an older spec or request is of no use any more.
    superseded = tuple(
        j.name
        for j in jobs
        if j.trigger != TRIGGER_SCHEDULE and j.state == "Active" and j.name != wanted_job
    )
    on_demand = create is not None or any(
        j.name == wanted_job and j.state == "Active" for j in jobs
    )
    if on_demand or store_busy is not None:
        # The CronJob is suspended while an on-demand run is active; a scheduled Job that
        # started in the moment before the suspension took effect is stopped (the next
        # schedule runs it again), so the two never train the same store together.
        superseded += tuple(
            j.name for j in jobs if j.trigger == TRIGGER_SCHEDULE and j.state == "Active"
        )

    if finished is None:
        handled_at = parse_rfc3339(state.get("lastScheduledAt")) or 0.0
        pending = sorted(
            (
                j
                for j in jobs
                if j.trigger == TRIGGER_SCHEDULE
                and j.state != "Active"
                and j.name != state.get("lastScheduledJob")
                and (j.finished_at or now) > handled_at
            ),
            key=lambda j: (j.finished_at or now, j.name),
        )
        if pending:
            job = pending[0]
            finished = judge(job, read_message(job), guide.training.gate, stable, now)
            state.update(
                lastScheduledJob=job.name, lastScheduledAt=now_rfc3339(finished.finished_at)
            )

    active = tuple(j.name for j in jobs if j.state == "Active" and j.name not in superseded) + (
        (job_name(guide, create.run_key, create.attempt),) if create else ()
    )
    return Step(state, create, superseded, finished, active, waiting_for)
