"""The training Job (one per run) and the CronJob of scheduled runs: the same pod template.

The trainer writes its JSON result to the termination log, so the operator reads the result
from the finished pod's status without any shared storage or log scraping.
"""

from __future__ import annotations

from ..constants import (
    ANNOTATION_SPEC_HASH,
    COMPONENT_TRAINING,
    DATA_MOUNT,
    LABEL_RUN,
    LABEL_TRIGGER,
    MODEL_MOUNT,
    TERMINATION_LOG,
    TRAINER_CONTAINER,
)
from ..spec import JSON, Guide
from .common import (
    container_security_context,
    cronjob_name,
    job_name,
    labels,
    metadata,
    placement,
    pod_security_context,
    pull_secrets,
    tmp_volume,
)

TRIGGER_SCHEDULE = "schedule"
# Finished Jobs stay a day: long enough for an operator that was down to read their result.
FINISHED_JOB_TTL_SECONDS = 86400


def _number(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def trainer_args(guide: Guide, champion: str | None) -> list[str]:
    data, training = guide.data, guide.training
    args = ["train", "--events", f"{DATA_MOUNT}/{data.path}"]
    if data.format:
        args += ["--format", data.format]
    for column in ("user", "item", "event", "weight", "time"):
        if data.columns.get(column):
            args += [f"--{column}-col", data.columns[column]]
    for event, weight in sorted(data.event_weights.items()):
        args += ["--event-weight", f"{event}={_number(weight)}"]
    args += ["--on-invalid", data.on_invalid]
    if data.half_life_days is not None:
        args += ["--half-life-days", _number(data.half_life_days)]
    if data.min_user_items is not None:
        args += ["--min-user-items", _number(data.min_user_items)]
    if data.exclude_items:
        args += ["--exclude-items", ",".join(data.exclude_items)]
    from_events = (data.catalog or {}).get("fromEvents")
    if from_events:
        columns = [
            from_events["title"],
            *([from_events["price"]] if from_events.get("price") else []),
        ]
        args += ["--catalog-from-events", ",".join(columns)]
        args += ["--content-weight", _number((data.catalog or {}).get("contentWeight", 0.3))]
    args += ["--model-store", MODEL_MOUNT, "--algorithm", guide.model.algorithm]
    for name, value in sorted(guide.model.params.items()):
        args += ["--param", f"{name}={_number(value)}"]
    evaluation = training.evaluation
    args += [
        "--split",
        str(evaluation["split"]),
        "--test-fraction",
        _number(evaluation["testFraction"]),
        "--k",
        _number(evaluation["k"]),
        "--seed",
        _number(evaluation["seed"]),
    ]
    tune = training.tune
    if tune.get("enabled"):
        args += ["--tune", "--tune-method", str(tune.get("method", "random"))]
        if tune.get("budgetSeconds"):
            args += ["--tune-budget", _number(tune["budgetSeconds"])]
        if tune.get("trials"):
            args += ["--tune-trials", _number(tune["trials"])]
        if training.gate.metric.startswith("ndcg@"):
            args += ["--metric", training.gate.metric]
    args += ["--keep", _number(guide.keep)]
    if champion:
        # Scored on the same holdout, so the gate compares like for like; never pruned.
        args += ["--champion", champion, "--protect", champion]
    args += ["--termination-log", TERMINATION_LOG]
    return args


def pod_template(guide: Guide, champion: str | None, pod_labels: dict[str, str]) -> JSON:
    tmp, tmp_mount = tmp_volume()
    container: JSON = {
        "name": TRAINER_CONTAINER,
        "image": guide.image,
        "imagePullPolicy": guide.image_pull_policy,
        "command": ["shopping-guide"],
        "args": trainer_args(guide, champion),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True},
            {"name": "models", "mountPath": MODEL_MOUNT},
            tmp_mount,
        ],
    }
    if guide.training.resources:
        container["resources"] = dict(guide.training.resources)
    return {
        "metadata": {"labels": pod_labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": [
                {
                    "name": "data",
                    "persistentVolumeClaim": {"claimName": guide.data.claim, "readOnly": True},
                },
                {"name": "models", "persistentVolumeClaim": {"claimName": guide.model_store_claim}},
                tmp,
            ],
            **placement(guide.training.placement),
            **pull_secrets(guide),
        },
    }


def job_spec(guide: Guide, champion: str | None, pod_labels: dict[str, str]) -> JSON:
    return {
        # One pod per attempt: the operator retries with its own backoff, reading each
        # failure's reason from the pod's termination message.
        "backoffLimit": 0,
        "activeDeadlineSeconds": guide.training.active_deadline_seconds,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": pod_template(guide, champion, pod_labels),
    }


def build_job(guide: Guide, run_key: str, attempt: int, trigger: str, champion: str | None) -> JSON:
    run_labels = {
        **labels(guide, COMPONENT_TRAINING),
        LABEL_RUN: run_key[:16],
        LABEL_TRIGGER: trigger,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            guide,
            job_name(guide, run_key, attempt),
            COMPONENT_TRAINING,
            labels=run_labels,
            annotations={ANNOTATION_SPEC_HASH: guide.model_spec_hash()},
        ),
        "spec": job_spec(guide, champion, run_labels),
    }


def build_cronjob(guide: Guide, champion: str | None) -> JSON | None:
    schedule = guide.training.schedule
    if not schedule:
        return None
    run_labels = {**labels(guide, COMPONENT_TRAINING), LABEL_TRIGGER: TRIGGER_SCHEDULE}
    spec: JSON = {
        "schedule": schedule,
        # A run that overlaps the next tick would train on the same data twice.
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": run_labels},
            "spec": job_spec(guide, champion, run_labels),
        },
    }
    if guide.training.time_zone:
        spec["timeZone"] = guide.training.time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(guide, cronjob_name(guide), COMPONENT_TRAINING),
        "spec": spec,
    }
