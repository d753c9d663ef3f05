"""Canary analysis verdicts on plain numbers."""

from __future__ import annotations

from shopping_guide_operator.analysis import Result, Thresholds, VersionMetrics, analyse

LIMITS = Thresholds(
    min_requests=100, max_error_rate=0.01, max_latency_p99_ms=50, min_click_through_ratio=0.9
)
STABLE = VersionMetrics(requests=1000, errors=0, p99_seconds=0.01, recommendations=1000, clicks=100)


def canary(**overrides: float) -> VersionMetrics:
    values = {"requests": 500, "errors": 0, "p99_seconds": 0.01, "recommendations": 500,
              "clicks": 50} | overrides  # fmt: skip
    return VersionMetrics(**values)


def test_a_healthy_canary_passes_with_its_values_recorded() -> None:
    verdict = analyse(canary(), STABLE, LIMITS)
    assert verdict.result == Result.PASS
    assert verdict.values["clickThroughRatio"] == 1.0
    assert verdict.values["latencyP99Ms"] == 10.0


def test_too_little_traffic_is_inconclusive_never_a_pass() -> None:
    verdict = analyse(canary(requests=99, recommendations=99, clicks=99), STABLE, LIMITS)
    assert verdict.result == Result.INCONCLUSIVE and "fewer than 100" in verdict.summary()


def test_each_threshold_fails_on_its_own() -> None:
    assert analyse(canary(errors=10), STABLE, LIMITS).result == Result.FAIL
    slow = analyse(canary(p99_seconds=0.2), STABLE, LIMITS)
    assert slow.result == Result.FAIL and "p99 latency 200.0 ms" in slow.summary()
    dull = analyse(canary(clicks=20), STABLE, LIMITS)
    assert dull.result == Result.FAIL and "click-through ratio 0.400" in dull.summary()


def test_unmeasurable_stable_click_through_is_inconclusive() -> None:
    quiet = VersionMetrics(requests=5, errors=0, p99_seconds=0.01, recommendations=5, clicks=0)
    assert analyse(canary(), quiet, LIMITS).result == Result.INCONCLUSIVE
    # ... unless the canary already fails on something else.
    assert analyse(canary(errors=100), quiet, LIMITS).result == Result.FAIL


def test_prometheus_unavailable_is_inconclusive() -> None:
    verdict = analyse(None, None, LIMITS, unavailable="Prometheus unreachable: timed out")
    assert verdict.result == Result.INCONCLUSIVE and "unreachable" in verdict.summary()


def test_thresholds_from_spec() -> None:
    limits = Thresholds.from_spec({"minRequests": 500, "maxErrorRate": 0.02, "maxLatencyP99Ms": 50,
                                   "minClickThroughRatio": 0.9})  # fmt: skip
    assert limits == Thresholds(500, 0.02, 50, 0.9)
