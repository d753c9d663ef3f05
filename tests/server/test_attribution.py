"""Feedback attributed behind a Service: three servers, each request and each feedback sent to
any of them (as a Service spreads them), the id alone tells which version and cohort served."""

from __future__ import annotations

import contextlib
import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import Models, Server, running_server

LISTS = 60


def unknown_share(servers: list[Server], seed: int = 7) -> float:
    """Recommendations and feedback through randomly chosen servers; the share of feedback
    the servers' metrics count as `unknown`."""
    pick = random.Random(seed)
    for n in range(LISTS):
        user = f"{'ab'[n % 2]}-user-{n % 30}"
        status, body = pick.choice(servers).get(f"/v1/recommendations?user_id={user}&k=3")
        assert status == 200, body
        feedback = {"recommendation_id": body["recommendation_id"], "user_id": user,
                    "item_id": body["items"][0]["item_id"], "event": "click"}  # fmt: skip
        status, answer = pick.choice(servers).request("POST", "/v1/feedback", feedback)
        assert status == 202, answer
        if answer["attribution"] == "verified":
            assert answer["model_version"] == body["model_version"]
            assert answer["cohort"] == body["cohort"]
    counted = sum(s.metric("shopping_guide_feedback_total") for s in servers)
    unknown = sum(
        s.metric("shopping_guide_feedback_total", model_version="unknown") for s in servers
    )
    assert counted == LISTS
    return unknown / counted


@contextlib.contextmanager
def three_servers(models: Models, root: Path, key: Path | None) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        flags = [] if key is None else ["--attribution-key-file", str(key)]
        yield [
            stack.enter_context(
                running_server(
                    models.store, models.als, root / f"pod-{n}", *flags, canary=models.knn
                )
            )
            for n in range(3)
        ]


def test_any_server_with_the_guides_key_attributes_the_feedback(
    models: Models, tmp_path: Path
) -> None:
    key = tmp_path / "attribution-key"
    key.write_text(secrets.token_urlsafe(32))
    with three_servers(models, tmp_path, key) as servers:
        assert unknown_share(servers) == 0.0
        canary = sum(
            s.metric("shopping_guide_feedback_total", cohort="canary", model_version=models.knn)
            for s in servers
        )
        assert 0 < canary < LISTS  # both cohorts attributed, each to its own version


def test_without_a_shared_key_most_feedback_is_unknown(models: Models, tmp_path: Path) -> None:
    """What a pod-local record of served lists gave behind a Service of three pods: only the
    feedback that happens to reach the serving pod is attributed, about a third."""
    with three_servers(models, tmp_path, None) as servers:
        share = unknown_share(servers)
    assert 0.5 < share < 0.85, share


def test_a_key_too_short_stops_the_server(models: Models, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("short")
    flags = ("--attribution-key-file", str(key))
    with (
        pytest.raises(AssertionError, match="at least 32"),
        running_server(models.store, models.als, tmp_path, *flags),
    ):
        pass
