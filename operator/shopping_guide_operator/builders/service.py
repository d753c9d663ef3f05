"""The Service in front of the serving pods."""

from __future__ import annotations

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata, selector


def build_service(guide: Guide) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(guide, guide.name, COMPONENT_SERVING),
        "spec": {
            "type": guide.serving.service_type,
            "selector": selector(guide, COMPONENT_SERVING),
            "ports": [
                {
                    "name": "http",
                    "port": guide.serving.service_port,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }
