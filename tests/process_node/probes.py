"""Readiness, liveness and startup probes (httpGet, tcpSocket, exec), with kubelet's counting."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.process_node.spec import SpecError


def resolve_port(port: object, named: Mapping[str, int]) -> int:
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    if text in named:
        return named[text]
    raise SpecError(f"probe port {text!r} names no container port")


def http_get(
    action: Mapping[str, Any], host: str, named: Mapping[str, int], timeout: float
) -> bool:
    """2xx and 3xx are success, as in kubelet; redirects are not followed."""
    port = resolve_port(action.get("port"), named)
    target = str(action.get("host") or host)
    path = str(action.get("path") or "/")
    factory = (
        http.client.HTTPSConnection
        if str(action.get("scheme", "HTTP")).upper() == "HTTPS"
        else http.client.HTTPConnection
    )
    headers = {str(h["name"]): str(h["value"]) for h in action.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/process-node")
    connection = factory(target, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return 200 <= status < 400


def tcp_socket(
    action: Mapping[str, Any], host: str, named: Mapping[str, int], timeout: float
) -> bool:
    port = resolve_port(action.get("port"), named)
    try:
        with socket.create_connection((str(action.get("host") or host), port), timeout=timeout):
            return True
    except OSError:
        return False


def exec_probe(argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float) -> bool:
    try:
        result = subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@dataclass
class ProbeState:
    """One probe of one container run: the result, and when it is next due."""

    spec: Mapping[str, Any]
    started_at: float
    result: bool
    successes: int = 0
    failures: int = 0
    last_run: float | None = None
    history: list[bool] = field(default_factory=list)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    def due(self, now: float) -> bool:
        if now < self.started_at + float(self.spec.get("initialDelaySeconds") or 0):
            return False
        return self.last_run is None or now >= self.last_run + self.period

    def record(self, ok: bool, now: float) -> bool:
        """Counts one outcome; returns True when the probe's result changed."""
        self.last_run = now
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        before = self.result
        if ok and self.successes >= int(self.spec.get("successThreshold") or 1):
            self.result = True
        if not ok and self.failures >= int(self.spec.get("failureThreshold") or 3):
            self.result = False
        return before != self.result


Runner = Callable[[Mapping[str, Any], float], bool]
"""(probe spec, timeout) -> success"""


def make_runner(
    host: str,
    named: Mapping[str, int],
    exec_argv: Callable[[list[str]], list[str]],
    env: Mapping[str, str],
    cwd: Path,
) -> Runner:
    def run(spec: Mapping[str, Any], timeout: float) -> bool:
        if "httpGet" in spec:
            return http_get(spec["httpGet"], host, named, timeout)
        if "tcpSocket" in spec:
            return tcp_socket(spec["tcpSocket"], host, named, timeout)
        if "exec" in spec:
            return exec_probe(exec_argv(list(spec["exec"].get("command") or [])), env, cwd, timeout)
        if "grpc" in spec:
            # No gRPC client here; a listening port is the closest honest check.
            return tcp_socket({"port": spec["grpc"]["port"]}, host, named, timeout)
        raise SpecError(f"probe handler {sorted(spec)} is not supported")

    return run


def tick(state: ProbeState, runner: Runner, now: float | None = None) -> bool:
    """Runs the probe when it is due; True when its result changed."""
    now = time.monotonic() if now is None else now
    if not state.due(now):
        return False
    timeout = float(state.spec.get("timeoutSeconds") or 1)
    return state.record(runner(state.spec, timeout), now)
