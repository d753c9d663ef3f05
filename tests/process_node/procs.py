"""Container processes: start one through the shim, find it again after a restart, signal it.

A process is identified by its PID *and* its start time (field 22 of /proc/PID/stat, clock
ticks since boot), so a recycled PID is never mistaken for ours and never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIM = Path(__file__).with_name("shim.py")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@dataclass(frozen=True)
class Handle:
    pid: int
    start_ticks: int


def start_ticks(pid: int) -> int | None:
    """The process's start time, or None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(handle: Handle) -> bool:
    return start_ticks(handle.pid) == handle.start_ticks


# Popen objects of the processes this agent instance started, so that they are reaped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path, exit_file: Path) -> Handle:
    exit_file.unlink(missing_ok=True)
    # Blocked in this thread while forking, so the shim inherits them blocked until it has
    # installed its handlers: a stop requested right after the start is not lost.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        with log.open("ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-I", str(SHIM), str(exit_file), "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    ticks = start_ticks(child.pid)
    if ticks is None:  # it already ended (and cannot be a reused PID: we have not reaped it)
        child.wait()
        ticks = -1
    _CHILDREN[child.pid] = child
    return Handle(child.pid, ticks)


def running(handle: Handle) -> bool:
    """Reaps our own children; an adopted process is checked through /proc."""
    child = _CHILDREN.get(handle.pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[handle.pid]
        return False
    return alive(handle)


def exit_record(exit_file: Path) -> dict[str, Any]:
    """What the shim recorded; a group killed with SIGKILL (shim included) leaves none."""
    try:
        record = json.loads(exit_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"exitCode": 137, "signal": int(signal.SIGKILL), "finishedAt": None}
    return dict(record)


def signal_group(handle: Handle, signum: int) -> bool:
    """Signals the process group led by a process we started; False when it is not ours."""
    if not running(handle) or not alive(handle):
        return False
    try:
        os.killpg(handle.pid, signum)
    except ProcessLookupError:
        return False
    return True
