"""Erasure requests: forgetting shoppers in every stored model version, one request at a time.

A `ShoppingGuideErasure` names a guide and the SHA-256 of each user id to forget, so that no
user id is ever written to etcd, status or Events. The guide's pass runs each request as a Job
of the recommender image that rewrites every version of the guide's store without those users
and records their hashes, so the next training skips their events too. The serving pods reload
the rewritten versions when the routing's `modelsRevision` rises. Pure: reconcile feeds it
the requests and Jobs it listed and writes what it returns.

The store has one writer at a time: an erasure waits for a running training Job, and a
training run waits for a running erasure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .conditions import now_rfc3339
from .runs import JobView

KIND = "ShoppingGuideErasure"
PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
DONE = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Request:
    name: str
    uid: str
    created: str
    user_hashes: tuple[str, ...]
    phase: str = PENDING
    job: str | None = None
    status: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Request:
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        status = body.get("status") or {}
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            created=str(meta.get("creationTimestamp", "")),
            user_hashes=tuple(str(h) for h in spec.get("userIdSha256") or ()),
            phase=str(status.get("phase") or PENDING),
            job=status.get("job"),
            status=dict(status),
        )


def requests_for(items: Sequence[Mapping[str, Any]], guide: str) -> list[Request]:
    """This guide's requests, oldest first (the order they are carried out in)."""
    mine = [Request.of(i) for i in items if (i.get("spec") or {}).get("guide") == guide]
    return sorted(mine, key=lambda r: (r.created, r.name))


def job_name(guide: str, request: Request) -> str:
    # Guide names are at most 40 characters: this stays within 63.
    return f"{guide}-erase-{request.uid.replace('-', '')[:12]}"


@dataclass(frozen=True)
class ErasureStep:
    """What this pass does about erasures."""

    start: Request | None = None
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # request -> status
    busy: str | None = None  # an erasure Job writes the store: training waits for it
    finished: tuple[str, ...] = ()  # requests whose rewrite completed in this pass


def _result(message: str | None) -> tuple[list[str] | None, str]:
    """The Job's termination message: the versions rewritten, or the error."""
    if not message:
        return None, "the erasure Job left no result in its termination message"
    try:
        document = json.loads(message)
    except ValueError:
        return None, f"unreadable erasure result: {message[:200]}"
    if not isinstance(document, dict):
        return None, "unreadable erasure result"
    if isinstance(document.get("error"), str):
        return None, str(document["error"])[:500]
    versions = document.get("versions")
    if not isinstance(versions, list):
        return None, "the erasure result lists no versions"
    return [str(v) for v in versions], ""


def _judge(request: Request, job: JobView, message: str | None, now: float) -> dict[str, Any]:
    versions, error = _result(message)
    if job.state == "Failed" and (versions is not None or not message):
        # No reason of the trainer's own: the Job's (deadline, eviction, backoff limit).
        versions, error = None, job.failure or "the erasure pod did not succeed"
    done = {"job": job.name, "completedAt": now_rfc3339(job.finished_at or now)}
    if versions is None:
        return {**done, "phase": FAILED, "message": error}
    users = len(request.user_hashes)
    return {
        **done,
        "phase": SUCCEEDED,
        "versionsRewritten": versions,
        "users": users,
        "message": f"{users} users forgotten in {len(versions)} model versions",
    }


def advance(
    guide: str,
    requests: list[Request],
    jobs: Mapping[str, JobView],
    training_active: bool,
    now: float,
    read_message: Callable[[JobView], str | None],
) -> ErasureStep:
    """One pass: judge finished erasure Jobs, and start the next request when the store is
    free. Requests run in creation order, so at most one of them has a Job at a time."""
    statuses: dict[str, dict[str, Any]] = {}
    finished: list[str] = []
    busy: str | None = None
    candidate: Request | None = None
    for request in requests:
        if request.phase in DONE:
            continue
        name = job_name(guide, request)
        job = jobs.get(name)
        if job is None:
            if request.phase == RUNNING:
                statuses[request.name] = {
                    "phase": FAILED,
                    "job": name,
                    "completedAt": now_rfc3339(now),
                    "message": f"the erasure Job {name} disappeared before it finished",
                }
                continue
            candidate = request
            break
        if job.state == "Active":
            busy = name
            if request.phase != RUNNING:  # created by a pass that wrote no status
                statuses[request.name] = {"phase": RUNNING, "job": name}
            break
        statuses[request.name] = _judge(request, job, read_message(job), now)
        if statuses[request.name]["phase"] == SUCCEEDED:
            finished.append(request.name)
    start: Request | None = None
    if candidate is not None and busy is None and not training_active:
        start = candidate
        busy = job_name(guide, start)
        statuses[start.name] = {
            "phase": RUNNING,
            "job": busy,
            "startedAt": now_rfc3339(now),
            "message": f"forgetting {len(start.user_hashes)} users",
        }
    elif candidate is not None and training_active:
        statuses[candidate.name] = {
            "phase": PENDING,
            "message": "waiting for the running training or trending Job: the store has one writer",
        }
    return ErasureStep(start, statuses, busy, tuple(finished))
