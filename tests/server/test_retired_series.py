"""A promotion restarts no pod: the series of a version the routing no longer names leave
/metrics, while those of the routed versions keep counting (the analysis takes their rate)."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import Server

USERS = [f"{group}-user-{n}" for group in "ab" for n in range(20)]


def _route(server: Server, generation: int, stable: str, canary: str | None = None) -> None:
    server.routing.write(
        {"stable": stable, "canary": canary, "canaryWeightBasisPoints": 5000 if canary else 0,
         "salt": "s1", "generation": generation}
    )  # fmt: skip
    server.wait_for(lambda: server.metric("shopping_guide_routing_generation") == generation)


def _shop(server: Server) -> dict[str, Any]:
    """A list for every user, a click on each; returns the last list each version served."""
    served: dict[str, Any] = {}
    for user in USERS:
        status, body = server.get(f"/v1/recommendations?user_id={user}&k=3")
        assert status == 200, body
        served[body["model_version"]] = body
        status, _ = server.request("POST", "/v1/feedback", _click(body))
        assert status == 202
    return served


def _click(body: dict[str, Any]) -> dict[str, Any]:
    return {"recommendation_id": body["recommendation_id"], "user_id": body["user_id"],
            "item_id": body["items"][0]["item_id"], "event": "click"}  # fmt: skip


def _series(server: Server, version: str) -> list[str]:
    mark = f'model_version="{version}"'
    return [line for line in server.metrics_text().splitlines() if mark in line]


def _names(lines: list[str]) -> set[str]:
    return {line.split("{", 1)[0] for line in lines}


def test_an_unrouted_version_leaves_metrics_and_the_routed_ones_keep_counting(
    server: Server,
) -> None:
    als, knn = server.models.als, server.models.knn
    # A request no model answers: its series carry model_version="none".
    assert server.get("/v1/recommendations")[0] == 400
    _shop(server)
    _route(server, 2, stable=als, canary=knn)
    served = _shop(server)
    assert set(served) == {als, knn}, "both versions must have served"
    everything = {
        "shopping_guide_requests_total", "shopping_guide_request_duration_seconds_bucket",
        "shopping_guide_recommendations_total", "shopping_guide_feedback_total",
        "shopping_guide_model_info", "shopping_guide_model_load_seconds",
    }  # fmt: skip
    assert everything <= _names(_series(server, als)), _names(_series(server, als))
    requests = server.metric("shopping_guide_requests_total", model_version=knn)
    clicks = server.metric("shopping_guide_feedback_total", model_version=knn)
    assert requests > 0 and clicks > 0

    # Promoted: the old stable is no longer routed.
    _route(server, 3, stable=knn)
    assert _series(server, als) == []
    # The promoted version's counters carry on from where they were: never reset.
    assert server.metric("shopping_guide_requests_total", model_version=knn) == requests
    assert server.metric("shopping_guide_feedback_total", model_version=knn) == clicks
    assert server.metric("shopping_guide_model_info", model_version=knn, role="stable") == 1
    assert server.metric("shopping_guide_requests_total", model_version="none") >= 1

    # A click on a list the retired version served, after the promotion: still attributed to
    # it, yet its series do not come back.
    status, body = server.request("POST", "/v1/feedback", _click(served[als]))
    assert status == 202 and body["model_version"] == als
    assert _series(server, als) == []
    assert server.metric("shopping_guide_feedback_total", model_version=knn) == clicks
    # Counted, under one label for every version no longer served.
    assert server.metric("shopping_guide_feedback_total", model_version="retired") == 1

    # Rolled back to it: routed again, it is counted again (from zero), and knn goes.
    _route(server, 4, stable=als)
    _shop(server)
    assert server.metric("shopping_guide_recommendations_total", model_version=als) == len(USERS)
    assert _series(server, knn) == []
