"""The Grafana dashboard only charts metrics the server really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shopping_guide.serving.metrics import ServerMetrics
from shopping_guide_operator import metrics as operator_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "shopping-guide.json"


def exported_names() -> set[str]:
    names = set()
    registries = (ServerMetrics().registry, operator_metrics.REGISTRY)
    for metric in (m for registry in registries for m in registry.collect()):
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        names |= {f"{metric.name}_total", f"{metric.name}_bucket"}
    return names


def test_every_query_uses_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(shopping_guide_[a-z_]+)\b", target["expr"]))
    assert used, "the dashboard queries nothing"
    assert used <= exported, used - exported
    assert dashboard["uid"] == "shopping-guide"
