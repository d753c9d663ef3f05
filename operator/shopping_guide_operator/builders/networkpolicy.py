"""An optional NetworkPolicy: only the listed peers reach the serving port, and only the
metrics peers (default: any pod of the cluster, so Prometheus scrapes) the metrics port."""

from __future__ import annotations

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata, selector


def build_network_policy(guide: Guide) -> JSON | None:
    peers = guide.serving.network_policy_from
    if peers is None:
        return None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(guide, guide.name, COMPONENT_SERVING),
        "spec": {
            "podSelector": {"matchLabels": selector(guide, COMPONENT_SERVING)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    # No peers listed: any pod of this namespace, nothing from outside it.
                    "from": [dict(p) for p in peers] or [{"podSelector": {}}],
                    "ports": [{"port": guide.serving.port, "protocol": "TCP"}],
                },
                {
                    "from": [dict(p) for p in guide.serving.network_policy_metrics_from],
                    "ports": [{"port": guide.serving.metrics_port, "protocol": "TCP"}],
                },
            ],
        },
    }
