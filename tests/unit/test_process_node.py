"""The process node's pure parts: expansion, path mapping, entrypoints, status, addresses."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.process_node import procs, spec
from tests.process_node.ipam import AddressBook, PoolExhaustedError, allocate, pool_for
from tests.process_node.probes import ProbeState
from tests.process_node.status import (
    ContainerRun,
    PodRecord,
    container_status,
    pod_phase,
    pod_status,
    restart_delay,
    should_restart,
    termination_message,
)
from tests.process_node.volumes import DATA, atomic_write, projection_payload

# --- $(VAR) expansion ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--host $(POD_IP)", "--host 127.10.0.1"),
        ("$(POD_IP):$(PORT)", "127.10.0.1:8080"),
        ("$(MISSING) stays", "$(MISSING) stays"),
        ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
        ("$POD_IP is shell syntax", "$POD_IP is shell syntax"),
        ("$$", "$"),
    ],
)
def test_expand_follows_kubelet(text: str, expected: str) -> None:
    assert spec.expand(text, {"POD_IP": "127.10.0.1", "PORT": "8080"}) == expected


# --- path mapping -------------------------------------------------------------------------


def test_path_mapper_rewrites_container_paths_at_token_boundaries() -> None:
    mapper = spec.PathMapper({"/models": "/h/m", "/models/cache": "/h/c", "/etc/routing/": "/h/r"})
    assert mapper.rewrite("/models") == "/h/m"
    assert mapper.rewrite("--model-store=/models/v1") == "--model-store=/h/m/v1"
    assert mapper.rewrite("/models/cache/x") == "/h/c/x"  # the longest mount wins
    assert mapper.rewrite("cat /etc/routing/routing.json; ls /models") == (
        "cat /h/r/routing.json; ls /h/m"
    )
    assert mapper.rewrite("a:/models,/models/b") == "a:/h/m,/h/m/b"
    # Not a path under the mount: a longer name, or the text in the middle of a word.
    assert mapper.rewrite("/models-old") == "/models-old"
    assert mapper.rewrite("/x/models") == "/x/models"
    assert mapper.rewrite("/h/m") == "/h/m"  # replaced once, never again


def test_path_mapper_host_path() -> None:
    mapper = spec.PathMapper({"/data": "/h/d"})
    assert mapper.host_path("/data/a/b") == Path("/h/d/a/b")
    assert mapper.host_path("/data") == Path("/h/d")
    assert mapper.host_path("/database") is None


def test_mount_mapping_covers_sub_paths_and_the_termination_log(tmp_path: Path) -> None:
    container = {
        "volumeMounts": [
            {"name": "store", "mountPath": "/models"},
            {"name": "cfg", "mountPath": "/etc/app/routing.json", "subPath": "routing.json"},
        ]
    }
    paths = {"store": tmp_path / "store", "cfg": tmp_path / "cfg"}
    mapping = spec.mount_mapping(container, paths, tmp_path / "term")
    assert mapping == {
        "/models": tmp_path / "store",
        "/etc/app/routing.json": tmp_path / "cfg" / "routing.json",
        "/dev/termination-log": tmp_path / "term",
    }
    with pytest.raises(spec.SpecError):
        spec.mount_mapping({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, paths, Path())
    escape = {"volumeMounts": [{"name": "store", "mountPath": "/x", "subPath": "../up"}]}
    with pytest.raises(spec.SpecError):
        spec.mount_mapping(escape, paths, Path())


# --- entrypoints and commands -------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "script"),
    [
        ("registry.example.com/shopping-guide/recommender:0.1.0", "shopping-guide"),
        ("localhost:5000/shopping-guide-recommender@sha256:abc", "shopping-guide"),
        ("registry.example.com/shopping-guide/operator", "shopping-guide-operator"),
    ],
)
def test_image_entrypoints(image: str, script: str) -> None:
    profile = spec.image_profile(image)
    assert profile is not None
    assert profile.entrypoint == (script,)


def test_unknown_image_without_command_is_a_config_error() -> None:
    assert spec.image_profile("busybox:1.36") is None
    with pytest.raises(spec.SpecError):
        spec.build_command({"image": "busybox"}, {}, spec.PathMapper({}))


def test_build_command_maps_the_entrypoint_expands_and_rewrites(tmp_path: Path) -> None:
    container: dict[str, Any] = {
        "image": "registry.example.com/shopping-guide/recommender:1",
        "args": ["serve", "--model-store", "/models", "--host", "$(POD_IP)"],
    }
    argv = spec.build_command(
        container, {"POD_IP": "127.10.0.7"}, spec.PathMapper({"/models": tmp_path})
    )
    assert argv == [
        str(spec.SCRIPTS_DIR / "shopping-guide"),
        "serve",
        "--model-store",
        str(tmp_path),
        "--host",
        "127.10.0.7",
    ]
    # No args either: the image's CMD.
    no_args = spec.build_command({"image": container["image"]}, {}, spec.PathMapper({}))
    assert no_args[1:] == ["--help"]


def test_console_scripts_resolve_in_the_agents_environment(tmp_path: Path) -> None:
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    assert spec.resolve_executable("tool", "/nowhere", tmp_path) == str(tmp_path / "tool")
    # An image path that the host lacks falls back to the script of the same name.
    assert spec.resolve_executable("/opt/venv/bin/tool", None, tmp_path) == str(tmp_path / "tool")
    assert spec.resolve_executable("sh", "/usr/bin:/bin", tmp_path).endswith("/sh")
    with pytest.raises(spec.SpecError):
        spec.resolve_executable("no-such-program-here", "/nowhere", tmp_path)


# --- environment --------------------------------------------------------------------------


def test_build_env_sources_order_and_mapping() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}},
        "spec": {"nodeName": "local-0"},
        "status": {"podIP": "127.10.0.3"},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "all"}, "prefix": "CM_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(POD_IP):8080$(MISSING)"},
            {"name": "STORE", "value": "/models/x"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
        ],
    }

    def lookup(kind: str, name: str, key: str, optional: bool) -> str | None:
        return None if optional else f"{kind}:{name}:{key}"

    env = spec.build_env(
        pod,
        container,
        {"PATH": "/bin"},
        lookup,
        lambda kind, name, optional: {"A": "1"},
        spec.PathMapper({"/models": "/h/m"}),
    )
    assert env == {
        "PATH": "/bin",
        "CM_A": "1",
        "POD_IP": "127.10.0.3",
        "NS": "ns",
        "APP": "a",
        "URL": "http://127.10.0.3:8080$(MISSING)",
        "STORE": "/h/m/x",
        "KEY": "secret:s:k",
    }


# --- addresses ----------------------------------------------------------------------------


def test_allocate_skips_used_addresses() -> None:
    import ipaddress

    pool = ipaddress.IPv4Network("127.20.0.0/30")
    assert allocate([], pool) == "127.20.0.1"
    assert allocate(["127.20.0.1"], pool) == "127.20.0.2"
    with pytest.raises(PoolExhaustedError):
        allocate(["127.20.0.1", "127.20.0.2"], pool)


def test_address_book_is_unique_and_persisted(tmp_path: Path) -> None:
    book = AddressBook(tmp_path / "ips.json")
    a, b = book.get("uid-a"), book.get("uid-b")
    assert a != b
    assert book.get("uid-a") == a
    again = AddressBook(tmp_path / "ips.json")
    assert again.get("uid-b") == b
    again.release("uid-a")
    assert AddressBook(tmp_path / "ips.json").get("uid-c") == a


# --- status -------------------------------------------------------------------------------


def _finished(code: int, done: bool = True) -> ContainerRun:
    run = ContainerRun("c", done=done)
    run.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
    return run


def test_pod_phase() -> None:
    running = ContainerRun("c", pid=1, start_ticks=1, started_at=0.0)
    assert pod_phase([], [ContainerRun("c")], "Always") == "Pending"
    assert pod_phase([], [running], "Always") == "Running"
    assert pod_phase([], [_finished(0)], "Never") == "Succeeded"
    assert pod_phase([], [_finished(0), _finished(2)], "Never") == "Failed"
    assert pod_phase([], [_finished(1, done=False)], "OnFailure") == "Running"
    assert pod_phase([ContainerRun("i")], [ContainerRun("c")], "Always") == "Pending"
    assert pod_phase([_finished(1)], [ContainerRun("c")], "Never") == "Failed"


def test_restart_rules_and_backoff() -> None:
    assert should_restart("Always", 0, init=False)
    assert should_restart("OnFailure", 1, init=False)
    assert not should_restart("OnFailure", 0, init=False)
    assert not should_restart("Never", 1, init=False)
    assert should_restart("Always", 1, init=True) and not should_restart("Always", 0, init=True)
    assert [restart_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_termination_message_policy() -> None:
    log = [f"line {i}\n" for i in range(100)]
    assert termination_message(b'{"a": 1}', log, "File", 1) == '{"a": 1}'
    assert termination_message(b"", log, "File", 1) == ""
    fallback = termination_message(b"", log, "FallbackToLogsOnError", 1)
    assert fallback.startswith("line 20\n") and fallback.endswith("line 99\n")
    assert termination_message(b"", log, "FallbackToLogsOnError", 0) == ""
    assert len(termination_message(b"x" * 10_000, [], "File", 0)) == 4096


def test_container_status_states() -> None:
    spec_ = {"image": "img"}
    running = ContainerRun("c", pid=42, start_ticks=1, started_at=0.0, ready=True, started=True)
    status = container_status(running, spec_)
    assert status["state"] == {"running": {"startedAt": "1970-01-01T00:00:00Z"}}
    assert status["ready"] and status["containerID"] == "process://42"
    backoff = _finished(1, done=False)
    backoff.waiting_reason = "CrashLoopBackOff"
    status = container_status(backoff, spec_)
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 1
    status = container_status(_finished(0), spec_)
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert container_status(ContainerRun("c"), spec_)["state"] == {
        "waiting": {"reason": "ContainerCreating"}
    }


def test_pod_status_ready_follows_containers_and_keeps_transition_times() -> None:
    pod: dict[str, Any] = {"spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {}}
    record = PodRecord("u", "ns", "p", "127.10.0.9", 0.0)
    record.containers["c"] = ContainerRun("c", pid=7, start_ticks=1, started_at=0.0)
    specs = {"c": pod["spec"]["containers"][0]}
    status = pod_status(pod, record, specs, volumes_ready=True)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Running" and status["podIP"] == "127.10.0.9"
    assert status["podIPs"] == [{"ip": "127.10.0.9"}] and status["hostIP"] == "127.0.0.1"
    assert conditions["Ready"]["status"] == "False"
    record.containers["c"].ready = True
    pod["status"] = status
    conditions["Ready"]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    conditions["PodScheduled"]["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    later = {c["type"]: c for c in pod_status(pod, record, specs, True)["conditions"]}
    assert later["Ready"]["status"] == "True"
    assert later["Ready"]["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert later["PodScheduled"]["lastTransitionTime"] == "2000-01-01T00:00:00Z"


def test_pod_record_round_trips() -> None:
    record = PodRecord("u", "ns", "p", "127.10.0.9", 1.5)
    record.containers["c"] = _finished(3)
    assert PodRecord.from_json(record.to_json()) == record


# --- probes -------------------------------------------------------------------------------


def test_probe_counting_honours_delay_period_and_thresholds() -> None:
    state = ProbeState(
        {"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2}, 100.0, True
    )
    assert not state.due(104.0) and state.due(105.0)
    assert not state.record(False, 105.0)  # one failure: still below the threshold
    assert not state.due(106.0) and state.due(107.0)
    assert state.record(False, 107.0) and state.result is False
    assert state.record(True, 109.0) and state.result is True


# --- volumes ------------------------------------------------------------------------------


def test_atomic_write_swaps_the_data_link(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    assert atomic_write(root, {"routing.json": (b"v1", 0o644), "sub/x": (b"x", 0o600)})
    first = (root / DATA).readlink()
    assert (root / "routing.json").readlink() == Path(DATA) / "routing.json"
    assert (root / "routing.json").read_bytes() == b"v1"
    assert (root / "sub" / "x").read_bytes() == b"x"
    assert not atomic_write(root, {"routing.json": (b"v1", 0o644), "sub/x": (b"x", 0o600)})
    assert atomic_write(root, {"routing.json": (b"v2", 0o644)})
    assert (root / DATA).readlink() != first and not (root / first).exists()
    assert (root / "routing.json").read_bytes() == b"v2"
    assert not (root / "sub").exists()


def test_projection_payload_of_a_configmap_with_items() -> None:
    volume = {
        "name": "v",
        "configMap": {"name": "cm", "items": [{"key": "a", "path": "renamed"}]},
    }

    def lookup(kind: str, name: str, optional: bool) -> dict[str, Any]:
        return {"data": {"a": "1", "b": "2"}}

    payload = projection_payload({}, volume, lookup, lambda source: "token")
    assert payload == {"renamed": (b"1", 0o644)}
    assert projection_payload({}, {"name": "v", "nfs": {}}, lookup, lambda s: "") is None


# --- processes ----------------------------------------------------------------------------


def test_processes_record_their_exit_and_are_signalled_only_when_ours(tmp_path: Path) -> None:
    log, exit_file = tmp_path / "c.log", tmp_path / "c.exit"
    handle = procs.start(
        ["sh", "-c", "echo out; exit 3"], {"PATH": "/usr/bin:/bin"}, tmp_path, log, exit_file
    )
    deadline = time.monotonic() + 10
    while procs.running(handle) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.exit_record(exit_file)["exitCode"] == 3
    assert log.read_text() == "out\n"
    assert not procs.signal_group(handle, signal.SIGTERM)

    sleeper = procs.start(["sleep", "30"], {"PATH": "/usr/bin:/bin"}, tmp_path, log, exit_file)
    assert procs.alive(sleeper)
    impostor = procs.Handle(sleeper.pid, sleeper.start_ticks + 1)
    assert not procs.signal_group(impostor, signal.SIGTERM)  # same PID, another start time
    assert procs.signal_group(sleeper, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while procs.running(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    record = procs.exit_record(exit_file)
    assert record["exitCode"] == 128 + signal.SIGTERM and record["signal"] == signal.SIGTERM


def test_each_node_gets_its_own_pool() -> None:
    assert pool_for("local-0") == pool_for("local-0")
    assert pool_for("local-0") != pool_for("e2e-node-1a2b")
    assert all(str(pool_for(f"n{i}")).startswith("127.") for i in range(50))
    assert all(10 <= int(str(pool_for(f"n{i}")).split(".")[1]) < 250 for i in range(50))
