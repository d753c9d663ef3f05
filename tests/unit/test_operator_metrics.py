"""The operator's own metrics, served over HTTP and counted from the Events it posts."""

from __future__ import annotations

import socket
import urllib.request

from shopping_guide_operator import metrics


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_events_count_rollouts_and_reasons() -> None:
    before = sample("shopping_guide_operator_rollouts_total", outcome="rolled_back")
    metrics.count_events(
        [
            ("Normal", "CanaryStarted", "canary v2 starts"),
            ("Warning", "CanaryRolledBack", "v2 rolled back: click-through ratio 0.3 below 0.9"),
            ("Warning", "CanaryRolledBack", "v3 rolled back"),
        ]
    )
    assert sample("shopping_guide_operator_rollouts_total", outcome="rolled_back") == before + 2
    assert (
        sample("shopping_guide_operator_events_total", type="Warning", reason="CanaryRolledBack")
        >= 2
    )


def test_metrics_are_served_over_http() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port, "127.0.0.1")
    metrics.RECONCILES.labels("ok").inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'shopping_guide_operator_reconciles_total{result="ok"}' in text
    assert "shopping_guide_operator_reconcile_duration_seconds_bucket" in text
