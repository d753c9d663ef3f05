"""Canary measurements from Prometheus, behind a small protocol.

Instant queries over the HTTP API (`/api/v1/query`) on the recommender's own metrics, per
model version, over one analysis window. Anything short of a clean answer (unreachable, slow,
an error status, a malformed body) raises `MeasurementError`, which the analysis turns into
an inconclusive verdict: no data never passes a canary.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import aiohttp

from .analysis import VersionMetrics


class MeasurementError(Exception):
    """The provider could not measure; the message says why, for the Event."""


class MetricsProvider(Protocol):
    async def measure(self, version: str, window_seconds: float) -> VersionMetrics: ...

    async def generation_applied(self) -> int | None: ...


def _matchers(selector: dict[str, str], **extra: str) -> str:
    labels = {**selector, **extra}
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def queries(version: str, window_seconds: float, selector: dict[str, str]) -> dict[str, str]:
    """The PromQL behind each measurement (pure, so it is tested as text)."""
    window = f"{max(int(window_seconds), 1)}s"
    served = _matchers(selector, endpoint="recommendations", model_version=version)
    by_version = _matchers(selector, model_version=version)
    clicks = _matchers(selector, model_version=version, event="click")
    return {
        "requests": f"sum(increase(shopping_guide_requests_total{{{served}}}[{window}]))",
        "errors": (
            f'sum(increase(shopping_guide_requests_total{{{served},code=~"5.."}}[{window}]))'
        ),
        "p99_seconds": (
            "histogram_quantile(0.99, sum by (le) ("
            f"rate(shopping_guide_request_duration_seconds_bucket{{{served}}}[{window}])))"
        ),
        "recommendations": (
            f"sum(increase(shopping_guide_recommendations_total{{{by_version}}}[{window}]))"
        ),
        "clicks": f"sum(increase(shopping_guide_feedback_total{{{clicks}}}[{window}]))",
    }


def scalar(body: Any) -> float | None:
    """The single value of an instant-vector answer; None when the vector is empty or NaN."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise MeasurementError(f"Prometheus answered with an error: {error}")
    result = body.get("data", {}).get("result")
    if not isinstance(result, list):
        raise MeasurementError("Prometheus answer has no result list")
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MeasurementError(f"malformed Prometheus sample: {result[0]!r}") from exc
    return None if math.isnan(value) else value


class PrometheusProvider:
    def __init__(
        self, address: str, selector: dict[str, str], timeout_seconds: float = 5.0
    ) -> None:
        self.address = address.rstrip("/")
        self.selector = selector
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> float | None:
        try:
            async with session.get(
                f"{self.address}/api/v1/query", params={"query": promql}
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MeasurementError(
                f"Prometheus at {self.address} unreachable: {exc or type(exc).__name__}"
            ) from exc
        return scalar(body)

    async def measure(self, version: str, window_seconds: float) -> VersionMetrics:
        values: dict[str, float | None] = {}
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for name, promql in queries(version, window_seconds, self.selector).items():
                values[name] = await self._query(session, promql)
        return VersionMetrics(
            requests=values["requests"] or 0.0,
            errors=values["errors"] or 0.0,
            p99_seconds=values["p99_seconds"],
            recommendations=values["recommendations"] or 0.0,
            clicks=values["clicks"] or 0.0,
        )

    async def generation_applied(self) -> int | None:
        """The lowest routing generation any scraped serving pod reports."""
        promql = f"min(shopping_guide_routing_generation{{{_matchers(self.selector)}}})"
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            value = await self._query(session, promql)
        return None if value is None else int(value)
