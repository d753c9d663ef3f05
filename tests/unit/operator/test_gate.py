"""The quality gate: an absolute floor and a bounded regression against the stable model."""

from __future__ import annotations

from typing import Any

from shopping_guide_operator.gate import evaluate
from shopping_guide_operator.spec import Gate

GATE = Gate(metric="ndcg@10", minimum=0.05, max_regression=0.02)


def result(ndcg: float, champion: float | None = None, version: str = "v1") -> dict[str, Any]:
    doc: dict[str, Any] = {"version": "v2", "metrics": {"ndcg@10": ndcg, "coverage": 0.5}}
    if champion is not None:
        doc["champion"] = {"version": version, "metrics": {"ndcg@10": champion}}
    return doc


def test_first_model_needs_only_the_minimum() -> None:
    assert evaluate(result(0.06), GATE, stable_version=None).passed
    verdict = evaluate(result(0.04), GATE, stable_version=None)
    assert not verdict.passed
    assert verdict.reasons == ("ndcg@10 0.0400 is below the minimum 0.05",)


def test_regression_within_the_bound_passes() -> None:
    verdict = evaluate(result(0.30, champion=0.31), GATE, stable_version="v1")
    assert verdict.passed
    assert verdict.champion_value == 0.31
    assert "stable model: 0.3100" in verdict.summary()


def test_regression_beyond_the_bound_is_rejected() -> None:
    verdict = evaluate(result(0.25, champion=0.31), GATE, stable_version="v1")
    assert not verdict.passed
    assert "0.0600 below the stable model's 0.3100 (maxRegression 0.02)" in verdict.summary()


def test_both_failures_are_reported() -> None:
    verdict = evaluate(result(0.01, champion=0.31), GATE, stable_version="v1")
    assert len(verdict.reasons) == 2


def test_a_champion_score_of_another_version_does_not_count() -> None:
    verdict = evaluate(result(0.30, champion=0.31, version="v0"), GATE, stable_version="v1")
    assert not verdict.passed
    assert "was not scored on the same holdout" in verdict.summary()


def test_missing_champion_score_names_the_trainer_error() -> None:
    doc = result(0.30)
    doc["champion_error"] = "version v1 not found"
    verdict = evaluate(doc, GATE, stable_version="v1")
    assert not verdict.passed
    assert "version v1 not found" in verdict.summary()


def test_no_regression_check_when_switched_off() -> None:
    gate = Gate(metric="ndcg@10", minimum=0.0, max_regression=None)
    assert evaluate(result(0.1), gate, stable_version="v1").passed


def test_missing_metric_is_a_rejection() -> None:
    verdict = evaluate(result(0.3), Gate(metric="map@10"), stable_version=None)
    assert not verdict.passed
    assert verdict.reasons == ("the result has no metric map@10",)


def test_coverage_can_be_the_gate_metric() -> None:
    assert evaluate(result(0.3), Gate(metric="coverage", minimum=0.4), None).passed
