"""The Job that forgets the users of one erasure request in every stored model version."""

from __future__ import annotations

from ..constants import TERMINATION_LOG
from ..erasure import Request, job_name
from ..spec import JSON, Guide
from . import store
from .common import batch_pod_template, labels, metadata

COMPONENT_ERASURE = "erasure"
# Long enough for an audit to find the Job; the request's status keeps the outcome after it.
FINISHED_JOB_TTL_SECONDS = 7 * 86400


def build_erasure_job(guide: Guide, request: Request) -> JSON:
    models = store.model_store(guide, writes=True)
    args = [
        "forget-users",
        *models.args,
        "--termination-log",
        TERMINATION_LOG,
        *(arg for digest in request.user_hashes for arg in ("--user-sha256", digest)),
    ]
    template = batch_pod_template(
        guide,
        labels(guide, COMPONENT_ERASURE),
        args,
        models.mounts,
        models.volumes,
        env=models.env,
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
