"""Worker processes per pod: a supervisor and N whole servers on one port.

Why processes: a server's event loop and its scoring threads share one GIL, and the Python
around each batch (masks, id lookups, answer objects) runs under it beside the loop, so one
process uses less than a core however many threads score. N processes use N cores.

Each worker is a whole server (app.py, lifecycle.py): it loads the routed versions itself (their
arrays are mapped, so the workers share the pages: artifacts.py), answers /healthz and /readyz
for itself, and listens on the serving port with SO_REUSEPORT, so the kernel spreads new
connections over the workers. The supervisor, the container's main process, serves no request:
it serves the pod's /metrics on the metrics port (every worker's values added up: metrics.py),
restarts a worker that dies, and gives up, stopping the others and exiting non-zero, when
workers die more than `max_restarts` times in `restart_window` seconds: a crash loop is for
kubelet to back off from. SIGTERM and SIGINT it forwards to every worker, each of which drains
as lifecycle.py says; a second signal is forwarded too and ends the drains at once.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.multiprocess import mark_process_dead

from .metrics import MULTIPROCESS_ENV, pod_registry

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
# A fresh interpreter per worker: forking a process that has started threads is unsafe.
_SPAWN = multiprocessing.get_context("spawn")
_CGROUP = Path("/sys/fs/cgroup")
# The container's CPU request in whole CPUs: the operator sets it (builders/deployment.py).
CPUS_ENV = "SHOPPING_GUIDE_CPUS"


def cgroup_cpus(root: Path = _CGROUP) -> float | None:
    """The CPUs the container's CPU limit grants (cgroup v2 cpu.max, else v1), None if none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def default_workers() -> int:
    """One worker per CPU the container may use: its CPU limit (rounded up: a worker throttled
    part of the time still serves), else the CPUs it requested (CPUS_ENV, rounded up by the
    downward API), else the CPUs this process may run on; at least one, at most those.

    Without a limit a pod may run on every CPU of its node, but its memory limit was sized for
    what it requested: a worker per node CPU, each holding its own index and interpreter,
    would not fit."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpus()
    requested = os.environ.get(CPUS_ENV, "")
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    elif requested.isdigit() and int(requested) > 0:
        cpus = min(cpus, int(requested))
    return max(1, cpus)


class PodReadiness:
    """One flag per worker in memory the pod's processes share: whether it has a stable
    version loaded. A worker says it is ready only when all are (app.py `readyz`): otherwise
    the kernel would hand part of the first connections to a worker that is still loading.
    So a replaced worker takes the pod out of the Service until it has loaded too."""

    def __init__(self, flags: Any, index: int) -> None:
        self.flags, self.index = flags, index

    def set(self, ready: bool) -> None:
        self.flags[self.index] = ready

    def loading(self) -> int:
        return sum(1 for flag in self.flags if not flag)


def _worker(serve: Callable[[PodReadiness], None], parent: int, ready: PodReadiness) -> None:
    threading.Thread(target=_stop_with, args=(parent,), daemon=True).start()
    serve(ready)


def _stop_with(parent: int) -> None:
    # A supervisor killed outright forwards nothing: a worker left behind would keep the port.
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Runs `workers` processes of `serve(readiness)` (picklable: it crosses into each new
    interpreter). With `metrics_address` (host, port), /metrics answers there with the pod's
    totals, each series labelled with `guide`."""

    def __init__(
        self,
        serve: Callable[[PodReadiness], None],
        workers: int,
        *,
        metrics_address: tuple[str, int] | None = None,
        guide: str = "",
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW_SECONDS,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.serve, self.workers = serve, workers
        self.metrics_address, self.guide = metrics_address, guide
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self._processes: dict[int, BaseProcess] = {}  # by worker index
        self._ready = _SPAWN.RawArray("b", workers)
        self._deaths: list[float] = []
        self._stopping = False
        self._failed = False
        self._directory = ""

    def run(self) -> int:
        """Until the workers have stopped: 0 after a signal, 1 when they kept dying."""
        self._directory = tempfile.mkdtemp(prefix="shopping-guide-metrics-")
        before = os.environ.get(MULTIPROCESS_ENV)
        # Read by prometheus_client as each worker imports it.
        os.environ[MULTIPROCESS_ENV] = self._directory
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        metrics: WSGIServer | None = None
        try:
            if self.metrics_address is not None:
                host, port = self.metrics_address
                registry = pod_registry(self._directory, self.guide)
                metrics, _ = start_http_server(port, host, registry)
            for index in range(self.workers):
                self._start(index)
            log.warning("supervising %d worker processes", self.workers)
            while self._processes:
                self._reap(wait([p.sentinel for p in self._processes.values()]))
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self._stop()
            for process in self._processes.values():
                process.join()
            if metrics is not None:
                metrics.shutdown()
                metrics.server_close()
            if before is None:
                os.environ.pop(MULTIPROCESS_ENV, None)
            else:
                os.environ[MULTIPROCESS_ENV] = before
            shutil.rmtree(self._directory, ignore_errors=True)
        return 1 if self._failed else 0

    def _start(self, index: int) -> None:
        self._ready[index] = False
        process = _SPAWN.Process(
            target=_worker,
            args=(self.serve, os.getpid(), PodReadiness(self._ready, index)),
            name=f"worker-{index}",
        )
        process.start()
        self._processes[index] = process
        if self._stopping and process.pid is not None:  # a signal came while it started
            os.kill(process.pid, signal.SIGTERM)

    def _reap(self, ended: Sequence[object]) -> None:
        for index, process in list(self._processes.items()):
            if process.sentinel not in ended:
                continue
            process.join()
            del self._processes[index]
            assert process.pid is not None
            # Its gauges leave the pod's; its counters stay, so no total goes back.
            mark_process_dead(process.pid, self._directory)  # type: ignore[no-untyped-call]
            if self._stopping:
                if process.exitcode:
                    log.error("worker %d exited with %s while stopping", index, process.exitcode)
                    self._failed = True
                continue
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < self.restart_window]
            self._deaths.append(now)
            log.error("worker %d (pid %d) exited with %s", index, process.pid, process.exitcode)
            if len(self._deaths) > self.max_restarts:
                log.error(
                    "workers died %d times in %.0f s: stopping", len(self._deaths),
                    self.restart_window,
                )  # fmt: skip
                self._failed = True
                self._stop()
                continue
            self._start(index)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.warning("signal %d: stopping the workers", signum)
        self._stop(force=True)

    def _stop(self, force: bool = False) -> None:
        """SIGTERM to every worker: once, or again with `force` (a second signal)."""
        if self._stopping and not force:
            return
        self._stopping = True
        for process in self._processes.values():
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
