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
    money = Thresholds.from_spec({"minConversionRatio": 0.95, "minRevenueRatio": 0.9,
                                  "minStablePurchases": 40})  # fmt: skip
    assert (money.min_conversion_ratio, money.min_revenue_ratio) == (0.95, 0.9)
    assert money.min_stable_purchases == 40 and Thresholds.from_spec({}).min_stable_purchases == 20


# Stable: 1000 lists, 100 clicks, 50 purchases worth 2,000: conversion 5%, RPM 2,000.
SHOP = VersionMetrics(requests=1000, errors=0, p99_seconds=0.01, recommendations=1000, clicks=100,
                      carts=80, purchases=50, revenue=2000.0)  # fmt: skip
MONEY = Thresholds(min_requests=100, min_conversion_ratio=0.9, min_revenue_ratio=0.9)


def shop(**overrides: float) -> VersionMetrics:
    values = {"requests": 600, "errors": 0, "p99_seconds": 0.01, "recommendations": 600,
              "clicks": 60, "carts": 48, "purchases": 30, "revenue": 1200.0}  # fmt: skip
    values |= overrides
    return VersionMetrics(**values)


def test_conversion_and_revenue_are_compared_with_the_stable_version() -> None:
    verdict = analyse(shop(), SHOP, MONEY)
    assert verdict.result == Result.PASS
    assert verdict.values["conversion"] == 0.05 and verdict.values["stableConversion"] == 0.05
    assert verdict.values["revenuePerThousand"] == 2000.0
    assert verdict.values["revenueRatio"] == 1.0 and verdict.values["addToCart"] == 0.08
    # As many clicks, fewer sales: the click-through gate would pass it, conversion does not.
    fewer = analyse(shop(purchases=20, revenue=800.0), SHOP, MONEY)
    assert fewer.result == Result.FAIL
    assert "conversion ratio 0.667 below 0.9" in fewer.summary()
    assert "revenue per thousand recommendations ratio 0.667 below 0.9" in fewer.summary()
    # As many sales, cheaper baskets: only revenue fails.
    cheaper = analyse(shop(revenue=900.0), SHOP, Thresholds(min_revenue_ratio=0.9))
    assert cheaper.result == Result.FAIL and cheaper.reasons == (
        "revenue per thousand recommendations ratio 0.750 below 0.9",
    )


def test_too_few_purchases_on_either_side_is_inconclusive() -> None:
    few = VersionMetrics(requests=1000, errors=0, p99_seconds=0.01, recommendations=1000,
                         clicks=100, purchases=5, revenue=200.0)  # fmt: skip
    verdict = analyse(shop(), few, MONEY)
    assert verdict.result == Result.INCONCLUSIVE
    assert "stable conversion has too little data" in verdict.summary()
    # 300 canary lists at the stable's 5% conversion: 15 purchases expected, fewer than 20.
    early = analyse(shop(requests=300, recommendations=300, purchases=0, revenue=0.0), SHOP, MONEY)
    assert early.result == Result.INCONCLUSIVE
    # Without business thresholds, the same numbers pass on clicks alone.
    assert analyse(shop(purchases=0, revenue=0.0), SHOP, LIMITS).result == Result.PASS
