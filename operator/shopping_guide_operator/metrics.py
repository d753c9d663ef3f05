"""The operator's own Prometheus metrics: reconcile passes, Events by reason, rollouts.

Rollout and training outcomes are counted from the Events reconcile already emits, so a
number on the dashboard and a line in `kubectl describe` always tell the same story.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from .status import Event

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "shopping_guide_operator_reconciles",
    "Reconcile passes, by result",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "shopping_guide_operator_reconcile_duration_seconds",
    "Duration of one reconcile pass",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
EVENTS = Counter(
    "shopping_guide_operator_events",
    "Kubernetes Events posted, by type and reason",
    ["type", "reason"],
    registry=REGISTRY,
)
ROLLOUTS = Counter(
    "shopping_guide_operator_rollouts",
    "Canary rollouts, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
ROLLOUT_OUTCOMES = {
    "CanaryStarted": "started",
    "CanaryPromoted": "promoted",
    "CanaryRolledBack": "rolled_back",
}


def count_events(events: Iterable[Event]) -> None:
    for kind, reason, _ in events:
        EVENTS.labels(kind, reason).inc()
        outcome = ROLLOUT_OUTCOMES.get(reason)
        if outcome:
            ROLLOUTS.labels(outcome).inc()


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address, registry=REGISTRY)
