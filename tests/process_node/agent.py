"""The agent: keeps the Node alive and one PodWorker per pod bound to it."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.process_node import procs
from tests.process_node.ipam import AddressBook, pool_for
from tests.process_node.kube import Api
from tests.process_node.node import NodeKeeper
from tests.process_node.pod import PodWorker
from tests.process_node.status import PodRecord

log = logging.getLogger(__name__)

LIST_SECONDS = 1.0
WATCH_SECONDS = 60


class Agent:
    def __init__(self, api_client: client.ApiClient, node: str, state_dir: Path) -> None:
        self.api = Api(api_client)
        self.node = node
        self.state_dir = state_dir
        self.pods_root = state_dir / "pods"
        self.claims_root = state_dir / "claims"
        self.pods_root.mkdir(parents=True, exist_ok=True)
        self.claims_root.mkdir(parents=True, exist_ok=True)
        self.book = AddressBook(state_dir / "pod-ips.json", pool_for(node))
        self.keeper = NodeKeeper(api_client, node)
        self.api_server = str(api_client.configuration.host)
        self.workers: dict[str, PodWorker] = {}
        self.done: set[str] = set()
        self._lock = threading.Lock()
        self._resource_version = ""

    def dispatch(self, pod: dict[str, Any]) -> None:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            if uid in self.done:
                return
            worker = self.workers.get(uid)
            if worker is None:
                worker = PodWorker(
                    self.api, pod, self.pods_root, self.claims_root, self.book, self.api_server
                )
                self.workers[uid] = worker
                threading.Thread(target=worker.run, name=f"pod-{uid[:8]}", daemon=True).start()
                return
        worker.update(pod)

    def vanish(self, uid: str) -> None:
        with self._lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.vanish()

    def _reap(self) -> None:
        with self._lock:
            for uid, worker in list(self.workers.items()):
                if worker.finished:
                    del self.workers[uid]
                    self.done.add(uid)

    def resync(self) -> None:
        """A full list: new pods start, pods that disappeared unseen are stopped."""
        listed_at = time.monotonic()
        pods, version = self.api.list_pods(self.node)
        self._resource_version = version
        for pod in pods:
            self.dispatch(pod)
        present = {str(p["metadata"]["uid"]) for p in pods}
        with self._lock:
            stale = [
                w for uid, w in self.workers.items() if uid not in present and w.seen_at < listed_at
            ]
        for worker in stale:
            worker.vanish()
        self._reap()

    def adopt_orphans(self, present: set[str]) -> None:
        """Pods recorded in the state directory but deleted while the agent was away."""
        for state in self.pods_root.glob("*/state.json"):
            record = PodRecord.from_json(json.loads(state.read_text()))
            if record.deleted or record.uid in present or record.uid in self.workers:
                continue
            log.info("pod %s/%s vanished while the agent was away", record.namespace, record.name)
            stub = {
                "metadata": {"uid": record.uid, "name": record.name, "namespace": record.namespace},
                "spec": {},
            }
            self.dispatch(stub)
            self.vanish(record.uid)

    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                for kind, pod in self.api.watch_pods(
                    self.node, self._resource_version, WATCH_SECONDS
                ):
                    if stop.is_set():
                        return
                    self._resource_version = str(pod["metadata"].get("resourceVersion", ""))
                    if kind == "DELETED":
                        self.vanish(str(pod["metadata"]["uid"]))
                    elif kind in ("ADDED", "MODIFIED"):
                        self.dispatch(pod)
            except Exception as exc:
                log.debug("pod watch ended (%s); resuming from a fresh list", exc)
                self._resource_version = ""
                stop.wait(1.0)

    def run(self, stop: threading.Event) -> None:
        self.keeper.register()
        threading.Thread(target=self.keeper.run, args=(stop,), daemon=True).start()
        pods, self._resource_version = self.api.list_pods(self.node)
        for pod in pods:
            self.dispatch(pod)
        self.adopt_orphans({str(p["metadata"]["uid"]) for p in pods})
        threading.Thread(target=self._watch, args=(stop,), daemon=True).start()
        log.info("node %s: agent running, state in %s", self.node, self.state_dir)
        while not stop.wait(LIST_SECONDS):
            try:
                self.resync()
            except Exception as exc:
                log.warning("pod resync failed: %s", exc)


def stop_all(state_dir: Path, grace: float = 10.0) -> int:
    """Ends every process recorded in the state directory that is still ours (same PID and
    start time): SIGTERM, then SIGKILL after `grace`. Returns how many were signalled."""
    handles = []
    for state in (state_dir / "pods").glob("*/state.json"):
        record = PodRecord.from_json(json.loads(state.read_text()))
        for run in record.containers.values():
            if run.pid is not None and run.start_ticks is not None:
                handle = procs.Handle(run.pid, run.start_ticks)
                if procs.signal_group(handle, signal.SIGTERM):
                    handles.append(handle)
    deadline = time.monotonic() + grace
    while any(procs.alive(h) for h in handles) and time.monotonic() < deadline:
        time.sleep(0.1)
    for handle in handles:
        procs.signal_group(handle, signal.SIGKILL)
    return len(handles)
