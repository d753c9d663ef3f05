"""The autoscaling/v2 HorizontalPodAutoscaler: CPU, an optional per-pod custom metric, or both."""

from __future__ import annotations

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata


def build_hpa(guide: Guide) -> JSON | None:
    scaling = guide.serving.autoscaling
    if scaling is None:
        return None
    metrics: list[JSON] = []
    if scaling.target_cpu is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu},
                },
            }
        )
    if scaling.metric_name:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": scaling.metric_name},
                    "target": {"type": "AverageValue", "averageValue": scaling.metric_average},
                },
            }
        )
    spec: JSON = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": guide.name},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
    }
    if scaling.scale_down_stabilization_seconds is not None:
        window = int(scaling.scale_down_stabilization_seconds)
        spec["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": window}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(guide, guide.name, COMPONENT_SERVING),
        "spec": spec,
    }
