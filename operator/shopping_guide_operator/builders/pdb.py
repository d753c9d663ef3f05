"""The PodDisruptionBudget of the serving pods: node drains keep enough of them serving."""

from __future__ import annotations

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata, selector


def build_pdb(guide: Guide) -> JSON | None:
    budget = guide.serving.pdb
    if budget is None:
        return None
    spec: JSON = {"selector": {"matchLabels": selector(guide, COMPONENT_SERVING)}}
    if budget.get("minAvailable") is not None:
        spec["minAvailable"] = budget["minAvailable"]
    else:
        spec["maxUnavailable"] = budget.get("maxUnavailable", 1)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(guide, guide.name, COMPONENT_SERVING),
        "spec": spec,
    }
