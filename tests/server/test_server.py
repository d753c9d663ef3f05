"""The recommender server over real HTTP, in its own process, on real artifacts."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from tests.server.conftest import GUIDE, Server, corrupt_copy


def test_recommends_the_users_missing_item_first(server: Server) -> None:
    # a-user-0 bought every "a" item but a0: a0 is the right answer.
    status, body = server.get("/v1/recommendations?user_id=a-user-0&k=3")
    assert status == 200
    assert body["items"][0]["item_id"] == "a0"
    assert body["model_version"] == server.models.als
    assert body["cohort"] == "stable" and body["cold_start"] is False
    assert body["recommendation_id"].isascii() and len(body["recommendation_id"]) < 100
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_post_options_exclude_allow_and_seen(server: Server) -> None:
    status, body = server.request(
        "POST", "/v1/recommendations", {"user_id": "a-user-0", "k": 5, "exclude_items": ["a0"]}
    )
    assert status == 200 and "a0" not in [i["item_id"] for i in body["items"]]
    status, body = server.request(
        "POST", "/v1/recommendations", {"user_id": "a-user-0", "allow_items": ["b1", "b2", "zz"]}
    )
    assert status == 200 and {i["item_id"] for i in body["items"]} <= {"b1", "b2"}
    status, body = server.request(
        "POST", "/v1/recommendations", {"user_id": "a-user-0", "k": 12, "exclude_seen": False}
    )
    assert {i["item_id"] for i in body["items"]} >= {"a1", "a2"}  # seen items allowed back


def test_cold_start_popular_and_fold_in(server: Server) -> None:
    status, body = server.get("/v1/recommendations?user_id=stranger&k=4")
    assert status == 200 and body["cold_start"] and body["strategy"] == "popular"
    assert len(body["items"]) == 4
    status, body = server.get("/v1/recommendations?user_id=stranger&k=3&recent_items=b1,b2,b3,nope")
    assert body["strategy"] == "fold_in" and body["unknown_items"] == ["nope"]
    assert all(i["item_id"].startswith("b") for i in body["items"])
    assert server.metric("shopping_guide_cold_starts_total", strategy="fold_in") == 1


def test_batch(server: Server) -> None:
    status, body = server.request(
        "POST", "/v1/recommendations:batch", {"user_ids": ["a-user-1", "b-user-2"], "k": 1}
    )
    assert status == 200
    assert [r["items"][0]["item_id"] for r in body["results"]] == ["a1", "b2"]
    status, body = server.request(
        "POST", "/v1/recommendations:batch",
        {"requests": [{"user_id": "a-user-1"}, {"user_id": "b-user-1", "k": 0}]},
    )  # fmt: skip
    assert status == 400 and body["error"]["code"] == "invalid_k"
    assert "`$.requests[1].k`" in body["error"]["message"]


def test_similar_items(server: Server) -> None:
    status, body = server.get("/v1/items/a3/similar?k=5")
    assert status == 200
    assert all(i["item_id"].startswith("a") and i["item_id"] != "a3" for i in body["items"])
    status, body = server.get("/v1/items/unknown-item/similar")
    assert status == 404 and body["error"]["code"] == "unknown_item"


def test_feedback_is_attributed_to_the_serving_version(server: Server) -> None:
    _, served = server.get("/v1/recommendations?user_id=a-user-5")
    status, body = server.request(
        "POST", "/v1/feedback",
        {"recommendation_id": served["recommendation_id"], "user_id": "a-user-5",
         "item_id": served["items"][0]["item_id"], "event": "click"},
    )  # fmt: skip
    assert status == 202 and body["model_version"] == server.models.als
    clicks = server.metric(
        "shopping_guide_feedback_total", model_version=server.models.als, event="click"
    )
    assert clicks == 1
    served_total = server.metric(
        "shopping_guide_recommendations_total", model_version=server.models.als
    )
    assert served_total >= 1


def test_purchases_count_units_and_revenue_for_the_serving_version(server: Server) -> None:
    _, served = server.get("/v1/recommendations?user_id=a-user-6&k=4")
    als = server.models.als
    assert server.metric("shopping_guide_impressions_total", model_version=als) >= 4

    def send(event: str, **extra: Any) -> tuple[int, Any]:
        return server.request("POST", "/v1/feedback", {
            "recommendation_id": served["recommendation_id"], "user_id": "a-user-6",
            "item_id": served["items"][0]["item_id"], "event": event, **extra,
        })  # fmt: skip

    assert send("view")[0] == 202 and send("cart", quantity=2)[0] == 202
    status, body = send("purchase", quantity=3, price=2.5)
    assert status == 202 and body["revenue"] == 7.5
    assert server.metric("shopping_guide_revenue_total", model_version=als) == 7.5
    assert server.metric("shopping_guide_purchased_units_total", model_version=als) == 3
    assert server.metric("shopping_guide_feedback_total", model_version=als, event="view") == 1
    # This model has no catalogue: a purchase without a price adds no revenue, and says so.
    status, body = send("purchase")
    assert status == 202 and body["revenue"] == 0
    assert server.metric("shopping_guide_unpriced_purchases_total", model_version=als) == 1
    assert server.metric("shopping_guide_revenue_total", model_version=als) == 7.5
    for bad in ({"quantity": 0}, {"price": -1}, {"quantity": 1.5}):
        status, body = send("purchase", **bad)
        assert status == 400, (bad, body)


BAD_INPUTS: list[tuple[str, str, Any, int, str]] = [
    ("GET", "/v1/recommendations", None, 400, "invalid_user_id"),
    ("GET", "/v1/recommendations?user_id=", None, 400, "invalid_user_id"),
    ("GET", "/v1/recommendations?user_id=u&k=0", None, 400, "invalid_k"),
    ("GET", "/v1/recommendations?user_id=u&k=1001", None, 400, "invalid_k"),
    ("GET", "/v1/recommendations?user_id=u&k=ten", None, 400, "invalid_k"),
    ("GET", "/v1/recommendations?user_id=u&exclude_seen=maybe", None, 400, "invalid_exclude_seen"),
    ("GET", "/v1/recommendations?user_id=" + "x" * 300, None, 400, "invalid_user_id"),
    ("POST", "/v1/recommendations", b"{not json", 400, "malformed_json"),
    ("POST", "/v1/recommendations", b"[1, 2]", 400, "invalid_body"),
    ("POST", "/v1/recommendations", {"user_id": ["a"]}, 400, "invalid_user_id"),
    ("POST", "/v1/recommendations", {"user_id": "u", "k": True}, 400, "invalid_k"),
    ("POST", "/v1/recommendations", {"user_id": "u", "exclude_items": "a"}, 400,
     "invalid_exclude_items"),
    ("POST", "/v1/recommendations", {"user_id": "u", "exclude": ["a"]}, 400, "unknown_field"),
    ("POST", "/v1/recommendations", {"user_id": "u", "allow_items": {"a": 1}}, 400,
     "invalid_allow_items"),
    ("POST", "/v1/recommendations", b"\xff\xfe", 400, "malformed_json"),
    ("POST", "/v1/recommendations", b"x" * (2 << 20), 413, "body_too_large"),
    ("POST", "/v1/recommendations:batch", {}, 400, "invalid_batch"),
    ("POST", "/v1/recommendations:batch", {"user_ids": ["u"] * 1001}, 400, "invalid_user_ids"),
    ("POST", "/v1/recommendations:batch", {"user_ids": []}, 400, "invalid_user_ids"),
    ("POST", "/v1/feedback", {"user_id": "u", "item_id": "i", "event": "click"}, 400,
     "invalid_recommendation_id"),
    ("POST", "/v1/feedback", {"recommendation_id": "r", "user_id": "u", "item_id": "i",
                              "event": "like"}, 400, "invalid_event"),
    ("POST", "/v1/feedback", {"recommendation_id": "r", "user_id": "u", "event": "click"}, 400,
     "invalid_item_id"),
    ("GET", "/v1/items/a1/similar?k=-1", None, 400, "invalid_k"),
    ("GET", "/v1/nothing-here", None, 404, "not_found"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INPUTS)
def test_bad_input_gets_a_clear_json_error(
    server: Server, method: str, path: str, body: Any, status: int, code: str
) -> None:
    raw = body if isinstance(body, bytes) else None
    got_status, got = server.request(method, path, None if raw else body, raw=raw)
    assert got_status == status, got
    if code:
        assert got["error"]["code"] == code and got["error"]["message"]


def test_canary_cohorts_follow_the_routing_file(server: Server) -> None:
    models = server.models
    server.routing.write(
        {"stable": models.als, "canary": models.knn, "canaryWeightBasisPoints": 5000,
         "salt": "s1", "generation": 2}
    )  # fmt: skip
    server.wait_for(lambda: server.metric("shopping_guide_routing_generation") == 2)
    cohorts: dict[str, str] = {}
    for n in range(40):
        user = f"{'ab'[n % 2]}-user-{n % 30}"
        _, body = server.get(f"/v1/recommendations?user_id={user}&k=1")
        expected = models.knn if body["cohort"] == "canary" else models.als
        assert body["model_version"] == expected
        assert cohorts.setdefault(user, body["cohort"]) == body["cohort"]  # sticky
    assert set(cohorts.values()) == {"stable", "canary"}
    _, ready = server.get("/readyz")
    assert ready["canary"]["serving"] is True and ready["generation"] == 2
    assert server.metric("shopping_guide_canary_weight_basis_points") == 5000


def test_a_corrupt_canary_is_not_served(server: Server) -> None:
    models = server.models
    broken = corrupt_copy(models.store, models.als, "v29990101-000000-broken")
    server.routing.write(
        {"stable": models.als, "canary": broken, "canaryWeightBasisPoints": 10000,
         "salt": "s1", "generation": 3}
    )  # fmt: skip
    server.wait_read(3)
    assert server.metric("shopping_guide_canary_load_failed") == 1
    _, ready = server.get("/readyz")
    assert ready["canary"]["serving"] is False and "sha256" in ready["canary"]["error"]
    for n in range(10):
        status, body = server.get(f"/v1/recommendations?user_id=a-user-{n}")
        assert status == 200 and body["model_version"] == models.als
        assert body["cohort"] == "stable"
    assert server.metric("shopping_guide_model_load_failures_total", model_version=broken) >= 1
    # The failure is a series of its own, with a short reason, and holds the generation back:
    # generation 3 is not in effect while its canary does not serve.
    (failed,) = [
        line
        for line in server.metrics_text().splitlines()
        if line.startswith("shopping_guide_model_load_failed{")
    ]
    assert f'model_version="{broken}"' in failed and failed.endswith(" 1.0")
    reason = failed.split('reason="', 1)[1].split('"', 1)[0]
    assert reason.startswith("ArtifactError: ") and "sha256" in reason and len(reason) <= 200
    assert server.metric("shopping_guide_routing_generation") == 1
    assert ready["generation"] == 1
    # Routed away from the broken canary: the series goes, the new generation is in effect.
    server.routing.write({"stable": models.als, "salt": "s1", "generation": 4})
    server.wait_for(lambda: server.metric("shopping_guide_routing_generation") == 4)
    assert "shopping_guide_model_load_failed{" not in server.metrics_text()
    assert server.metric("shopping_guide_canary_load_failed") == 0


def test_every_metric_names_its_guide_and_is_served_on_the_metrics_port(server: Server) -> None:
    server.get("/v1/recommendations?user_id=a-user-0")
    samples = [
        line
        for line in server.metrics_text().splitlines()
        if line.startswith("shopping_guide_") and not line.startswith("#")
    ]
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in samples}
    assert {
        "shopping_guide_requests_total",
        "shopping_guide_routing_generation",
        "shopping_guide_model_info",
        "shopping_guide_recommendations_total",
    } <= names
    unlabelled = [line for line in samples if f'guide="{GUIDE}"' not in line]
    assert not unlabelled, unlabelled[:5]
    # The serving port serves shoppers only: the NetworkPolicy admits scrapers on the other.
    status, _ = server.get("/metrics")
    assert status == 404


def test_reload_under_load_drops_no_request(server: Server) -> None:
    models = server.models
    failures: list[Any] = []
    versions: set[str] = set()
    done = threading.Event()

    def hammer() -> None:
        n = 0
        while not done.is_set():
            n += 1
            try:
                status, body = server.get(f"/v1/recommendations?user_id=a-user-{n % 30}&k=3")
            except OSError as exc:
                failures.append(exc)
                continue
            if status != 200:
                failures.append((status, body))
            else:
                versions.add(body["model_version"])

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        for generation in range(10, 22):
            stable = models.knn if generation % 2 else models.als
            server.routing.write({"stable": stable, "salt": "s1", "generation": generation})
            server.wait_for(
                lambda g=generation: server.metric("shopping_guide_routing_generation") == g
            )
    finally:
        done.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert versions == {models.als, models.knn}


def test_sigterm_drains_and_exits(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert server.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
