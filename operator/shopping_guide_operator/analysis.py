"""Canary analysis: measurements of the canary and the stable version in, a verdict out.

Pure, so every rule is tested on plain numbers. Too little data is a verdict of its own,
`inconclusive`: it holds the rollout, it never passes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class VersionMetrics:
    """One model version over one analysis window. Business events (carts, purchases and
    their revenue) are optional so that a guide whose shop sends only clicks still analyses."""

    requests: float
    errors: float
    p99_seconds: float | None
    recommendations: float
    clicks: float
    carts: float = 0.0
    purchases: float = 0.0
    revenue: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def click_through(self) -> float | None:
        return self.clicks / self.recommendations if self.recommendations > 0 else None

    @property
    def add_to_cart(self) -> float | None:
        return self.carts / self.recommendations if self.recommendations > 0 else None

    @property
    def conversion(self) -> float | None:
        return self.purchases / self.recommendations if self.recommendations > 0 else None

    @property
    def revenue_per_thousand(self) -> float | None:
        """Revenue per thousand recommendations served (RPM)."""
        return 1000 * self.revenue / self.recommendations if self.recommendations > 0 else None


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 100
    max_error_rate: float | None = 0.01
    max_latency_p99_ms: float | None = None
    min_click_through_ratio: float | None = None
    min_conversion_ratio: float | None = None
    min_revenue_ratio: float | None = None
    # Stable needs this many recommendations before its click-through is a baseline. Not read
    # from the spec: the CRD has no such field (it would be pruned).
    min_stable_recommendations: int = 100
    # Purchases are rarer than clicks: the stable version needs this many in the window, and
    # the canary this many expected at the stable's conversion, before conversion or revenue
    # is compared (below it: inconclusive).
    min_stable_purchases: int = 20

    @classmethod
    def from_spec(cls, analysis: dict[str, Any]) -> Thresholds:
        return cls(
            min_requests=int(analysis.get("minRequests", 100)),
            max_error_rate=_opt_float(analysis.get("maxErrorRate", 0.01)),
            max_latency_p99_ms=_opt_float(analysis.get("maxLatencyP99Ms")),
            min_click_through_ratio=_opt_float(analysis.get("minClickThroughRatio")),
            min_conversion_ratio=_opt_float(analysis.get("minConversionRatio")),
            min_revenue_ratio=_opt_float(analysis.get("minRevenueRatio")),
            min_stable_purchases=int(analysis.get("minStablePurchases", 20)),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Verdict:
    result: Result
    reasons: tuple[str, ...] = ()
    values: dict[str, float | None] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else self.result.value


@dataclass(frozen=True)
class _RatioGate:
    """canary / stable of one business rate, with the sample the stable side needs."""

    name: str  # as the reasons say it
    key: str  # the verdict's values: <key>, stable<Key>, and `ratio_key`
    ratio_key: str
    minimum: float | None
    canary: float | None
    stable: float | None
    baseline_ready: bool

    @property
    def ratio(self) -> float | None:
        if self.canary is None or not self.stable:
            return None
        return self.canary / self.stable


def _gates(
    canary: VersionMetrics, stable: VersionMetrics | None, thresholds: Thresholds
) -> list[_RatioGate]:
    enough_recommendations = (
        stable is not None and stable.recommendations >= thresholds.min_stable_recommendations
    )
    # Both sides need enough purchases to compare: the stable's counted, the canary's expected
    # at the stable's rate (zero purchases from a few canary lists is chance, not a verdict).
    enough_purchases = (
        stable is not None
        and stable.purchases >= thresholds.min_stable_purchases
        and (stable.conversion or 0.0) * canary.recommendations >= thresholds.min_stable_purchases
    )
    return [
        _RatioGate(
            "click-through", "clickThrough", "clickThroughRatio",
            thresholds.min_click_through_ratio, canary.click_through,
            None if stable is None else stable.click_through,
            enough_recommendations,
        ),
        _RatioGate(
            "conversion", "conversion", "conversionRatio", thresholds.min_conversion_ratio,
            canary.conversion, None if stable is None else stable.conversion,
            enough_recommendations and enough_purchases,
        ),
        _RatioGate(
            "revenue per thousand recommendations", "revenuePerThousand", "revenueRatio",
            thresholds.min_revenue_ratio, canary.revenue_per_thousand,
            None if stable is None else stable.revenue_per_thousand,
            enough_recommendations and enough_purchases,
        ),
    ]  # fmt: skip


def analyse(
    canary: VersionMetrics | None,
    stable: VersionMetrics | None,
    thresholds: Thresholds,
    unavailable: str | None = None,
) -> Verdict:
    """The verdict for one window. `unavailable` says why no measurement could be taken."""
    if unavailable is not None or canary is None:
        return Verdict(Result.INCONCLUSIVE, (unavailable or "no measurement of the canary",))
    gates = _gates(canary, stable, thresholds)
    values: dict[str, float | None] = {
        "requests": canary.requests,
        "errorRate": canary.error_rate,
        "latencyP99Ms": None if canary.p99_seconds is None else canary.p99_seconds * 1000,
        "addToCart": canary.add_to_cart,
    }
    for gate in gates:
        stable_key = "stable" + gate.key[0].upper() + gate.key[1:]
        values |= {gate.key: gate.canary, stable_key: gate.stable, gate.ratio_key: gate.ratio}
    if canary.requests < thresholds.min_requests:
        return Verdict(
            Result.INCONCLUSIVE,
            (f"{canary.requests:.0f} canary requests, fewer than {thresholds.min_requests}",),
            values,
        )
    failures: list[str] = []
    error_rate = canary.error_rate or 0.0
    if thresholds.max_error_rate is not None and error_rate > thresholds.max_error_rate:
        failures.append(f"error rate {error_rate:.4f} above {thresholds.max_error_rate}")
    p99_ms = values["latencyP99Ms"]
    if (
        thresholds.max_latency_p99_ms is not None
        and p99_ms is not None
        and p99_ms > thresholds.max_latency_p99_ms
    ):
        failures.append(f"p99 latency {p99_ms:.1f} ms above {thresholds.max_latency_p99_ms} ms")
    waiting: list[str] = []
    for gate in gates:
        if gate.minimum is None:
            continue
        if not gate.baseline_ready or not gate.stable:
            waiting.append(f"stable {gate.name} has too little data")
        elif gate.ratio is not None and gate.ratio < gate.minimum:
            failures.append(f"{gate.name} ratio {gate.ratio:.3f} below {gate.minimum}")
    if failures:
        return Verdict(Result.FAIL, tuple(failures), values)
    if waiting:
        return Verdict(Result.INCONCLUSIVE, tuple(waiting), values)
    return Verdict(Result.PASS, (), values)
