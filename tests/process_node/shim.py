"""Runs one container process and records how it ended: `shim.py EXIT_FILE -- ARGV...`.

The agent starts this script as a session and process-group leader instead of the container's
command itself, so that an agent that restarts (and is no longer the parent) still learns the
exit code from EXIT_FILE. It ignores the signals meant for the container (they reach the child
through the process group); once the child ends it kills what is left of the group, as the end
of a container's main process ends the container. Standard library only: it runs with -I.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Signals that arrived before the child existed; it gets them as soon as it does.
_early: list[int] = []
_child: subprocess.Popen[bytes] | None = None


def _hold(signum: int, frame: FrameType | None) -> None:
    """A handler, not SIG_IGN: handlers are reset by exec, so the child keeps the defaults.
    Once the child runs, the group signal reaches it directly and the shim ignores its copy."""
    if _child is None:
        _early.append(signum)


def main(argv: list[str]) -> int:
    exit_file, separator, *command = argv
    if separator != "--" or not command:
        print("usage: shim.py EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    global _child  # noqa: PLW0603 (the signal handler reads it)
    for forwarded in FORWARDED:
        signal.signal(forwarded, _hold)
    # The agent starts the shim with these blocked, so none is lost before the handler exists.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    try:
        child = _child = subprocess.Popen(command)
        for early in _early:
            child.send_signal(early)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        code, signalled = 127 if isinstance(exc, FileNotFoundError) else 126, None
    else:
        returncode = child.wait()
        code, signalled = (128 - returncode, -returncode) if returncode < 0 else (returncode, None)
    record = {
        "exitCode": code,
        "signal": signalled,
        "finishedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:  # noqa: PTH123 (kept minimal)
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, exit_file)  # noqa: PTH105
    # Leftover children of the container die with it; this ends the shim too.
    os.killpg(0, signal.SIGKILL)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
