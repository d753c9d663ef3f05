"""Trending refreshed between trainings: when a refresh runs, what it waits for, what it says,
and the Job it runs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from shopping_guide_contracts.routing import parse
from shopping_guide_operator.builders.trending import build_trending_job
from shopping_guide_operator.runs import JobView
from shopping_guide_operator.spec import Guide, SpecError
from shopping_guide_operator.trending_refresh import advance, job_name

from .conftest import BASE, deep_merge
from .fake_cluster import FakeCluster
from .test_reconcile import NAME, NS, T0, _promote_v1, jobs, run
from .test_reconcile import status as status_of
from .test_reconcile_change import _erasure

HOUR = 3600.0
REFRESH = {
    "data": {"interactions": {"columns": {"event": "event", "time": "ts"}}},
    "serving": {"trending": {"refreshEvery": "1h", "windowHours": 24}},
}
DONE = json.dumps({"versions": {"v1": {"items": 12}, "v2": {"items": 9}}})


def never(job: JobView) -> str | None:
    raise AssertionError("read a Job that needs no reading")


def says(message: str | None) -> Callable[[JobView], str | None]:
    return lambda job: message


def test_a_refresh_starts_once_a_model_serves_and_then_every_period() -> None:
    assert advance("g", {}, HOUR, {}, None, None, T0, never).start is None  # nothing served
    first = advance("g", {}, HOUR, {}, "v1", None, T0, never)
    assert first.start == job_name("g", T0) and first.busy == first.start
    assert first.status["phase"] == "Running" and first.status["job"] == first.start
    done = {**first.status, "phase": "Succeeded", "completedAt": "x"}
    assert advance("g", done, HOUR, {}, "v1", None, T0 + HOUR - 1, never).start is None
    again = advance("g", done, HOUR, {}, "v1", None, T0 + HOUR, never)
    assert again.start == job_name("g", T0 + HOUR)
    assert "completedAt" not in again.status
    assert advance("g", done, None, {}, "v1", None, T0 + 9 * HOUR, never).start is None  # off


def test_a_running_refresh_keeps_the_store_busy_and_its_end_is_judged() -> None:
    started = advance("g", {}, HOUR, {}, "v1", None, T0, never)
    name = str(started.start)
    active = {name: JobView(name, "", "Active", T0)}
    still = advance("g", started.status, HOUR, active, "v1", None, T0 + 2 * HOUR, never)
    assert still.busy == name and still.start is None and not still.events

    finished = {name: JobView(name, "", "Succeeded", T0, T0 + 60)}
    ok = advance("g", started.status, HOUR, finished, "v1", None, T0 + 70, says(DONE))
    assert ok.rewritten and ok.start is None and ok.busy is None
    assert ok.status["phase"] == "Succeeded" and ok.status["versions"] == ["v1", "v2"]
    message = "trending refreshed in 2 versions (v1: 12 items, v2: 9 items)"
    assert ok.events == (("Normal", "TrendingRefreshed", message),)


@pytest.mark.parametrize(
    ("job", "message", "reason"),
    [
        ("Failed", '{"error": "no events with a time"}', "no events with a time"),
        ("Failed", None, "DeadlineExceeded"),
        ("Succeeded", "not json", "left no readable result"),
        (None, None, "disappeared before it ended"),
    ],
)
def test_a_failed_refresh_is_a_warning_and_rewrites_nothing(
    job: str | None, message: str | None, reason: str
) -> None:
    started = advance("g", {}, HOUR, {}, "v1", None, T0, never)
    name = str(started.start)
    seen = {} if job is None else {name: JobView(name, "", job, T0, T0 + 9, "DeadlineExceeded")}  # type: ignore[arg-type]
    step = advance("g", started.status, HOUR, seen, "v1", None, T0 + 10, says(message))
    assert not step.rewritten and step.status["phase"] == "Failed"
    ((kind, event, text),) = step.events
    assert (kind, event) == ("Warning", "TrendingRefreshFailed") and reason in text
    # The next period tries again.
    assert advance("g", step.status, HOUR, seen, "v1", None, T0 + HOUR, never).start is not None


def test_a_running_job_that_status_lost_is_adopted_not_doubled() -> None:
    name = job_name("g", T0)
    active = {name: JobView(name, "", "Active", T0)}
    done = {"phase": "Succeeded", "startedAt": "2020-01-01T00:00:00Z"}
    step = advance("g", done, HOUR, active, "v1", None, T0 + 9 * HOUR, never)
    assert step.start is None and step.busy == name
    assert step.status["phase"] == "Running" and step.status["job"] == name


def test_a_refresh_waits_while_an_erasure_rewrites_the_store() -> None:
    step = advance("g", {}, HOUR, {}, "v1", "storefront-erase-1", T0, never)
    assert step.start is None and step.busy is None and step.status == {}


def test_the_job_reads_only_what_trending_needs_and_writes_the_guides_store(
    make_guide: Callable[..., Guide],
) -> None:
    guide = make_guide(REFRESH)
    job = build_trending_job(guide, job_name(guide.name, T0))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:3] == ["refresh-trending", "--events", "/data/exports/interactions.csv"]
    assert args[args.index("--time-col") + 1] == "ts"
    assert args[args.index("--trending-window-hours") + 1] == "24"
    assert args[args.index("--guide") + 1] == "shop/storefront"
    assert args[args.index("--routing") + 1].endswith("routing.json")
    assert "--event-col" not in args and "--algorithm" not in args
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["routing"]["configMap"]["name"] == "storefront-routing"
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "trending"
    assert len(job["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("serving", "columns", "message"),
    [
        ({"refreshEvery": "1m"}, {"time": "ts"}, "at least 5m"),
        ({"refreshEvery": "hourly"}, {"time": "ts"}, "not a duration"),
        ({"refreshEvery": "1h"}, {}, "needs data.interactions.columns.time"),
    ],
)
def test_a_bad_refresh_period_is_a_spec_error(
    serving: dict[str, Any], columns: dict[str, str], message: str
) -> None:
    body = deep_merge(
        BASE,
        {
            "spec": {
                "data": {"interactions": {"columns": columns}},
                "serving": {"trending": serving},
            }
        },
    )
    with pytest.raises(SpecError, match=message):
        Guide.parse(body)


def test_reconcile_refreshes_trending_raises_the_models_revision_and_takes_turns_with_erasure() -> (
    None
):
    world = FakeCluster()
    world.put(deep_merge(copy.deepcopy(BASE), {"spec": REFRESH}))
    _promote_v1(world)  # the pass that promoted v1 already started the first refresh
    trending = status_of(world)["trending"]
    assert trending["phase"] == "Running"
    name = trending["job"]
    assert name in jobs(world)
    # An erasure asked for meanwhile waits for the refresh: both rewrite versions.
    _erasure(world, "gdpr-1", "12748")
    run(world, T0 + 40)
    request = world.objects[("ShoppingGuideErasure", NS, "gdpr-1")]["status"]
    assert request["phase"] == "Pending" and "trending" in request["message"]

    world.finish_job(NS, name, json.dumps({"versions": {"v1": {"items": 7}}}))
    run(world, T0 + 50)
    assert status_of(world)["trending"]["phase"] == "Succeeded"
    configmap = world.get("ConfigMap", NS, f"{NAME}-routing")
    assert configmap is not None
    assert parse(configmap["data"]["routing.json"]).models_revision == 1
    # The erasure went next, in the same pass; the next refresh, due, waits for it.
    request = world.objects[("ShoppingGuideErasure", NS, "gdpr-1")]["status"]
    assert request["phase"] == "Running"
    run(world, T0 + 2 * HOUR)
    assert status_of(world)["trending"]["phase"] == "Succeeded"
    assert sum(1 for j in jobs(world) if "-trending-" in j) == 1
