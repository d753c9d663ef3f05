"""What a container did (persisted per pod) and the pod status built from it (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80


def rfc3339(epoch: float | None = None) -> str:
    moment = (
        datetime.datetime.now(datetime.UTC)
        if epoch is None
        else datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """One container of a pod across its restarts. Everything here survives an agent restart."""

    name: str
    init: bool = False
    restart_count: int = 0
    pid: int | None = None
    start_ticks: int | None = None
    started_at: float | None = None
    # The latest finished run (the current state while the container is not running).
    terminated: dict[str, Any] | None = None
    # The run before the current one (lastState while running again).
    last_terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    done: bool = False
    stop_deadline: float | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    ready: bool = False
    started: bool = False

    @property
    def running(self) -> bool:
        return self.pid is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerRun:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class PodRecord:
    uid: str
    namespace: str
    name: str
    ip: str
    started_at: float
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["containers"] = {k: v.to_json() for k, v in self.containers.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodRecord:
        containers = {
            k: ContainerRun.from_json(v) for k, v in (data.get("containers") or {}).items()
        }
        return cls(
            uid=data["uid"],
            namespace=data["namespace"],
            name=data["name"],
            ip=data["ip"],
            started_at=float(data["started_at"]),
            containers=containers,
            deleted=bool(data.get("deleted")),
        )


def termination_message(
    file_content: bytes, log_tail: Sequence[str], policy: str | None, exit_code: int
) -> str:
    """The file's content (at most 4 KiB); with FallbackToLogsOnError, the end of the log when
    the file is empty and the container failed."""
    message = file_content[-MAX_MESSAGE_BYTES:].decode("utf-8", "replace")
    if not message and policy == "FallbackToLogsOnError" and exit_code != 0:
        tail = "".join(log_tail[-FALLBACK_LOG_LINES:])
        message = tail.encode()[-MAX_MESSAGE_BYTES:].decode("utf-8", "replace")
    return message


def terminated_state(
    exit_code: int,
    signal: int | None,
    message: str,
    started_at: float | None,
    finished_at: str | None,
    container_id: str,
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": rfc3339(started_at) if started_at is not None else None,
        "finishedAt": finished_at or rfc3339(),
        "containerID": container_id,
    }
    if signal:
        state["signal"] = signal
    if message:
        state["message"] = message
    return state


def container_id(pid: int | None) -> str:
    return f"process://{pid}" if pid is not None else ""


def container_status(run: ContainerRun, spec: Mapping[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": run.name,
        "image": spec.get("image", ""),
        "imageID": f"process://{spec.get('image', '')}",
        "restartCount": run.restart_count,
        "ready": run.running and run.ready,
        "started": run.running and run.started,
    }
    if run.running:
        status["state"] = {"running": {"startedAt": rfc3339(run.started_at)}}
        status["containerID"] = container_id(run.pid)
        if run.last_terminated:
            status["lastState"] = {"terminated": run.last_terminated}
    elif run.terminated and (run.done or run.waiting_reason is None):
        status["state"] = {"terminated": run.terminated}
        status["containerID"] = run.terminated.get("containerID", "")
        if run.last_terminated:
            status["lastState"] = {"terminated": run.last_terminated}
    else:
        waiting: dict[str, Any] = {"reason": run.waiting_reason or "ContainerCreating"}
        if run.waiting_message:
            waiting["message"] = run.waiting_message
        status["state"] = {"waiting": waiting}
        if run.terminated:
            status["lastState"] = {"terminated": run.terminated}
    return status


def pod_phase(
    init_runs: Sequence[ContainerRun], runs: Sequence[ContainerRun], restart_policy: str
) -> str:
    """kubelet's phase rules, for containers whose restarts follow `restart_policy`."""
    for run in init_runs:
        finished_ok = run.terminated is not None and run.terminated["exitCode"] == 0
        if not finished_ok:
            return "Failed" if run.done else "Pending"
    if not runs:
        return "Pending"
    if any(run.running for run in runs):
        return "Running"
    if all(run.done for run in runs):
        codes = [run.terminated["exitCode"] if run.terminated else 1 for run in runs]
        return "Succeeded" if all(code == 0 for code in codes) else "Failed"
    ever_started = any(run.terminated is not None for run in runs)
    return "Running" if ever_started else "Pending"


def _condition(
    kind: str, ok: bool, previous: Mapping[str, Mapping[str, Any]], reason: str | None = None
) -> dict[str, Any]:
    value = "True" if ok else "False"
    before = previous.get(kind)
    since = (
        before.get("lastTransitionTime")
        if before and before.get("status") == value and before.get("lastTransitionTime")
        else rfc3339()
    )
    condition: dict[str, Any] = {
        "type": kind,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason and not ok:
        condition["reason"] = reason
    return condition


def pod_status(
    pod: Mapping[str, Any],
    record: PodRecord,
    specs: Mapping[str, Mapping[str, Any]],
    volumes_ready: bool,
) -> dict[str, Any]:
    """The status subresource content for `pod` as this node runs it."""
    spec = pod.get("spec") or {}
    old = pod.get("status") or {}
    previous = {c["type"]: c for c in old.get("conditions") or []}
    init_names = [c["name"] for c in spec.get("initContainers") or []]
    names = [c["name"] for c in spec.get("containers") or []]
    init_runs = [record.containers[n] for n in init_names if n in record.containers]
    runs = [record.containers[n] for n in names if n in record.containers]
    phase = pod_phase(init_runs, runs, str(spec.get("restartPolicy") or "Always"))
    initialized = all(r.terminated and r.terminated["exitCode"] == 0 for r in init_runs)
    containers_ready = bool(runs) and all(r.running and r.ready for r in runs)
    terminal = phase in ("Succeeded", "Failed")
    gates_ok = all(
        (previous.get(gate["conditionType"]) or {}).get("status") == "True"
        for gate in spec.get("readinessGates") or []
    )
    not_ready = "PodCompleted" if terminal else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", volumes_ready and not terminal, previous),
        _condition(
            "Initialized",
            len(init_runs) == len(init_names) and initialized,
            previous,
            "ContainersNotInitialized",
        ),
        _condition("Ready", containers_ready and gates_ok, previous, not_ready),
        _condition("ContainersReady", containers_ready, previous, not_ready),
        _condition("PodScheduled", True, previous),
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": record.ip,
        "podIPs": [{"ip": record.ip}],
        "startTime": rfc3339(record.started_at),
        "containerStatuses": [
            container_status(record.containers[n], specs[n])
            for n in names
            if n in record.containers
        ],
    }
    if init_names:
        status["initContainerStatuses"] = [
            container_status(record.containers[n], specs[n])
            for n in init_names
            if n in record.containers
        ]
    return status


def restart_delay(restart_count: int, base: float = 1.0, cap: float = 30.0) -> float:
    """Back-off before the next start: base * 2^restarts, capped (kubelet: 10 s to 5 min)."""
    return float(min(cap, base * 2 ** min(restart_count, 16)))


def should_restart(policy: str, exit_code: int, init: bool) -> bool:
    if init:
        return policy != "Never" and exit_code != 0
    if policy == "Always":
        return True
    return policy == "OnFailure" and exit_code != 0
