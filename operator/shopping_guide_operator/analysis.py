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
    """One model version over one analysis window."""

    requests: float
    errors: float
    p99_seconds: float | None
    recommendations: float
    clicks: float

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def click_through(self) -> float | None:
        return self.clicks / self.recommendations if self.recommendations > 0 else None


@dataclass(frozen=True)
class Thresholds:
    min_requests: int = 100
    max_error_rate: float | None = 0.01
    max_latency_p99_ms: float | None = None
    min_click_through_ratio: float | None = None
    # Stable needs this many recommendations before its click-through is a baseline. Not read
    # from the spec: the CRD has no such field (it would be pruned).
    min_stable_recommendations: int = 100

    @classmethod
    def from_spec(cls, analysis: dict[str, Any]) -> Thresholds:
        return cls(
            min_requests=int(analysis.get("minRequests", 100)),
            max_error_rate=_opt_float(analysis.get("maxErrorRate", 0.01)),
            max_latency_p99_ms=_opt_float(analysis.get("maxLatencyP99Ms")),
            min_click_through_ratio=_opt_float(analysis.get("minClickThroughRatio")),
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


def analyse(
    canary: VersionMetrics | None,
    stable: VersionMetrics | None,
    thresholds: Thresholds,
    unavailable: str | None = None,
) -> Verdict:
    """The verdict for one window. `unavailable` says why no measurement could be taken."""
    if unavailable is not None or canary is None:
        return Verdict(Result.INCONCLUSIVE, (unavailable or "no measurement of the canary",))
    ratio = None
    if canary.click_through is not None and stable is not None and stable.click_through:
        ratio = canary.click_through / stable.click_through
    values: dict[str, float | None] = {
        "requests": canary.requests,
        "errorRate": canary.error_rate,
        "latencyP99Ms": None if canary.p99_seconds is None else canary.p99_seconds * 1000,
        "clickThrough": canary.click_through,
        "stableClickThrough": None if stable is None else stable.click_through,
        "clickThroughRatio": ratio,
    }
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
    if thresholds.min_click_through_ratio is not None:
        baseline_ready = (
            stable is not None
            and stable.recommendations >= thresholds.min_stable_recommendations
            and stable.click_through
        )
        if not baseline_ready:
            if not failures:
                return Verdict(
                    Result.INCONCLUSIVE, ("stable click-through has too little data",), values
                )
        elif ratio is not None and ratio < thresholds.min_click_through_ratio:
            failures.append(
                f"click-through ratio {ratio:.3f} below {thresholds.min_click_through_ratio}"
            )
    if failures:
        return Verdict(Result.FAIL, tuple(failures), values)
    return Verdict(Result.PASS, (), values)
