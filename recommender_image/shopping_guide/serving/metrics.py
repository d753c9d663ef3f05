"""Prometheus metrics of the server, labelled by model version and cohort.

The canary analysis divides these per version: requests and errors, latency, and
click-through (feedback clicks over recommendations served). Every series also carries the
constant label `guide`, the ShoppingGuide this server serves (SHOPPING_GUIDE_NAME): the
operator selects `{namespace=..., guide=...}`, so two guides in one namespace never mix.

A promotion restarts no pod, so the series of a version the routing no longer names are
removed (`route`), or /metrics would carry every version a pod ever served. Only versions once
routed and routed no more go: a routed version's counters must never reset (the analysis takes
their rate), and the labels that name no version (`unknown`, `mixed`, `none`) stay.

A pod of several worker processes (serving/workers.py) exports its totals through
prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, every process writes
its values to files there and /metrics adds them up (`PodTotals`), a dead worker's counters
included, so a restart resets no counter. Each gauge says how its processes combine. Files keep
what a process removes, so there the export does the removing: it drops the series of the
versions the pod no longer routes (once routed, now neither loaded nor failing in any worker)
and the presence gauges' zeros (`_Presence.clear` zeroes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

GUIDE_ENV = "SHOPPING_GUIDE_NAME"
GUIDE_LABEL = "guide"
# prometheus_client reads it when imported: set before a worker process imports it.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
REASON_LIMIT = 200

# Latency buckets around the targets (single-digit milliseconds).
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5)  # fmt: skip


def multiprocess_dir() -> str | None:
    """Where this process's metric values go when it is one of a pod's workers."""
    return os.environ.get(MULTIPROCESS_ENV) or None


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


class _Presence(Gauge):
    """A gauge whose series say that something is so (value 1): a loaded version, a failing
    one. In multiprocess mode `clear` cannot remove a value from the files, so it zeroes, and
    the export leaves zeros out."""

    def clear(self) -> None:
        if multiprocess_dir() is None:
            super().clear()
            return
        with self._lock:
            children = list(self._metrics.values())
        for child in children:
            child.set(0)  # type: ignore[attr-defined]


_PRESENCE = ("shopping_guide_model_info", "shopping_guide_model_load_failed")


class PodTotals(Collector):
    """The metrics of every worker of the pod, added up from the files in `path`, with
    `labels` added. A version is routed while a live worker has it loaded or failing (the
    presence gauges); once routed and routed no more, its series are left out. Routed again
    (a rollback), its counters start from zero, as a single process's would: what they held
    when it was retired is taken off."""

    def __init__(self, path: str, labels: dict[str, str]) -> None:
        self.inner = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        self.labels = labels
        self._ever_routed: set[str] = set()
        self._at_retirement: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def collect(self) -> Iterator[Metric]:
        metrics: list[Metric] = list(self.inner.collect())  # type: ignore[no-untyped-call]
        routed = {
            s.labels["model_version"]
            for m in metrics
            if m.name in _PRESENCE
            for s in m.samples
            if s.value
        }
        self._ever_routed |= routed
        retired = self._ever_routed - routed
        for metric in metrics:
            presence = metric.name in _PRESENCE
            counts = metric.type in ("counter", "histogram")
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            for sample in metric.samples:
                if presence and not sample.value:
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.labels.get("model_version") in retired:
                    if counts:
                        self._at_retirement[key] = sample.value
                    continue
                value = sample.value - self._at_retirement.get(key, 0.0)
                labels = {**self.labels, **sample.labels}
                out.samples.append(sample._replace(labels=labels, value=value))
            yield out


def pod_registry(path: str, guide: str) -> CollectorRegistry:
    """What /metrics exports for a pod of workers writing to `path`."""
    registry = CollectorRegistry()
    registry.register(PodTotals(path, {GUIDE_LABEL: guide}))
    return registry


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
        self._files = multiprocess_dir()
        if self._files is None:
            self.registry.register(_ConstantLabels(r, {GUIDE_LABEL: self.guide}, self._retire))
        else:
            self.registry.register(PodTotals(self._files, {GUIDE_LABEL: self.guide}))
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
            ("model_version",), registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model_load_failures = Counter(
            "shopping_guide_model_load_failures", "Versions that failed to load",
            ("model_version",), registry=r,
        )  # fmt: skip
        self.model_info = _Presence(
            "shopping_guide_model_info", "Loaded versions (1) and their role",
            ("model_version", "algorithm", "role"), registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        # In effect in a pod when in effect in every worker: the lowest.
        self.routing_generation = Gauge(
            "shopping_guide_routing_generation", "Routing generation in effect", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        # The newest routing every worker has read, whether or not each of its versions
        # loaded: a load failure reported with it is about that routing, not an older one.
        self.routing_generation_read = Gauge(
            "shopping_guide_routing_generation_read", "Routing generation read", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        # The pod's queue: every worker's admitted users summed, the load a scaler would read.
        self.queued_users = Gauge(
            "shopping_guide_scoring_queued_users",
            "Users admitted for scoring and not answered yet (queued or being scored)",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        # How much batching there is: a pod answering many users one pass at a time pays a
        # pass over the whole item matrix for each.
        self.batch_users = Histogram(
            "shopping_guide_scoring_batch_users", "Users scored together in one micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )  # fmt: skip
        # Where a batched request's time goes: waiting for a scoring thread, then its batch.
        # A wait that grows while batch times do not says the pod needs more CPUs.
        self.batch_wait = Histogram(
            "shopping_guide_scoring_wait_seconds",
            "Time a request waited for its micro-batch to start scoring",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "shopping_guide_scoring_batch_seconds",
            "Time of one micro-batch, from its start to its answers back on the event loop",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.canary_weight = Gauge(
            "shopping_guide_canary_weight_basis_points", "Canary weight in effect", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.model_load_failed = _Presence(
            "shopping_guide_model_load_failed",
            "1 while a routed version cannot load; reason: exception type and first line",
            ("model_version", "reason"), registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.canary_failed = Gauge(
            "shopping_guide_canary_load_failed", "1 while the routed canary could not load",
            registry=r, multiprocess_mode="livemax",
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
        # and would bring its series back. The files of multiprocess mode keep what is
        # removed: there PodTotals leaves the retired versions out instead.
        if self._files is not None:
            return
        for version in self._retired:
            for metric in self._versioned:
                metric.remove_by_labels({"model_version": version})
