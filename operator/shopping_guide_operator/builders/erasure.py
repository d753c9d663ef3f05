"""The Job that forgets the users of one erasure request in every stored model version."""

from __future__ import annotations

from ..constants import MODEL_MOUNT, TERMINATION_LOG, TRAINER_CONTAINER
from ..erasure import Request, job_name
from ..spec import JSON, Guide
from .common import (
    container_security_context,
    labels,
    metadata,
    placement,
    pod_security_context,
    pull_secrets,
    tmp_volume,
)

COMPONENT_ERASURE = "erasure"
# Long enough for an audit to find the Job; the request's status keeps the outcome after it.
FINISHED_JOB_TTL_SECONDS = 7 * 86400


def build_erasure_job(guide: Guide, request: Request) -> JSON:
    tmp, tmp_mount = tmp_volume()
    pod_labels = labels(guide, COMPONENT_ERASURE)
    container: JSON = {
        "name": TRAINER_CONTAINER,
        "image": guide.image,
        "imagePullPolicy": guide.image_pull_policy,
        "command": ["shopping-guide"],
        "args": [
            "forget-users",
            "--model-store",
            MODEL_MOUNT,
            "--termination-log",
            TERMINATION_LOG,
            *(arg for digest in request.user_hashes for arg in ("--user-sha256", digest)),
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "models", "mountPath": MODEL_MOUNT}, tmp_mount],
    }
    if guide.training.resources:
        container["resources"] = dict(guide.training.resources)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(guide, job_name(guide.name, request), COMPONENT_ERASURE),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": guide.training.active_deadline_seconds,
            "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": guide.model_store_claim},
                        },
                        tmp,
                    ],
                    **placement(guide.training.placement),
                    **pull_secrets(guide),
                },
            },
        },
    }
