"""What the long build scripts print: "[n/m] name", time so far, the log, and on failure the
end of that log and the command to retry. Run on fake steps and fake tools: nothing is built."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROGRESS = REPO / "hack" / "lib" / "progress.sh"


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`script` under the scripts' own shell options, with the helper sourced; stderr is a pipe,
    as in CI."""
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nsource {PROGRESS}\n{script}"],
        capture_output=True, text=True, check=False, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_a_step_says_which_of_how_many_how_long_and_where_its_log_is(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "fake.log"
    done = bash(
        f"progress_step '[build]' 2 3 kube-fake {log} 'make again' bash -c 'sleep 2.5; echo ok'\n"
        'echo "took $STEP_SECONDS"',
        PROGRESS_INTERVAL="1",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == f"[build] [2/3] kube-fake: building (log: {log})"
    assert f"[build] [2/3] kube-fake: 1 s (log: {log})" in lines
    assert f"[build] [2/3] kube-fake: 2 s (log: {log})" in lines
    assert lines[-1].startswith("[build] [2/3] kube-fake: done in ")
    assert "\r" not in done.stderr  # no spinner where stderr is not a terminal
    assert log.read_text() == "ok\n"
    assert int(done.stdout.split()[-1]) >= 2


def test_a_failed_step_shows_the_end_of_its_log_and_how_to_retry(tmp_path: Path) -> None:
    log = tmp_path / "fail.log"
    done = bash(
        "failing() { seq -f 'line %g' 40; echo 'error: no space' >&2; return 3; }\n"
        f"progress_step '[build]' 1 9 etcd {log} 'make cluster-binaries' failing\n"
        "echo 'after the step'",
        PROGRESS_TAIL="5",
    )
    assert done.returncode == 3
    assert "after the step" not in done.stdout  # the script stops at the failed step
    lines = done.stderr.splitlines()
    assert lines[1].startswith("[build] [1/9] etcd: failed after ")
    assert lines[1].endswith(f"(exit 3); the last lines of {log}:")
    assert lines[2:7] == ["    | line 37", "    | line 38", "    | line 39", "    | line 40",
                          "    | error: no space"]  # fmt: skip
    assert lines[7] == "[build] retry with: make cluster-binaries"


def test_a_step_stops_at_its_first_failing_command(tmp_path: Path) -> None:
    """Steps are shell functions of several commands: one that fails halfway must not go on
    (bash would carry on if the helper were called after `||`)."""
    log = tmp_path / "half.log"
    done = bash(f"half() {{ false; echo carried on; }}\nprogress_step '[b]' 1 1 half {log} x half")
    assert done.returncode == 1
    assert "carried on" not in log.read_text()


def fake_tool(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    tool = directory / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def run_script(script: str, fake_bin: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "hack" / script)], capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}",
             "SHOPPING_GUIDE_CACHE": str(cache)},
    )  # fmt: skip


def test_cluster_binaries_count_what_is_missing_and_stop_at_a_failure(tmp_path: Path) -> None:
    # A Go that can do nothing: every binary is missing, and the first one cannot be built.
    fake_tool(tmp_path / "bin", "go", "echo 'go: module lookup disabled (fake)' >&2; exit 1")
    done = run_script("build-cluster-binaries.sh", tmp_path / "bin", tmp_path / "cache")
    assert done.returncode == 1
    err = done.stderr
    assert "11 of 11 binaries to build: kube-apiserver kube-controller-manager" in err
    assert "[build-cluster-binaries] [1/11] kube-apiserver v1.34.4: building (log: " in err
    assert "[1/11] kube-apiserver v1.34.4: failed after " in err
    assert "    | go: module lookup disabled (fake)" in err
    assert err.rstrip().endswith("[build-cluster-binaries] retry with: make cluster-binaries")
    assert "[2/11]" not in err and done.stdout == ""


def test_addons_count_what_is_missing_and_stop_at_a_failure(tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "go", "echo 'go: module lookup disabled (fake)' >&2; exit 1")
    done = run_script("build-addons.sh", tmp_path / "bin", tmp_path / "cache")
    assert done.returncode == 1
    assert "[build-addons] [1/3] coredns v1.14.7: building (log: " in done.stderr
    assert "    | go: module lookup disabled (fake)" in done.stderr
    assert done.stderr.rstrip().endswith("[build-addons] retry with: make cluster-binaries")


def test_images_count_their_steps_and_say_how_to_retry(tmp_path: Path) -> None:
    # The base exists; the build itself fails.
    podman = [
        'if [ "$1 $2" = "image exists" ]; then exit 0; fi',
        "echo 'STEP 1/9: FROM base'; echo 'Error: no space left (fake)' >&2; exit 125",
    ]
    fake_tool(tmp_path / "bin", "podman", "\n".join(podman))
    done = run_script("images.sh", tmp_path / "bin", tmp_path / "cache")
    assert done.returncode == 125
    assert "==> [1/2] recommender: podman build localhost/shopping-guide/" in done.stderr
    assert "    | Error: no space left (fake)" in done.stderr
    assert done.stderr.rstrip().endswith("==> retry with: hack/images.sh")
