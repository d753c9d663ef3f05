"""The serving Deployment: every pod holds the routed model versions and reads the routing file.

The routing ConfigMap is mounted as a directory, never with subPath: kubelet then swaps a
symlink when the ConfigMap changes and the server picks the new routing up, so a promotion
restarts no pod. The pod template depends on the spec only, never on the routing.
"""

from __future__ import annotations

from shopping_guide_contracts.routing import CONFIGMAP_KEY

from ..constants import COMPONENT_SERVING, ROUTING_MOUNT, SERVER_CONTAINER
from ..spec import JSON, Guide
from . import store
from .attribution import ATTRIBUTION_MOUNT, attribution_key_path, attribution_secret_name
from .common import (
    container_security_context,
    guide_store_args,
    labels,
    metadata,
    placement,
    pod_security_context,
    pull_secrets,
    routing_configmap_name,
    selector,
    tmp_volume,
)

# Stopping a serving pod loses no request: for PRESTOP_SECONDS after the pod is deleted it
# serves on while the endpoints controller, kube-proxy and ingress controllers stop sending it
# connections; then, on SIGTERM, it closes each kept-alive connection after its next response
# for DRAIN_SECONDS, closes its listener and gives requests in flight SHUTDOWN_SECONDS.
PRESTOP_SECONDS = 10
DRAIN_SECONDS = 3
SHUTDOWN_SECONDS = 15
# The grace period counts from the deletion, preStop included; a little more than all three,
# so that kubelet's SIGKILL never cuts the drain short.
TERMINATION_GRACE_SECONDS = PRESTOP_SECONDS + DRAIN_SECONDS + SHUTDOWN_SECONDS + 5


def server_args(guide: Guide) -> list[str]:
    return [
        "serve",
        *store.model_store(guide, writes=False, serves=True).args,
        *guide_store_args(guide),
        "--routing",
        f"{ROUTING_MOUNT}/{CONFIGMAP_KEY}",
        # The pod's own address (kubelet expands $(POD_IP) from the env below): the same in a
        # real cluster, and what lets many serving pods share one host in local runs.
        "--host",
        "$(POD_IP)",
        "--port",
        str(guide.serving.port),
        # /metrics on a port of its own: the NetworkPolicy opens it to scrapers only.
        "--metrics-port",
        str(guide.serving.metrics_port),
        "--guide-name",
        guide.name,
        # The key every pod of the guide signs recommendation ids with: feedback sent to any
        # pod is attributed to the version that served the list.
        "--attribution-key-file",
        attribution_key_path(),
        "--drain-seconds",
        str(DRAIN_SECONDS),
        "--shutdown-timeout",
        str(SHUTDOWN_SECONDS),
    ]


def build_deployment(guide: Guide) -> JSON:
    serving = guide.serving
    tmp, tmp_mount = tmp_volume()
    models = store.model_store(guide, writes=False, serves=True)
    container: JSON = {
        "name": SERVER_CONTAINER,
        "image": guide.image,
        "imagePullPolicy": guide.image_pull_policy,
        "command": ["shopping-guide"],
        "args": server_args(guide),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "OPENBLAS_NUM_THREADS", "value": "1"},
            # The `guide` label of every metric the server exports.
            {"name": "SHOPPING_GUIDE_NAME", "value": guide.name},
            *models.env,
            # Its worker processes without a CPU limit: the CPUs requested, rounded up.
            {
                "name": "SHOPPING_GUIDE_CPUS",
                "valueFrom": {
                    "resourceFieldRef": {
                        "containerName": SERVER_CONTAINER,
                        "resource": "requests.cpu",
                        "divisor": "1",
                    }
                },
            },
        ],
        "ports": [
            {"name": "http", "containerPort": serving.port, "protocol": "TCP"},
            # Scrape configs keep the container port named `metrics`.
            {"name": "metrics", "containerPort": serving.metrics_port, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            # Ready once the stable model is loaded and verified.
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # kubelet's own sleep (GA in Kubernetes 1.34, on by default since 1.30): the image
        # needs no sleep binary.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "resources": dict(serving.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [
            *models.mounts,
            {"name": "routing", "mountPath": ROUTING_MOUNT, "readOnly": True},
            {"name": "attribution", "mountPath": ATTRIBUTION_MOUNT, "readOnly": True},
            tmp_mount,
        ],
    }
    pod_labels = labels(guide, COMPONENT_SERVING)
    spec: JSON = {
        "selector": {"matchLabels": selector(guide, COMPONENT_SERVING)},
        "strategy": {
            "type": "RollingUpdate",
            # Never below the serving capacity while a new image rolls out.
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(serving.metrics_port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": pod_security_context(),
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "containers": [container],
                "volumes": [
                    *models.volumes,
                    {"name": "routing", "configMap": {"name": routing_configmap_name(guide)}},
                    {
                        "name": "attribution",
                        "secret": {"secretName": attribution_secret_name(guide)},
                    },
                    tmp,
                ],
                **placement(serving.placement),
                **pull_secrets(guide),
            },
        },
    }
    # With an HPA the replica count is its business alone: leaving the field out is what
    # keeps the operator, GitOps and the HPA from fighting over it.
    if serving.autoscaling is None:
        spec["replicas"] = serving.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(guide, guide.name, COMPONENT_SERVING),
        "spec": spec,
    }
