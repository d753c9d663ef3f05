"""Prometheus metrics of the server, labelled by model version and cohort.

The canary analysis divides these per version: requests and errors, latency, and
click-through (feedback clicks over recommendations served). Every series also carries the
constant label `guide`, the ShoppingGuide this server serves (SHOPPING_GUIDE_NAME): the
operator selects `{namespace=..., guide=...}`, so two guides in one namespace never mix.

A promotion restarts no pod, so the series of a version the routing no longer names are
removed (`route`), or /metrics would carry every version a pod ever served. Only versions once
routed and routed no more go: a routed version's counters must never reset (the analysis takes
their rate), and the labels that name no version (`unknown`, `mixed`, `none`) stay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

GUIDE_ENV = "SHOPPING_GUIDE_NAME"
GUIDE_LABEL = "guide"
REASON_LIMIT = 200

# Latency buckets around the targets (single-digit milliseconds).
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5)  # fmt: skip


class _ConstantLabels(Collector):
    """Every metric of `inner`, each sample with `labels` added (prometheus_client has no
    constant labels of its own). `before` runs first at each collection."""

    def __init__(
        self, inner: CollectorRegistry, labels: dict[str, str], before: Callable[[], None]
    ) -> None:
        self.inner, self.labels, self.before = inner, labels, before

    def collect(self) -> Iterator[Metric]:
        self.before()
        for metric in self.inner.collect():
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [s._replace(labels={**self.labels, **s.labels}) for s in metric.samples]
            yield out


def failure_reason(exc: BaseException) -> str:
    """A load failure as a label value: exception type and first line, at most 200 chars."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


class ServerMetrics:
    """`registry` is what /metrics exports: the server's metrics, each with `guide`."""

    def __init__(self, registry: CollectorRegistry | None = None, guide: str | None = None) -> None:
        self.guide = os.environ.get(GUIDE_ENV, "") if guide is None else guide
        self.registry = registry or CollectorRegistry()
        # The metrics live in a registry of their own; the exported one adds the guide label.
        self._routed: frozenset[str] = frozenset()
        self._retired: frozenset[str] = frozenset()
        r = CollectorRegistry()
        self.registry.register(_ConstantLabels(r, {GUIDE_LABEL: self.guide}, self._retire))
        labels = ("endpoint", "model_version", "cohort")
        self.requests = Counter(
            "shopping_guide_requests", "Requests answered", (*labels, "code"), registry=r
        )
        self.latency = Histogram(
            "shopping_guide_request_duration_seconds", "Time to answer", labels,
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "shopping_guide_errors", "Requests that failed, by reason", ("endpoint", "reason"),
            registry=r,
        )  # fmt: skip
        self.recommendations = Counter(
            "shopping_guide_recommendations", "Recommendation lists served",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.empty = Counter(
            "shopping_guide_empty_results", "Recommendation lists with no item",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.cold_starts = Counter(
            "shopping_guide_cold_starts", "Requests for users the model does not know",
            ("model_version", "cohort", "strategy"), registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "shopping_guide_feedback", "Feedback events attributed to the serving version",
            ("model_version", "cohort", "event"), registry=r,
        )  # fmt: skip
        self.impressions = Counter(
            "shopping_guide_impressions", "Items shown in recommendation lists",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.revenue = Counter(
            "shopping_guide_revenue",
            "Purchase value (quantity x unit price) attributed to the serving version",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.units = Counter(
            "shopping_guide_purchased_units", "Units bought from recommendation lists",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.unpriced = Counter(
            "shopping_guide_unpriced_purchases",
            "Purchases with no price sent and none in the catalogue (no revenue counted)",
            ("model_version", "cohort"), registry=r,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "shopping_guide_model_load_seconds", "Time to load and verify a version",
            ("model_version",), registry=r,
        )  # fmt: skip
        self.model_load_failures = Counter(
            "shopping_guide_model_load_failures", "Versions that failed to load",
            ("model_version",), registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "shopping_guide_model_info", "Loaded versions (1) and their role",
            ("model_version", "algorithm", "role"), registry=r,
        )  # fmt: skip
        self.routing_generation = Gauge(
            "shopping_guide_routing_generation", "Routing generation in effect", registry=r
        )
        self.canary_weight = Gauge(
            "shopping_guide_canary_weight_basis_points", "Canary weight in effect", registry=r
        )
        self.model_load_failed = Gauge(
            "shopping_guide_model_load_failed",
            "1 while a routed version cannot load; reason: exception type and first line",
            ("model_version", "reason"), registry=r,
        )  # fmt: skip
        self.canary_failed = Gauge(
            "shopping_guide_canary_load_failed", "1 while the routed canary could not load",
            registry=r,
        )  # fmt: skip
        self._versioned: tuple[MetricWrapperBase, ...] = (
            self.requests, self.latency, self.recommendations, self.empty, self.cold_starts,
            self.feedback, self.model_load_seconds, self.model_load_failures, self.model_info,
            self.model_load_failed, self.impressions, self.revenue, self.units, self.unpriced,
        )  # fmt: skip

    def route(self, versions: Iterable[str]) -> None:
        """The versions the routing names now; the series of those it named before go."""
        routed = frozenset(versions)
        self._retired = (self._retired | self._routed) - routed
        self._routed = routed
        self._retire()

    def _retire(self) -> None:
        # Also at each scrape: feedback for a list a retired version served comes in later
        # and would bring its series back.
        for version in self._retired:
            for metric in self._versioned:
                metric.remove_by_labels({"model_version": version})
