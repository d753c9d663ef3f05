"""The per-guide worker loop: failures are visible, wakeups coalesce, passes never overlap."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from typing import Any

from shopping_guide_operator.kube import Cluster
from shopping_guide_operator.reconcile import PassResult, reconcile
from shopping_guide_operator.rollout import ProviderFactory
from shopping_guide_operator.status import Event
from shopping_guide_operator.worker import Wakeups, run_worker

from .conftest import BASE
from .fake_cluster import FakeCluster

KEY = ("shop", "storefront")


class Stop:
    """kopf's DaemonStopped, as far as the loop uses it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        await self.event.wait()
        return True


class Flaky(FakeCluster):
    """A cluster whose Job list times out, as an API server that stopped answering would."""

    broken = True

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        if self.broken and kind == "Job":
            raise TimeoutError("read timed out")
        return super().list(kind, namespace, labels)


def _posted() -> tuple[list[Event], Any]:
    events: list[Event] = []

    def post(_: PassResult, event: Event) -> None:
        events.append(event)

    return events, post


def test_a_failed_pass_degrades_the_guide_with_an_event_and_recovers() -> None:
    world = Flaky()
    world.put(copy.deepcopy(BASE))
    events, post = _posted()

    async def scenario() -> None:
        stop = Stop()
        task = asyncio.create_task(run_worker(KEY, world, stop, post, resync=0.05))
        await asyncio.sleep(0.3)
        guide = world.get("ShoppingGuide", *KEY)
        assert guide is not None
        degraded = {c["type"]: c for c in guide["status"]["conditions"]}["Degraded"]
        assert (degraded["status"], degraded["reason"]) == ("True", "ReconcileError")
        assert "TimeoutError: read timed out" in degraded["message"]
        assert guide["status"]["phase"] == "Degraded"
        world.broken = False
        await asyncio.sleep(0.3)
        stop.event.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())
    reasons = [reason for _, reason, _ in events]
    assert reasons.count("ReconcileError") == 1  # on the transition, not on every retry
    guide = world.get("ShoppingGuide", *KEY)
    assert guide is not None
    degraded = {c["type"]: c for c in guide["status"]["conditions"]}["Degraded"]
    assert degraded["reason"] == "Healthy"


def test_wakeups_during_a_pass_cause_one_more_pass_not_a_queue() -> None:
    world = FakeCluster()
    world.put(copy.deepcopy(BASE))
    wakeups = Wakeups()
    passes: list[float] = []
    gate = threading.Event()

    def one_pass(
        cluster: Cluster, ns: str, name: str, now: float, resync: float, p: ProviderFactory
    ) -> PassResult | None:
        passes.append(now)
        if len(passes) == 1:
            gate.wait(2)
        return PassResult({}, requeue_after=60.0)

    async def scenario() -> None:
        stop = Stop()
        task = asyncio.create_task(
            run_worker(KEY, world, stop, lambda r, e: None, 60.0, wakeups, one_pass=one_pass)
        )
        await asyncio.sleep(0.1)
        for _ in range(50):
            wakeups.wake(KEY)
        gate.set()
        await asyncio.sleep(0.3)
        stop.event.set()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())
    assert len(passes) == 2


def test_a_stopped_daemons_pass_and_the_next_daemons_pass_never_overlap() -> None:
    world = FakeCluster()
    world.put(copy.deepcopy(BASE))
    running = 0
    overlaps = 0
    finished: list[str] = []
    lock = threading.Lock()

    def slow_pass(
        cluster: Cluster, ns: str, name: str, now: float, resync: float, p: ProviderFactory
    ) -> PassResult | None:
        nonlocal running, overlaps
        with lock:
            running += 1
            overlaps += running > 1
        time.sleep(0.3)
        with lock:
            running -= 1
        finished.append(threading.current_thread().name)
        return reconcile(cluster, ns, name, now, resync, p)

    async def scenario() -> None:
        first_stop, second_stop = Stop(), Stop()
        first = asyncio.create_task(
            run_worker(KEY, world, first_stop, lambda r, e: None, 60.0, one_pass=slow_pass)
        )
        await asyncio.sleep(0.05)
        # kopf cancels the daemon (peering paused this replica); its thread keeps running.
        first.cancel()
        second = asyncio.create_task(
            run_worker(KEY, world, second_stop, lambda r, e: None, 60.0, one_pass=slow_pass)
        )
        await asyncio.sleep(0.9)
        second_stop.event.set()
        await asyncio.wait_for(second, 2)

    asyncio.run(scenario())
    assert len(finished) == 2
    assert overlaps == 0
