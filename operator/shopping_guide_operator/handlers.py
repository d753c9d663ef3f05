"""kopf registration only: settings, the per-guide worker, and the watches that wake it.

The children are watched only to wake their guide's worker early (a Job finished, a serving
pod became ready, someone edited the Deployment); the worker's periodic pass catches
everything else, so a missed event costs latency, never correctness.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf
from kubernetes import client, config

from .constants import (
    COMPONENT_TRAINING,
    GROUP,
    LABEL_COMPONENT,
    LABEL_GUIDE,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PLURAL,
    VERSION,
)
from .kube import ApiCluster
from .reconcile import RESYNC_SECONDS, PassResult
from .status import Event
from .worker import WAKEUPS, run_worker

OPTIONS: dict[str, Any] = {"resync": RESYNC_SECONDS}


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # One connection per concurrent pass; the default pool of 4 would serialise them.
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only the explicit events of reconcile become Kubernetes Events, not kopf's logs.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 32
    # A worker exits within a moment of being stopped; without this kopf re-checks only
    # after the cancellation backoff, holding a deleted guide's finalizer that long.
    settings.background.instant_exit_timeout = 2.0
    memo["cluster"] = ApiCluster(_api_client())


def _post(result: PassResult, event: Event) -> None:
    kind, reason, message = event
    kopf.event(cast(kopf.Body, result.body), type=kind, reason=reason, message=message[:1000])


# A pass in flight gets time to finish (backoff) before kopf cancels the daemon.
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=10.0, cancellation_timeout=5.0)
async def guide_worker(
    namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    await run_worker((namespace or "", name), memo["cluster"], stopped, _post, OPTIONS["resync"])


@kopf.on.event(GROUP, VERSION, PLURAL)
def guide_changed(namespace: str | None, name: str, **_: Any) -> None:
    WAKEUPS.wake((namespace or "", name))


def _wake_owner(namespace: str | None, labels: kopf.Labels) -> None:
    guide = labels.get(LABEL_GUIDE)
    if guide and namespace:
        WAKEUPS.wake((namespace, guide))


_OURS = {LABEL_MANAGED_BY: MANAGED_BY}


@kopf.on.event("batch", "v1", "jobs", labels=_OURS)
def job_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _wake_owner(namespace, labels)


@kopf.on.event("v1", "pods", labels={**_OURS, LABEL_COMPONENT: COMPONENT_TRAINING})
def training_pod_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _wake_owner(namespace, labels)


@kopf.on.event("apps", "v1", "deployments", labels=_OURS)
def deployment_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    _wake_owner(namespace, labels)
