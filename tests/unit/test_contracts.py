"""The routing contract: sticky, monotonic, uniform cohorts and strict parsing."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import yaml

from shopping_guide.artifacts import new_version
from shopping_guide_contracts import training_result
from shopping_guide_contracts.routing import BASIS_POINTS, Routing, RoutingError, bucket, parse
from shopping_guide_contracts.training_result import ResultError
from shopping_guide_contracts.versions import (
    MAX_LENGTH,
    VERSION_CEL_RULE,
    VERSION_PATTERN,
    VersionError,
    is_valid_version,
    validate_version,
)
from shopping_guide_operator.runs import JobView, judge
from shopping_guide_operator.spec import Gate
from tests.conftest import REPO


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


# The version grammar -----------------------------------------------------------------------
GOOD_VERSIONS = ["v1", "v20261201-115447-a1b2c3", "2026.12.01", "a", "model_7", "v" + "1" * 62]
BAD_VERSIONS = [
    "",
    "..",
    "a/b",
    "../etc",
    "v1..v2",
    ".hidden",
    "-v1",
    "v1-",
    "V1",
    "v 1",
    "v1\n",
    "v" * 64,
    "é",
]


@pytest.mark.parametrize("version", GOOD_VERSIONS)
def test_good_version_names(version: str) -> None:
    assert validate_version(version) == version
    assert Routing(version, None).stable == version


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_version_names_are_refused_everywhere(version: str) -> None:
    with pytest.raises(VersionError):
        validate_version(version)
    with pytest.raises(RoutingError, match="version name"):
        Routing(version, None)
    with pytest.raises(RoutingError, match="version name"):
        Routing("v1", version)
    with pytest.raises(ResultError, match="not a version name"):
        training_result.validate(_result(version))


def test_the_trainer_mints_valid_names() -> None:
    for _ in range(20):
        assert is_valid_version(new_version())


def test_a_result_with_a_slash_in_its_version_is_a_failed_run() -> None:
    message = training_result.encode_termination_message(_result("models/v1"))
    job = JobView("storefront-train-1", "initial", "Succeeded", 1.0, 2.0)
    finished = judge(job, message, Gate(), None, 3.0)
    assert finished.outcome == "Failed"
    assert finished.version is None
    assert "unreadable training result" in finished.message
    assert "'models/v1' is not a version name" in finished.message


def _result(version: str) -> dict[str, Any]:
    return {
        "version": version,
        "artifact": f"/models/{version}",
        "metrics": {"ndcg@10": 0.3},
        "baseline": {"popularity": {"ndcg@10": 0.1}},
        "data": {},
    }


# The failure message -----------------------------------------------------------------------
@pytest.mark.parametrize("char", ["é", "😀", "x", '"', "\u2028", "\x00"])
def test_a_long_failure_fits_the_termination_message(char: str) -> None:
    reason = "fault: " + char * 10_000
    text = training_result.encode_failure(reason)
    assert len(text.encode("utf-8")) <= training_result.TERMINATION_MESSAGE_LIMIT
    document = json.loads(text)
    assert document["schema"] == training_result.SCHEMA_VERSION
    assert reason.startswith(document["error"])
    # Cut close to the limit, not far below it.
    assert len(text.encode("utf-8")) > training_result.TERMINATION_MESSAGE_LIMIT - 16


def test_a_short_failure_is_kept_whole() -> None:
    text = training_result.encode_failure("disk full é 😀")
    assert json.loads(text)["error"] == "disk full é 😀"


def test_the_crd_pins_versions_by_the_same_grammar() -> None:
    crd = yaml.safe_load((REPO / "crds" / "shoppingguide.io_shoppingguides.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pinned = schema["properties"]["spec"]["properties"]["model"]["properties"]["pinnedVersion"]
    assert pinned["pattern"] == VERSION_PATTERN
    assert [r["rule"] for r in pinned["x-kubernetes-validations"]] == [VERSION_CEL_RULE]
    assert pinned["maxLength"] == MAX_LENGTH
