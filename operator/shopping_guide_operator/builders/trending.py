"""The Job that refreshes trending in the routed model versions (`spec.serving.trending`)."""

from __future__ import annotations

from shopping_guide_contracts.routing import CONFIGMAP_KEY

from ..constants import ROUTING_MOUNT, TERMINATION_LOG
from ..spec import JSON, Guide
from . import store
from .common import batch_pod_template, guide_store_args, labels, metadata, routing_configmap_name
from .training import FINISHED_JOB_TTL_SECONDS, trending_args

COMPONENT_TRENDING = "trending"


def refresh_args(guide: Guide) -> list[str]:
    """Only the columns trending reads: the item and the time, and the user, so that the
    events of forgotten users stay out of it."""
    data = guide.data
    args = ["refresh-trending", *store.events(guide).args]
    if data.format:
        args += ["--format", data.format]
    for column in ("user", "item", "time"):
        if data.columns.get(column):
            args += [f"--{column}-col", data.columns[column]]
    args += ["--on-invalid", data.on_invalid, *trending_args(guide)]
    args += [*store.model_store(guide, writes=True).args, *guide_store_args(guide)]
    # The versions it routes when the Job runs: a promotion meanwhile is refreshed too.
    args += ["--routing", f"{ROUTING_MOUNT}/{CONFIGMAP_KEY}", "--termination-log", TERMINATION_LOG]
    return args


def build_trending_job(guide: Guide, name: str) -> JSON:
    events, models = store.events(guide), store.model_store(guide, writes=True)
    template = batch_pod_template(
        guide,
        labels(guide, COMPONENT_TRENDING),
        refresh_args(guide),
        [*events.mounts, *models.mounts,
         {"name": "routing", "mountPath": ROUTING_MOUNT, "readOnly": True}],
        [*events.volumes, *models.volumes,
         {"name": "routing", "configMap": {"name": routing_configmap_name(guide)}}],
        env=[*events.env, *models.env],
    )  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(guide, name, COMPONENT_TRENDING),
        "spec": {
            # The next period is the retry: a failure is reported, not hammered.
            "backoffLimit": 0,
            "activeDeadlineSeconds": guide.training.active_deadline_seconds,
            "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
            "template": template,
        },
    }
