"""Fixtures for end-to-end tests against a real Kubernetes control plane.

The session fixture `kube` uses the cluster that $KUBECONFIG points at when it answers;
otherwise it starts the local one with hack/cluster.sh and stops it at the end (only if it
started it). Every test under tests/e2e is marked `e2e`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.conftest import required
from tests.e2e.host_state import HostState
from tests.e2e.product import wait_established, wait_until

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "hack" / "cluster.sh"
BUILD_SH = REPO / "hack" / "build-cluster-binaries.sh"
E2E_DIR = Path(__file__).resolve().parent
# cluster.sh exits with this code when the binaries have not been built yet.
MISSING_BINARIES = 3

T = TypeVar("T")

# kwok's nodes are tainted: only pods that ask for a fake node land there (scale and controller
# tests whose pods run nothing); everything else runs on the real node.
FAKE_NODE_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
ON_FAKE_NODES: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [FAKE_NODE_TOLERATION],
}


# What a failed end-to-end test leaves for whoever reads the report: the cluster is gone by
# then, so the state of its namespace, the nodes and the control plane's last words go into the
# report itself.
DIAGNOSED_LOGS = ("kube-scheduler", "kube-controller-manager", "kwok", "kubelet")
LOG_TAIL_LINES = 40


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when == "call":
        kube = getattr(item, "funcargs", {}).get("kube")
        namespace = getattr(item, "funcargs", {}).get("namespace")
        if isinstance(kube, Kube):
            for title, text in _diagnosis(kube, namespace if isinstance(namespace, str) else None):
                report.sections.append((f"cluster: {title}", text))
    return report


def _diagnosis(kube: Kube, namespace: str | None) -> list[tuple[str, str]]:
    commands: list[tuple[str, list[str]]] = [("nodes", ["get", "nodes", "-o", "wide"])]
    if namespace:
        commands += [
            (f"objects in {namespace}", ["get", "all", "-n", namespace, "-o", "wide"]),
            (
                f"events in {namespace}",
                ["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
            ),
        ]
    sections = []
    for title, args in commands:
        try:
            result = kube.kubectl(*args, check=False, timeout=30)
            sections.append((title, result.stdout + result.stderr))
        except subprocess.TimeoutExpired:
            sections.append((title, "kubectl timed out after 30 s"))
    if kube.state is not None:
        for name in DIAGNOSED_LOGS:
            log = kube.state / "logs" / f"{name}.log"
            if log.exists():
                with log.open("rb") as f:
                    # The end is all that is wanted; a kubelet's log can run to hundreds of MB.
                    f.seek(max(0, log.stat().st_size - 64 * 1024))
                    lines = f.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                sections.append((f"{name}.log", "\n".join(lines)))
    return sections


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marker must be on the items before `-m` deselection runs.
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def state_dir() -> Path:
    return Path(os.environ.get("SHOPPING_GUIDE_CLUSTER_DIR", REPO / ".cluster")).resolve()


def bin_dir() -> Path:
    override = os.environ.get("SHOPPING_GUIDE_K8S_BIN")
    if override:
        return Path(override)
    out = subprocess.run(
        [str(BUILD_SH), "--bin-dir"], check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip())


def cluster_sh(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Kube:
    """A reachable cluster: kubeconfig, kubectl and a configured Python ApiClient."""

    kubeconfig: Path
    kubectl_path: str
    api: client.ApiClient
    # Set when hack/cluster.sh manages this cluster (needed to restart its components).
    state: Path | None
    env: dict[str, str] = field(default_factory=dict)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def wait_until(
        self,
        probe: Callable[[], T | None],
        timeout: float,
        what: str,
        interval: float = 1.0,
        ignore: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Polls `probe` until it returns something truthy; returns that value."""
        return wait_until(probe, timeout, what, interval, ignore)

    def wait_established(self, *crds: str) -> None:
        wait_established(lambda *args: self.kubectl(*args, check=False), *crds)

    def restart_apiserver(self) -> None:
        if self.state is None:
            required("the cluster is not managed by hack/cluster.sh")
        result = cluster_sh("restart-apiserver", timeout=300)
        assert result.returncode == 0, result.stderr

    def apiserver_pid(self) -> int:
        assert self.state is not None
        return int((self.state / "pids" / "kube-apiserver.pid").read_text())


def api_client(kubeconfig: Path) -> client.ApiClient:
    # The loader is untyped in some releases of the kubernetes package.
    load: Any = config.new_client_from_config
    api: client.ApiClient = load(config_file=str(kubeconfig))
    return api


def manifest(body: dict[str, Any]) -> Any:
    """A plain manifest as a request body: every client release accepts dicts, but newer ones
    annotate bodies with their model classes."""
    return body


def _answers(kubeconfig: Path) -> bool:
    try:
        api = api_client(kubeconfig)
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception:
        return False
    return True


def kube_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The session's cluster: registered once, as the fixture `kube`, in tests/conftest.py, so
    that every tier that needs it (e2e, images) shares one instance."""
    state = state_dir()
    started = False
    before: HostState | None = None
    external = os.environ.get("KUBECONFIG")
    if external and _answers(Path(external)):
        kubeconfig = Path(external).resolve()
    else:
        # Already up (make cluster-up): use it and leave it running.
        if cluster_sh("status").returncode != 0:
            # What a killed run left goes first: the snapshot is of the host as it should be.
            cluster_sh("cleanup")
            before = HostState.capture()
            result = cluster_sh("up")
            if result.returncode == MISSING_BINARIES:
                required(f"cluster binaries not built (make cluster-binaries):\n{result.stderr}")
            if result.returncode != 0:
                cluster_sh("down")
                raise RuntimeError(f"hack/cluster.sh up failed:\n{result.stderr[-6000:]}")
            started = True
        kubeconfig = state / "kubeconfig"

    kubectl = bin_dir() / "kubectl"
    kubectl_path = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
    if kubectl_path is None:
        required("no kubectl found")
        raise AssertionError  # unreachable: required() raises
    # kubectl's discovery cache goes to a temporary directory, not ~/.kube.
    env = {**os.environ, "KUBECACHEDIR": str(tmp_path_factory.mktemp("kubectl-cache"))}
    managed = kubeconfig == (state / "kubeconfig").resolve()
    api = api_client(kubeconfig)
    try:
        yield Kube(kubeconfig, kubectl_path, api, state if managed else None, env)
    finally:
        if started:
            result = cluster_sh("down")
            assert result.returncode == 0, result.stderr
            # `down` puts the host back exactly as `up` found it.
            assert before is not None
            left = before.differences(HostState.capture())
            assert not left, f"cluster.sh down left the host changed:\n{left}"


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40]
    base = base.strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube.api)
    core.create_namespace(manifest({"metadata": {"name": name}}))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
