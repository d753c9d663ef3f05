"""One worker loop per ShoppingGuide, woken by watch events and by its own requeue timer.

kopf runs `run_worker` as the guide's daemon, so each guide has exactly one pass in flight
(no two passes race on one status), and kopf stops the daemon when peering pauses this
replica or the guide is deleted. Watch events only set a flag: however many arrive during a
pass, they cause one more pass, never a queue of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from . import metrics
from .kube import Cluster
from .reconcile import ERROR_SECONDS, PassResult, reconcile, report_failure
from .rollout import ProviderFactory, prometheus_provider
from .status import Event

log = logging.getLogger(__name__)

Key = tuple[str, str]
EventPoster = Callable[[PassResult, Event], None]


class Stopped(Protocol):
    """The part of kopf's DaemonStopped the loop needs."""

    def __bool__(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> Awaitable[object]: ...


class Wakeups:
    """A flag per guide; the loop sleeps on it between passes."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}

    def flag(self, key: Key) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()

    def forget(self, key: Key) -> None:
        self._events.pop(key, None)


WAKEUPS = Wakeups()

Pass = Callable[[Cluster, str, str, float, float, ProviderFactory], PassResult | None]

# A pass runs in a thread, and a thread cannot be cancelled: when kopf stops a daemon (peering
# paused this replica, the operator is shutting down) and starts a new one, the old pass may
# still be running. One lock per guide makes the new daemon's pass wait for it, so two passes
# of one guide never overlap and an old pass cannot overwrite a newer status.
_PASS_LOCKS: dict[Key, threading.Lock] = {}


def _exclusive(key: Key, run: Callable[..., PassResult | None], *args: object) -> PassResult | None:
    with _PASS_LOCKS.setdefault(key, threading.Lock()):
        return run(*args)


async def _sleep(flag: asyncio.Event, stopped: Stopped, seconds: float) -> None:
    waiters = {
        asyncio.ensure_future(flag.wait()),
        asyncio.ensure_future(stopped.wait()),
    }
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_worker(
    key: Key,
    cluster: Cluster,
    stopped: Stopped,
    post: EventPoster,
    resync: float,
    wakeups: Wakeups = WAKEUPS,
    providers: ProviderFactory = prometheus_provider,
    clock: Callable[[], float] = time.time,
    one_pass: Pass = reconcile,
) -> None:
    namespace, name = key
    flag = wakeups.flag(key)
    failures = 0
    try:
        while not stopped:
            flag.clear()
            started = time.perf_counter()
            now = clock()
            try:
                # The API client is synchronous: run the pass off the event loop.
                result = await asyncio.to_thread(
                    _exclusive, key, one_pass, cluster, namespace, name, now, resync, providers
                )
            except Exception as exc:
                metrics.RECONCILES.labels("error").inc()
                failures += 1
                delay = min(resync, ERROR_SECONDS * 2 ** min(failures - 1, 5))
                log.exception("reconcile of %s/%s failed; again in %.0fs", namespace, name, delay)
                await _report(cluster, key, exc, now, post)
            else:
                metrics.RECONCILES.labels("ok").inc()
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                failures = 0
                if result is None:
                    delay = resync
                else:
                    metrics.count_events(result.events)
                    for event in result.events:
                        post(result, event)
                    delay = result.requeue_after
            if delay > 0:
                await _sleep(flag, stopped, delay)
    finally:
        wakeups.forget(key)


async def _report(
    cluster: Cluster, key: Key, error: Exception, now: float, post: EventPoster
) -> None:
    """A failed pass in status and Events; a failure to say so is only logged."""
    namespace, name = key
    text = f"{type(error).__name__}: {error}"
    try:
        result = await asyncio.to_thread(
            _exclusive, key, report_failure, cluster, namespace, name, text, now
        )
        if result is not None:
            for event in result.events:
                post(result, event)
    except Exception:
        log.exception("could not report the failed pass of %s/%s", namespace, name)
