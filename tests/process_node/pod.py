"""One pod on the node: its volumes, its container processes, their probes and its status."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.process_node import procs, spec, volumes
from tests.process_node.ipam import AddressBook
from tests.process_node.kube import Api
from tests.process_node.podvolumes import PodVolumes
from tests.process_node.probes import ProbeState, Runner, make_runner, tick
from tests.process_node.status import (
    ContainerRun,
    PodRecord,
    container_id,
    pod_status,
    restart_delay,
    should_restart,
    terminated_state,
    termination_message,
)

log = logging.getLogger(__name__)

STEP_SECONDS = 0.5
GONE_GRACE_SECONDS = 2.0
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def pod_dir_name(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}_{name}_{uid}"


class PodWorker:
    """Drives one pod in its own thread until the pod is deleted and its processes are gone."""

    def __init__(
        self,
        api: Api,
        pod: Mapping[str, Any],
        pods_root: Path,
        claims_root: Path,
        book: AddressBook,
        api_server: str,
    ) -> None:
        meta = pod["metadata"]
        self.api = api
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        self.dir = pods_root / pod_dir_name(self.namespace, self.name, self.uid)
        self.claims_root = claims_root
        self.book = book
        self.api_server = api_server
        self._pod: dict[str, Any] = copy.deepcopy(dict(pod))
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.gone = False
        self.finished = False
        self.seen_at = time.monotonic()
        state = self.dir / "state.json"
        # A pod that already ended before this node knew it (its record lost) is left as it is.
        phase = (pod.get("status") or {}).get("phase")
        self.inert = not state.exists() and phase in ("Succeeded", "Failed")
        if state.exists():
            self.record = PodRecord.from_json(json.loads(state.read_text()))
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.record = PodRecord(
                self.uid, self.namespace, self.name, book.get(self.uid), time.time()
            )
        self._saved = ""
        self.volumes = PodVolumes(api, self.namespace, self.name, self.dir / "volumes", claims_root)
        self._probes: dict[tuple[str, str], ProbeState] = {}
        self._runners: dict[str, Runner] = {}
        self._posted: dict[str, Any] | None = None
        self._terminating_since: float | None = None
        self._deadline = 0.0

    # --- inputs from the agent ------------------------------------------------------------

    def update(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            if _version(pod) >= _version(self._pod):
                self._pod = copy.deepcopy(dict(pod))
        self.wake.set()

    def vanish(self) -> None:
        self.gone = True
        self.wake.set()

    def run(self) -> None:
        while not self.finished:
            try:
                self.step()
            except Exception:
                log.exception("pod %s/%s: step failed", self.namespace, self.name)
            self.wake.wait(STEP_SECONDS)
            self.wake.clear()

    # --- one reconciliation ---------------------------------------------------------------

    def pod(self) -> dict[str, Any]:
        """The latest pod, with the addresses this node gave it (the API may not have them)."""
        with self._lock:
            pod = copy.deepcopy(self._pod)
        status = pod.setdefault("status", {})
        status.update(
            podIP=self.record.ip,
            podIPs=[{"ip": self.record.ip}],
            hostIP="127.0.0.1",
            hostIPs=[{"ip": "127.0.0.1"}],
        )
        return pod

    def step(self) -> None:
        pod = self.pod()
        if self.gone or pod["metadata"].get("deletionTimestamp"):
            self._terminate(pod)
            return
        if self.inert:
            return
        pod_spec = pod.get("spec") or {}
        specs = _container_specs(pod_spec)
        for name in specs:
            if name not in self.record.containers:
                init = any(c["name"] == name for c in pod_spec.get("initContainers") or [])
                self.record.containers[name] = ContainerRun(name, init=init)
        self.volumes.sync(pod)
        policy = str(pod_spec.get("restartPolicy") or "Always")
        for name in _init_names(pod_spec):
            run = self.record.containers[name]
            self._poll(run, specs[name], policy)
            if not (run.terminated and run.terminated["exitCode"] == 0 and not run.running):
                if not run.running and not run.done:
                    self._maybe_start(pod, run, specs[name])
                break
        else:
            for name in _main_names(pod_spec):
                run = self.record.containers[name]
                self._poll(run, specs[name], policy)
                if not run.running and not run.done:
                    self._maybe_start(pod, run, specs[name])
                elif run.running:
                    self._probe(pod, run, specs[name])
        self._save()
        self._post(pod, specs)

    # --- processes ------------------------------------------------------------------------

    def _files(self, container: str) -> tuple[Path, Path, Path]:
        """log, termination message and exit record of a container."""
        return (
            self.dir / f"{container}.log",
            self.dir / f"{container}.termination-log",
            self.dir / f"{container}.exit",
        )

    def _base_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        server = urlparse(self.api_server)
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        env = {
            "PATH": f"{spec.SCRIPTS_DIR}:{SYSTEM_PATH}",
            "HOSTNAME": str(pod["metadata"]["name"]),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
        }
        profile = spec.image_profile(str(container.get("image", "")))
        if profile is not None:
            env.update(profile.env)
        return env

    def _maybe_start(
        self, pod: dict[str, Any], run: ContainerRun, container: Mapping[str, Any]
    ) -> None:
        if time.time() < run.next_start:
            return
        if self.volumes.paths is None:
            run.waiting_reason = "ContainerCreating"
            run.waiting_message = self.volumes.error
            return
        log_file, term_file, exit_file = self._files(run.name)
        try:
            argv, env, cwd, runner = self._prepare(pod, container)
        except (spec.SpecError, volumes.VolumeNotReadyError) as exc:
            run.waiting_reason = "CreateContainerConfigError"
            run.waiting_message = str(exc)
            run.next_start = time.time() + 1.0
            return
        term_file.write_bytes(b"")
        handle = procs.start(argv, env, cwd, log_file, exit_file)
        if run.terminated is not None:
            run.restart_count += 1
            run.last_terminated = run.terminated
        run.terminated = None
        run.pid, run.start_ticks, run.started_at = handle.pid, handle.start_ticks, time.time()
        run.waiting_reason = run.waiting_message = None
        run.started = "startupProbe" not in container
        run.ready = "readinessProbe" not in container
        run.stop_deadline = None
        self._probes = {k: v for k, v in self._probes.items() if k[0] != run.name}
        self._runners[run.name] = runner
        log.info(
            "pod %s/%s: started %s (pid %d): %s",
            self.namespace,
            self.name,
            run.name,
            handle.pid,
            " ".join(argv),
        )

    def _poll(self, run: ContainerRun, container: Mapping[str, Any], policy: str) -> None:
        """Notices a container's end, records it and plans the restart its policy asks for."""
        if not run.running:
            return
        assert run.pid is not None and run.start_ticks is not None
        handle = procs.Handle(run.pid, run.start_ticks)
        if procs.running(handle):
            if run.stop_deadline is not None and time.time() >= run.stop_deadline:
                procs.signal_group(handle, signal.SIGKILL)
            return
        log_file, term_file, exit_file = self._files(run.name)
        record = procs.exit_record(exit_file)
        code = int(record["exitCode"])
        content = term_file.read_bytes() if term_file.exists() else b""
        message = termination_message(
            content, _tail(log_file), container.get("terminationMessagePolicy"), code
        )
        run.terminated = terminated_state(
            code,
            record.get("signal"),
            message,
            run.started_at,
            record.get("finishedAt"),
            container_id(run.pid),
        )
        log.info("pod %s/%s: %s exited with %d", self.namespace, self.name, run.name, code)
        run.pid = run.start_ticks = None
        run.ready = run.started = False
        run.stop_deadline = None
        if self._terminating_since is None and should_restart(policy, code, run.init):
            delay = restart_delay(run.restart_count)
            run.next_start = time.time() + delay
            run.waiting_reason = "CrashLoopBackOff"
            run.waiting_message = f"back-off {delay:.0f}s restarting container {run.name}"
        else:
            run.done = True
            run.waiting_reason = run.waiting_message = None

    def _stop(self, run: ContainerRun, grace: float) -> None:
        """SIGTERM now, SIGKILL at the deadline (checked by _poll)."""
        if run.pid is None or run.start_ticks is None or run.stop_deadline is not None:
            return
        procs.signal_group(procs.Handle(run.pid, run.start_ticks), signal.SIGTERM)
        run.stop_deadline = time.time() + grace

    def _probe(self, pod: dict[str, Any], run: ContainerRun, container: Mapping[str, Any]) -> None:
        if run.stop_deadline is not None or run.started_at is None:
            return
        runner = self._runners.get(run.name)
        if runner is None:  # adopted after a restart of the agent: rebuild its environment
            runner = self._prepare(pod, container)[3]
            self._runners[run.name] = runner
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if not probe or (kind != "startupProbe" and not run.started):
                continue
            if kind == "startupProbe" and run.started:
                continue
            state = self._probes.get((run.name, kind))
            if state is None:
                initial = {"startupProbe": False, "livenessProbe": True}.get(kind, run.ready)
                state = ProbeState(probe, run.started_at, initial)
                self._probes[(run.name, kind)] = state
            tick(state, runner, time.time())
            if kind == "readinessProbe":
                run.ready = state.result
                continue
            if kind == "startupProbe":
                if state.result:
                    run.started = True
                    continue
                failed = state.failures >= int(probe.get("failureThreshold") or 3)
            else:
                failed = not state.result
            if failed:
                log.info(
                    "pod %s/%s: %s of %s failed: restarting",
                    self.namespace,
                    self.name,
                    kind,
                    run.name,
                )
                grace = probe.get("terminationGracePeriodSeconds")
                self._stop(run, float(grace if grace is not None else _grace(pod)))
                return

    def _prepare(
        self, pod: dict[str, Any], container: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], Path, Runner]:
        """argv, environment, working directory and probe runner of a container."""
        _, term_file, _ = self._files(str(container["name"]))
        mapper = spec.PathMapper(spec.mount_mapping(container, self.volumes.paths or {}, term_file))
        env = spec.build_env(
            pod,
            container,
            self._base_env(pod, container),
            self.volumes.lookup_key,
            self.volumes.lookup_all,
            mapper,
        )
        argv = spec.build_command(container, env, mapper)
        cwd = spec.working_dir(container, mapper, self.dir)
        runner = make_runner(
            self.record.ip,
            spec.container_ports(container),
            lambda command: [mapper.rewrite(spec.expand(a, env)) for a in command],
            env,
            cwd,
        )
        return argv, env, cwd, runner

    # --- deletion -------------------------------------------------------------------------

    def _terminate(self, pod: dict[str, Any]) -> None:
        now = time.time()
        if self._terminating_since is None:
            self._terminating_since = now
            grace = GONE_GRACE_SECONDS if self.gone else _grace(pod)
            self._deadline = now + grace
            for run in self.record.containers.values():
                self._stop(run, grace)
        specs = _container_specs(pod.get("spec") or {})
        for run in self.record.containers.values():
            self._poll(run, specs.get(run.name, {}), "Never")
        self._save()
        if any(run.running for run in self.record.containers.values()):
            return
        if not self.gone:
            self.api.delete_pod_now(self.namespace, self.name, self.uid)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        self.book.release(self.uid)
        self.record.deleted = True
        self._save()
        self.finished = True
        log.info("pod %s/%s: deleted", self.namespace, self.name)

    # --- state and status -----------------------------------------------------------------

    def _save(self) -> None:
        text = json.dumps(self.record.to_json(), indent=1, sort_keys=True)
        if text == self._saved:
            return
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / "state.json")
        self._saved = text

    def _post(self, pod: dict[str, Any], specs: Mapping[str, Mapping[str, Any]]) -> None:
        if self._posted is not None:
            # Our own last conditions carry their transition times until the watch catches up.
            pod["status"]["conditions"] = self._posted["conditions"]
        status = pod_status(pod, self.record, specs, self.volumes.paths is not None)
        if status == self._posted:
            return
        self.api.patch_pod_status(self.namespace, self.name, status)
        self._posted = status


def _version(pod: Mapping[str, Any]) -> int:
    try:
        return int(pod["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _grace(pod: Mapping[str, Any]) -> float:
    meta_grace = pod["metadata"].get("deletionGracePeriodSeconds")
    if meta_grace is not None:
        return float(meta_grace)
    return float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))


def _init_names(pod_spec: Mapping[str, Any]) -> list[str]:
    return [str(c["name"]) for c in pod_spec.get("initContainers") or []]


def _main_names(pod_spec: Mapping[str, Any]) -> list[str]:
    return [str(c["name"]) for c in pod_spec.get("containers") or []]


def _container_specs(pod_spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    containers = list(pod_spec.get("initContainers") or []) + list(pod_spec.get("containers") or [])
    return {str(c["name"]): c for c in containers}


def _tail(path: Path, limit: int = 65536) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - limit))
            return handle.read().decode("utf-8", "replace").splitlines(keepends=True)
    except OSError:
        return []
