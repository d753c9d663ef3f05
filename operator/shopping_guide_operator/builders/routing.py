"""The routing ConfigMap: the contract document the serving pods read, and nothing else."""

from __future__ import annotations

from dataclasses import replace

from shopping_guide_contracts.routing import CONFIGMAP_KEY, Routing

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata, routing_configmap_name


def build_routing_configmap(guide: Guide, routing: Routing) -> JSON:
    # The guide's rules ride along: a change reaches every pod at its next reload, at once.
    routing = replace(routing, merchandising=guide.serving.merchandising)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(guide, routing_configmap_name(guide), COMPONENT_SERVING),
        "data": {CONFIGMAP_KEY: routing.dumps()},
    }
