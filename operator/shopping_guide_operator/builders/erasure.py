"""The Job that forgets the users of one erasure request in every stored model version."""

from __future__ import annotations

from ..constants import MODEL_MOUNT, TERMINATION_LOG
from ..erasure import Request, job_name
from ..spec import JSON, Guide
from .common import batch_pod_template, labels, metadata, models_volume

COMPONENT_ERASURE = "erasure"
# Long enough for an audit to find the Job; the request's status keeps the outcome after it.
FINISHED_JOB_TTL_SECONDS = 7 * 86400


def build_erasure_job(guide: Guide, request: Request) -> JSON:
    args = [
        "forget-users",
        "--model-store",
        MODEL_MOUNT,
        "--termination-log",
        TERMINATION_LOG,
        *(arg for digest in request.user_hashes for arg in ("--user-sha256", digest)),
    ]
    template = batch_pod_template(
        guide,
        labels(guide, COMPONENT_ERASURE),
        args,
        [{"name": "models", "mountPath": MODEL_MOUNT}],
        [models_volume(guide)],
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(guide, job_name(guide.name, request), COMPONENT_ERASURE),
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": guide.training.active_deadline_seconds,
            "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
            "template": template,
        },
    }
