"""Metadata, names and security settings shared by every owned object."""

from __future__ import annotations

from typing import Any

from ..constants import (
    APP_NAME,
    LABEL_COMPONENT,
    LABEL_GUIDE,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    RUN_AS_USER,
    TERMINATION_LOG,
    TRAINER_CONTAINER,
)
from ..spec import JSON, Guide, Placement


def routing_configmap_name(guide: Guide) -> str:
    return f"{guide.name}-routing"


def cronjob_name(guide: Guide) -> str:
    return f"{guide.name}-train"


def job_name(guide: Guide, run_key: str, attempt: int) -> str:
    # The CRD caps guide names at 40 characters, so this stays within 63.
    return f"{guide.name}-train-{run_key[:8]}-{attempt}"


def guide_store_args(guide: Guide) -> list[str]:
    """The recommender's `--guide`: the guide's own directory of a model store that other
    guides may share (`<store>/guides/<namespace>/<name>`), for the trainer and the server."""
    return ["--guide", f"{guide.namespace}/{guide.name}"]


def labels(guide: Guide, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: guide.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_GUIDE: guide.name,
    }


def selector(guide: Guide, component: str) -> dict[str, str]:
    """The immutable subset of `labels` that Deployments, Services and PDBs select on."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: guide.name, LABEL_COMPONENT: component}


def metadata(guide: Guide, name: str, component: str, **extra: Any) -> JSON:
    return {
        "name": name,
        "namespace": guide.namespace,
        "labels": labels(guide, component),
        "ownerReferences": [guide.owner_reference],
        **extra,
    }


def pod_security_context() -> JSON:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        # Lets the non-root user write to a freshly provisioned model store volume.
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> JSON:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def placement(spec: Placement) -> JSON:
    out: JSON = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    return out


def pull_secrets(guide: Guide) -> JSON:
    if not guide.image_pull_secrets:
        return {}
    return {"imagePullSecrets": [{"name": n} for n in guide.image_pull_secrets]}


def tmp_volume() -> tuple[JSON, JSON]:
    """A writable /tmp: the root filesystem is read-only."""
    return (
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "tmp", "mountPath": "/tmp"},
    )


def batch_pod_template(
    guide: Guide,
    pod_labels: dict[str, str],
    args: list[str],
    mounts: list[JSON],
    volumes: list[JSON],
    env: list[JSON] | None = None,
) -> JSON:
    """The pod of a run-to-completion trainer command (training, erasure): one attempt, no
    API token, read-only root with a writable /tmp, the training resources and placement. The
    result is the termination message, read by the operator from the finished pod."""
    tmp, tmp_mount = tmp_volume()
    container: JSON = {
        "name": TRAINER_CONTAINER,
        "image": guide.image,
        "imagePullPolicy": guide.image_pull_policy,
        "command": ["shopping-guide"],
        "args": args,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts, tmp_mount],
    }
    if env:
        container["env"] = env
    if guide.training.resources:
        container["resources"] = dict(guide.training.resources)
    return {
        "metadata": {"labels": pod_labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": [*volumes, tmp],
            **placement(guide.training.placement),
            **pull_secrets(guide),
        },
    }
