"""The routing contract: sticky, monotonic, uniform cohorts and strict parsing."""

from __future__ import annotations

import random

import pytest

from shopping_guide_contracts.routing import BASIS_POINTS, Routing, RoutingError, bucket, parse


def test_bucket_is_deterministic_and_salted() -> None:
    assert bucket("salt", "user-1") == bucket("salt", "user-1")
    assert 0 <= bucket("salt", "user-1") < BASIS_POINTS
    differing = sum(bucket("a", f"u{i}") != bucket("b", f"u{i}") for i in range(200))
    assert differing > 190


def test_cohorts_are_monotonic_in_the_weight() -> None:
    rng = random.Random(7)
    users = [f"user-{rng.getrandbits(48)}" for _ in range(2000)]
    previous: set[str] = set()
    for weight in (0, 1, 50, 500, 2500, 5000, 9999, 10000):
        routing = Routing("v1", "v2", weight, "salt-x", 1)
        canary = {u for u in users if routing.cohort(u) == "canary"}
        assert previous <= canary  # raising the weight never moves a user back
        previous = canary
    assert previous == set(users)


def test_canary_share_matches_the_weight() -> None:
    routing = Routing("v1", "v2", 2500, "s", 1)
    share = sum(routing.cohort(str(i)) == "canary" for i in range(20_000)) / 20_000
    assert share == pytest.approx(0.25, abs=0.015)


def test_no_canary_means_stable_for_everyone() -> None:
    assert Routing("v1", None, 10_000, "s").cohort("anyone") == "stable"


def test_round_trip_and_yaml() -> None:
    routing = Routing("v1", "v2", 500, "s", 4)
    assert parse(routing.dumps()) == routing
    assert parse("stable: v1\ncanary: null\ngeneration: 2\n") == Routing("v1", None, 0, "", 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be an object"),
        ('{"stable": "v1", "canaryWeightBasisPoints": 10001}', "0..10000"),
        ('{"stable": "v1", "canaryWeightBasisPoints": "5%"}', "must be an integer"),
        ('{"stable": "../etc"}', "version name"),
        ('{"stable": "v1", "schema": 9}', "schema 9"),
        ("{stable: [", "neither JSON nor YAML"),
    ],
)
def test_bad_documents_are_rejected(text: str, message: str) -> None:
    with pytest.raises(RoutingError, match=message):
        parse(text)
