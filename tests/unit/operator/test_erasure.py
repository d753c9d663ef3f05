"""Erasure requests, pass by pass: in order, one writer of the store at a time, audited."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from shopping_guide_operator import erasure
from shopping_guide_operator.builders.erasure import build_erasure_job
from shopping_guide_operator.runs import JobView
from shopping_guide_operator.spec import Guide

T0 = 1_800_000_000.0
H1 = hashlib.sha256(b"12748").hexdigest()
H2 = hashlib.sha256(b"17850").hexdigest()


def body(name: str, created: str, *hashes: str, guide: str = "storefront", **status: Any) -> Any:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created},
        "spec": {"guide": guide, "userIdSha256": list(hashes)},
        "status": status,
    }


def no_message(job: JobView) -> str | None:
    return None


def reader(message: str) -> Callable[[JobView], str | None]:
    return lambda job: message


def test_requests_run_oldest_first_only_for_their_guide() -> None:
    items = [
        body("b", "2026-01-02T00:00:00Z", H2),
        body("a", "2026-01-01T00:00:00Z", H1),
        body("other", "2025-01-01T00:00:00Z", H1, guide="elsewhere"),
    ]
    requests = erasure.requests_for(items, "storefront")
    assert [r.name for r in requests] == ["a", "b"]
    step = erasure.advance("storefront", requests, {}, False, T0, no_message)
    assert step.start is not None and step.start.name == "a"
    assert step.statuses["a"]["phase"] == "Running"
    assert "b" not in step.statuses  # one at a time
    assert step.busy == erasure.job_name("storefront", step.start)


def test_an_erasure_waits_for_training_and_says_so() -> None:
    requests = erasure.requests_for([body("a", "t", H1)], "storefront")
    step = erasure.advance("storefront", requests, {}, True, T0, no_message)
    assert step.start is None and step.busy is None
    assert step.statuses["a"]["phase"] == "Pending"
    assert "training" in step.statuses["a"]["message"]


def test_a_finished_job_records_the_versions_and_the_next_request_starts() -> None:
    requests = erasure.requests_for(
        [body("a", "1", H1, phase="Running"), body("b", "2", H2)], "storefront"
    )
    name = erasure.job_name("storefront", requests[0])
    jobs = {name: JobView(name, "", "Succeeded", T0, T0 + 5)}
    message = json.dumps({"versions": ["20260101-a", "20260102-b"]})
    step = erasure.advance("storefront", requests, jobs, False, T0 + 10, reader(message))
    done = step.statuses["a"]
    assert done["phase"] == "Succeeded"
    assert done["versionsRewritten"] == ["20260101-a", "20260102-b"]
    assert done["users"] == 1
    assert step.finished == ("a",)
    assert step.start is not None and step.start.name == "b"


def test_a_failed_job_fails_the_request_with_the_trainers_reason() -> None:
    requests = erasure.requests_for([body("a", "1", H1, phase="Running")], "storefront")
    name = erasure.job_name("storefront", requests[0])
    jobs = {name: JobView(name, "", "Failed", T0, T0 + 5, "BackoffLimitExceeded")}
    step = erasure.advance(
        "storefront", requests, jobs, False, T0, reader('{"error": "store is read-only"}')
    )
    assert step.statuses["a"]["phase"] == "Failed"
    assert step.statuses["a"]["message"] == "store is read-only"
    assert step.finished == ()
    failed = erasure.advance("storefront", requests, jobs, False, T0, no_message)
    assert failed.statuses["a"]["message"] == "BackoffLimitExceeded"


def test_a_running_job_keeps_the_store_busy_and_a_vanished_one_fails() -> None:
    requests = erasure.requests_for([body("a", "1", H1, phase="Running")], "storefront")
    name = erasure.job_name("storefront", requests[0])
    step = erasure.advance(
        "storefront", requests, {name: JobView(name, "", "Active", T0)}, False, T0, no_message
    )
    assert step.busy == name and step.start is None and step.statuses == {}
    gone = erasure.advance("storefront", requests, {}, False, T0, no_message)
    assert gone.statuses["a"]["phase"] == "Failed"
    assert "disappeared" in gone.statuses["a"]["message"]


def test_the_job_rewrites_the_store_by_hash_only(make_guide: Callable[..., Guide]) -> None:
    guide = make_guide()
    (request,) = erasure.requests_for([body("a", "1", H1, H2)], "storefront")
    job = build_erasure_job(guide, request)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["forget-users", "--model-store", "/models"]
    assert container["args"].count("--user-sha256") == 2
    assert "12748" not in json.dumps(job)
    (models,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"] == {"claimName": "models"}  # written, not read-only
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert len(job["metadata"]["name"]) <= 63
