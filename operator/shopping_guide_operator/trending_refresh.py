"""Trending refreshed between trainings: `spec.serving.trending.refreshEvery`.

Trending moves by the hour and a model is retrained daily or weekly. With `refreshEvery` set
(and a time column in the data), the guide's pass runs a Job of the recommender image every
that often (`shopping-guide refresh-trending`), which recomputes trending now from the events
as they are and rewrites the routed versions in place with it. When one succeeds the routing's
`modelsRevision` rises, so every serving pod loads the rewritten versions; a failed one leaves
them as they were (a Warning Event, and the next period tries again).

A refresh and an erasure both rewrite versions in place: one would undo the other, so they
never run together (whichever is running, the other waits). A training run writes a new
version and may go on beside a refresh. Pure: reconcile feeds it what it observed and creates
the Job it asks for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .conditions import now_rfc3339, parse_rfc3339
from .runs import JobView
from .status import Event

RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"


def job_name(guide: str, now: float) -> str:
    # Guide names are at most 40 characters, a time in seconds 10 digits: within 63.
    return f"{guide}-trending-{int(now)}"


@dataclass(frozen=True)
class RefreshStep:
    start: str | None = None  # the name of the Job to create now
    status: dict[str, Any] = field(default_factory=dict)  # status.trending
    rewritten: bool = False  # a refresh finished in this pass: the models revision rises
    busy: str | None = None  # a refresh Job writes the store: an erasure waits for it
    events: tuple[Event, ...] = ()


def advance(
    guide: str,
    previous: Mapping[str, Any],
    every: float | None,
    jobs: Mapping[str, JobView],
    served: str | None,
    store_busy: str | None,
    now: float,
    read_message: Callable[[JobView], str | None],
) -> RefreshStep:
    """One pass: judge the refresh Job of status, or start the next one when one is due.

    `every` is refreshEvery in seconds (None: off); `served`, what the routing serves (nothing
    to refresh before a model serves); `store_busy`, an erasure Job that rewrites the store."""
    status = dict(previous)
    events: list[Event] = []
    rewritten = False
    running = status.get("job") if status.get("phase") == RUNNING else None
    if running is None:
        # Created by a pass whose status write was lost: that Job is the refresh, not a second.
        running = next((j.name for j in jobs.values() if j.state == "Active"), None)
        if running is not None:
            status.update({"phase": RUNNING, "job": running, "message": "refreshing"})
            return RefreshStep(status=status, busy=running)
    if running is not None:
        job = jobs.get(str(running))
        if job is not None and job.state == "Active":
            return RefreshStep(status=status, busy=str(running))
        status.update(_judge(str(running), job, read_message(job) if job else None, now))
        if status["phase"] == SUCCEEDED:
            rewritten = True
            events.append(("Normal", "TrendingRefreshed", status["message"]))
        else:
            events.append(("Warning", "TrendingRefreshFailed", status["message"]))
    if every is None or served is None or store_busy is not None:
        return RefreshStep(status=status, rewritten=rewritten, events=tuple(events))
    last = parse_rfc3339(status.get("startedAt"))
    if last is not None and now - last < every:
        return RefreshStep(status=status, rewritten=rewritten, events=tuple(events))
    name = job_name(guide, now)
    status.update(
        {"phase": RUNNING, "job": name, "startedAt": now_rfc3339(now), "message": "refreshing"}
    )
    status.pop("completedAt", None)
    return RefreshStep(name, status, rewritten, name, tuple(events))


def _judge(name: str, job: JobView | None, message: str | None, now: float) -> dict[str, Any]:
    done = {"completedAt": now_rfc3339(now)}
    if job is None:
        return {**done, "phase": FAILED, "message": f"the Job {name} disappeared before it ended"}
    try:
        document = json.loads(message or "")
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    if job.state == "Failed" or "error" in document:
        # The refresh's own reason when it wrote one; else the Job's (deadline, eviction).
        why = str(document.get("error") or job.failure or "the pod did not succeed")
        return {**done, "phase": FAILED, "message": f"{name} failed: {why}"[:1024]}
    try:
        items = {str(v): int(r["items"]) for v, r in document["versions"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {**done, "phase": FAILED, "message": f"{name} left no readable result"}
    listed = ", ".join(f"{v}: {n} items" for v, n in sorted(items.items()))
    return {
        **done,
        "phase": SUCCEEDED,
        "versions": sorted(items),
        "message": f"trending refreshed in {len(items)} versions ({listed})",
    }
