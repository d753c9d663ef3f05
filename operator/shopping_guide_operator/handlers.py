"""kopf registration only: settings, the per-guide worker, and the cache the passes read.

kopf watches the guides (it runs one worker daemon per guide and holds their finalizer). The
children are not watched through kopf: its `labels=` filters are applied on the client, after
every Pod, Job and Deployment in scope has crossed the wire. Instead `informers.CachedCluster`
lists and watches each kind with a server-side label selector, answers reconcile's reads from
memory, and wakes a guide's worker whenever its guide or one of its children changes. The
worker's periodic pass catches everything else, so a missed event costs latency, never
correctness.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from kubernetes import client, config

from .constants import GROUP, PLURAL, VERSION
from .informers import CachedCluster
from .kube import ApiCluster
from .reconcile import RESYNC_SECONDS, PassResult
from .status import Event
from .worker import WAKEUPS, Key, run_worker

OPTIONS: dict[str, Any] = {"resync": RESYNC_SECONDS}

# The threads the passes run in (worker.py: asyncio.to_thread, the loop's default executor).
# With reads from the cache a pass blocks only on its writes, and each write holds one pooled
# connection: as many threads as connections lets that many writes be in flight (a burst of
# new guides, each creating half a dozen children) without urllib3 opening and discarding
# connections beyond the pool. The rest of a pass is Python under the GIL, where more threads
# buy nothing. (The default, min(32, CPUs + 4), would tie it to the host instead.)
PASS_THREADS = 32
# The informers' long-lived watches get a client of their own: ten per namespace would
# otherwise hold most of the passes' pool.
WATCH_CONNECTIONS = 64


def _api_client(connections: int = PASS_THREADS) -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # One connection per concurrent pass; the default pool of 4 would serialise them.
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only the explicit events of reconcile become Kubernetes Events, not kopf's logs.
    settings.posting.level = logging.WARNING
    # kopf's own executor, for sync handlers only (there are none left): not the passes'.
    settings.execution.max_workers = 4
    # A worker exits within a moment of being stopped; without this kopf re-checks only
    # after the cancellation backoff, holding a deleted guide's finalizer that long.
    settings.background.instant_exit_timeout = 2.0
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=PASS_THREADS, thread_name_prefix="reconcile")
    )

    def wake(key: Key) -> None:  # called from the informer threads
        loop.call_soon_threadsafe(WAKEUPS.wake, key)

    api = ApiCluster(_api_client())
    memo["cluster"] = CachedCluster(api, _api_client(WATCH_CONNECTIONS), wake)


@kopf.on.cleanup()
async def stop_informers(memo: kopf.Memo, **_: Any) -> None:
    cluster = memo.get("cluster")
    if isinstance(cluster, CachedCluster):
        await asyncio.to_thread(cluster.stop)


def _post(result: PassResult, event: Event) -> None:
    kind, reason, message = event
    kopf.event(cast(kopf.Body, result.body), type=kind, reason=reason, message=message[:1000])


# A pass in flight gets time to finish (backoff) before kopf cancels the daemon.
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=10.0, cancellation_timeout=5.0)
async def guide_worker(
    namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    await run_worker((namespace or "", name), memo["cluster"], stopped, _post, OPTIONS["resync"])
