"""The Grafana dashboard only charts metrics the server really exports, as they are exported."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from shopping_guide.serving.metrics import ServerMetrics
from shopping_guide_operator import metrics as operator_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "shopping-guide.json"

# The series names a metric of each type has in Prometheus.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every queryable name, from the metric objects themselves: the suffixes their type has."""
    return {
        metric.name + suffix for metric in registry.collect() for suffix in SUFFIXES[metric.type]
    }


def server_series() -> set[str]:
    return series_names(ServerMetrics().registry)


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_query_uses_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = server_series() | series_names(operator_metrics.REGISTRY)
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(shopping_guide_[a-z_]+)\b", target["expr"]))
    assert used, "the dashboard queries nothing"
    assert used <= exported, used - exported
    assert dashboard["uid"] == "shopping-guide"


def test_suffixes_follow_the_metric_type() -> None:
    names = server_series()
    assert "shopping_guide_requests_total" in names  # a counter
    assert "shopping_guide_request_duration_seconds_bucket" in names  # a histogram
    assert "shopping_guide_routing_generation" in names  # a gauge...
    assert "shopping_guide_routing_generation_total" not in names  # ...has no _total
    assert "shopping_guide_model_load_seconds_bucket" not in names
    assert "shopping_guide_requests" not in names


def test_every_server_query_selects_the_guide() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "guide" in variables and "guide" in variables["guide"]["query"]
    server = server_series()
    for expr in queries(dashboard):
        for match in re.finditer(r"\b(shopping_guide_[a-z_]+)\b(\{[^}]*\})?", expr):
            if match.group(1) in server:
                assert 'guide=~"$guide"' in (match.group(2) or ""), expr
