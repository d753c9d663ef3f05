"""The training Job (one per run) and the CronJob of scheduled runs: the same pod template.

The trainer writes its JSON result to the termination log, so the operator reads the result
from the finished pod's status without any shared storage or log scraping.

The trainer writes into and prunes only its guide's directory of the model store (`--guide`),
and never prunes what the guide may still route: the versions `protected_versions` lists
(passed as `--protect`), and whatever the routing ConfigMap, mounted in the pod and read when
the run prunes, routes then. The CronJob is rebuilt and re-applied on every pass, so its
`--protect` list follows the status; the routing file covers what changed while a run ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shopping_guide_contracts.routing import CONFIGMAP_KEY

from ..constants import (
    ANNOTATION_SPEC_HASH,
    COMPONENT_TRAINING,
    LABEL_RUN,
    LABEL_TRIGGER,
    ROUTING_MOUNT,
    TERMINATION_LOG,
)
from ..spec import JSON, Guide
from . import store
from .common import (
    batch_pod_template,
    cronjob_name,
    guide_store_args,
    job_name,
    labels,
    metadata,
    routing_configmap_name,
)

TRIGGER_SCHEDULE = "schedule"
# Finished Jobs stay a day: long enough for an operator that was down to read their result.
FINISHED_JOB_TTL_SECONDS = 86400


# History outcomes after which a version was stable: what `rollback --to` may restore.
STABLE_OUTCOMES = ("Promoted", "Restored")


def _number(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def protected_versions(guide: Guide, status: Mapping[str, Any] | None) -> list[str]:
    """What a run must not prune: the pin, the stable and canary versions, the last canary
    (`retry` runs it again), what the routing serves, and every version of the history that
    was stable (a `rollback --to` target)."""
    status = status or {}
    routing = status.get("routing") or {}
    found: list[Any] = [
        guide.pinned_version,
        (status.get("stable") or {}).get("version"),
        (status.get("canary") or {}).get("version"),
        (status.get("lastCanary") or {}).get("version"),
        routing.get("stable"),
        routing.get("canary"),
    ]
    found += [
        entry.get("version")
        for entry in status.get("history") or []
        if isinstance(entry, Mapping) and entry.get("outcome") in STABLE_OUTCOMES
    ]
    return sorted({v for v in found if isinstance(v, str) and v})


def trending_args(guide: Guide) -> list[str]:
    """spec.serving.trending as the trainer's flags (its defaults where a field is absent)."""
    args: list[str] = []
    for key, flag in (("windowHours", "window-hours"), ("baselineHours", "baseline-hours"),
                      ("minCount", "min-count")):  # fmt: skip
        if guide.serving.trending and key in guide.serving.trending:
            args += [f"--trending-{flag}", _number(guide.serving.trending[key])]
    return args


def trainer_args(guide: Guide, champion: str | None, protect: Iterable[str] = ()) -> list[str]:
    data, training = guide.data, guide.training
    args = ["train", *store.events(guide).args]
    if data.format:
        args += ["--format", data.format]
    for column in ("user", "item", "event", "weight", "time", "basket"):
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
    args += trending_args(guide)
    args += [*store.model_store(guide, writes=True).args, "--algorithm", guide.model.algorithm]
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
    # auto chooses the family by tuning: it always tunes, within training.tune's limits.
    if tune.get("enabled") or guide.model.algorithm == "auto":
        args += ["--tune", "--tune-method", str(tune.get("method", "random"))]
        if tune.get("budgetSeconds"):
            args += ["--tune-budget", _number(tune["budgetSeconds"])]
        if tune.get("trials"):
            args += ["--tune-trials", _number(tune["trials"])]
        if training.gate.metric.startswith("ndcg@"):
            args += ["--metric", training.gate.metric]
    args += [*guide_store_args(guide), "--keep", _number(guide.model_store.keep)]
    if champion:
        # Scored on the same holdout, so the gate compares like for like; never pruned.
        args += ["--champion", champion]
    kept = {*protect, *(v for v in (champion, guide.pinned_version) if v)}
    for version in sorted(kept):
        args += ["--protect", version]
    args += ["--routing", f"{ROUTING_MOUNT}/{CONFIGMAP_KEY}"]
    args += ["--termination-log", TERMINATION_LOG]
    return args


def pod_template(
    guide: Guide, champion: str | None, pod_labels: dict[str, str], protect: Iterable[str] = ()
) -> JSON:
    events, models = store.events(guide), store.model_store(guide, writes=True)
    mounts: list[JSON] = [
        *events.mounts,
        *models.mounts,
        # Read when the run prunes: what serves then is never pruned.
        {"name": "routing", "mountPath": ROUTING_MOUNT, "readOnly": True},
    ]
    volumes: list[JSON] = [
        *events.volumes,
        *models.volumes,
        # Optional: the first run may start before the operator wrote any routing.
        {"name": "routing", "configMap": {"name": routing_configmap_name(guide), "optional": True}},
    ]
    return batch_pod_template(
        guide,
        pod_labels,
        trainer_args(guide, champion, protect),
        mounts,
        volumes,
        env=[*events.env, *models.env],
    )


def job_spec(
    guide: Guide, champion: str | None, pod_labels: dict[str, str], protect: Iterable[str] = ()
) -> JSON:
    return {
        # One pod per attempt: the operator retries with its own backoff, reading each
        # failure's reason from the pod's termination message.
        "backoffLimit": 0,
        "activeDeadlineSeconds": guide.training.active_deadline_seconds,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": pod_template(guide, champion, pod_labels, protect),
    }


def build_job(
    guide: Guide,
    run_key: str,
    attempt: int,
    trigger: str,
    champion: str | None,
    status: Mapping[str, Any] | None = None,
) -> JSON:
    """`status`, the guide's status now, names the versions the run must not prune."""
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
        "spec": job_spec(guide, champion, run_labels, protected_versions(guide, status)),
    }


def build_cronjob(
    guide: Guide, champion: str | None, status: Mapping[str, Any] | None = None
) -> JSON | None:
    """Rebuilt on every pass from the status then, so that scheduled runs protect what the
    status names now; re-applied whenever that changes."""
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
            "spec": job_spec(guide, champion, run_labels, protected_versions(guide, status)),
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
