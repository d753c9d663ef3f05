"""Canary rollouts end to end: the real control plane, Prometheus, servers and shoppers.

The operator runs as in production against the control plane. Serving runs as real recommender
processes started here (kwok's pods serve nothing), each reading a kubelet-style routing
directory that this test keeps in sync with the operator's routing ConfigMap. A real Prometheus
scrapes them, and the operator's analysis queries it. Shoppers are simulated: they click a
recommendation when it matches their taste, so a model trained on scrambled events loses its
clicks. Steps, pauses and intervals are seconds long.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import prometheus_binary
from tests.e2e.conftest import Kube, manifest
from tests.e2e.test_operator import World, cluster, guide_manifest  # noqa: F401
from tests.server.conftest import RoutingDir, free_port

pytestmark = pytest.mark.e2e
GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP = "abcd", 150, 12
INTERVAL = 3


def taste_rows(scrambled: bool = False) -> list[tuple[str, str]]:
    """Four groups with disjoint tastes; each user bought half of their group's items."""
    rng = random.Random(7)
    rows = []
    for group in GROUPS:
        for u in range(USERS_PER_GROUP):
            for j in range(ITEMS_PER_GROUP // 2):
                item = f"{group}{(u + 2 * j) % ITEMS_PER_GROUP}"
                if scrambled:  # a broken export: every event points at a random item
                    item = f"{rng.choice(GROUPS)}{rng.randrange(ITEMS_PER_GROUP)}"
                rows.append((f"{group}-user-{u}", item))
    return rows


def train(root: Path, name: str, seed: int, scrambled: bool, champion: str | None) -> str:
    """A real model via `shopping-guide train`; returns its termination message."""
    events = root / f"{name}.csv"
    events.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in taste_rows(scrambled)))
    message = root / f"{name}.json"
    command = [sys.executable, "-m", "shopping_guide.cli", "train", "--events", str(events),
               "--model-store", str(root / "store"), "--algorithm", "als", "--param", "factors=8",
               "--param", "iterations=15", "--seed", str(seed),
               "--termination-log", str(message)]  # fmt: skip
    if champion:
        command += ["--champion", champion]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return message.read_text()


@dataclass
class Serving:
    """Two server processes, their routing directories, and the ConfigMap-to-file sync."""

    root: Path
    routing: list[RoutingDir] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rollbacks: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self, document: dict[str, Any]) -> None:
        for n in range(2):
            routing = RoutingDir(self.root / f"routing-{n}")
            routing.write(document)
            port = free_port()
            with (self.root / f"server-{n}.log").open("wb") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "shopping_guide.cli", "serve", "--model-store",
                     str(self.root / "store"), "--routing", str(routing.path), "--host",
                     "127.0.0.1", "--port", str(port), "--reload-interval", "0.2",
                     # Its metrics carry the guide's name, as the Deployment's pods do: the
                     # operator's Prometheus queries select on it.
                     "--guide-name", "storefront"],
                    stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
            self.routing.append(routing)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url in self.urls:
            wait(lambda u=url: _status(u + "/readyz") == 200, 60, f"{url} ready")

    def sync(self, kube: Kube, namespace: str) -> None:
        """What kubelet does for a mounted ConfigMap, in well under its usual minute."""
        core = client.CoreV1Api(kube.api)
        last = ""
        while not self.stop.is_set():
            try:
                # A bounded wait: one stalled request must not freeze the pods' routing.
                data = core.read_namespaced_config_map(
                    "storefront-routing", namespace, _request_timeout=5
                ).data
            except Exception:
                time.sleep(0.3)
                continue
            text = (data or {}).get("routing.json", "")
            if text and text != last:
                document = json.loads(text)
                for routing in self.routing:
                    routing.write(document)
                self.rollbacks.append((time.time(), document))
                last = text
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass
class Shoppers:
    """A load generator: recommendation requests, and a click when the top item fits."""

    urls: list[str]
    served: list[tuple[float, str, str]] = field(default_factory=list)  # (time, user, version)
    running: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            if not self.running.is_set():
                time.sleep(0.1)
                continue
            n += 1
            user = f"{GROUPS[n % 4]}-user-{(n // 4) % USERS_PER_GROUP}"
            url = self.urls[n % len(self.urls)]
            try:
                body = _json(f"{url}/v1/recommendations?user_id={user}&k=1")
            except OSError:
                continue
            self.served.append((time.time(), user, str(body["model_version"])))
            items = body.get("items") or []
            if items and items[0]["item_id"][0] == user[0]:
                feedback = {"recommendation_id": body["recommendation_id"], "user_id": user,
                            "item_id": items[0]["item_id"], "event": "click"}  # fmt: skip
                _post(f"{url}/v1/feedback", feedback)


@dataclass
class Prometheus:
    root: Path
    targets: list[str]
    namespace: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.root / "prometheus.yml"
        hosts = ", ".join(f"'{t.removeprefix('http://')}'" for t in self.targets)
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: recommender\n"
            f"    static_configs: [{{targets: [{hosts}], "
            f"labels: {{namespace: {self.namespace}}}}}]\n"
        )
        with (self.root / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [prometheus_binary(), f"--config.file={config}",
                 f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait(lambda: _status(self.address + "/-/ready") == 200, 60, "Prometheus ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except OSError:
        pass


def wait(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


ROLLOUT: dict[str, Any] = {
    "steps": [{"weight": 10, "pause": "4s"}, {"weight": 30, "pause": "4s"},
              {"weight": 60, "pause": "4s"}],
    "analysis": {"interval": f"{INTERVAL}s", "failureLimit": 2, "minRequests": 30,
                 "maxErrorRate": 0.05, "minClickThroughRatio": 0.8},
    "progressDeadline": "90s",
}  # fmt: skip


@dataclass
class Rig:
    w: World
    models: dict[str, str]
    serving: Serving
    shoppers: Shoppers
    prometheus: Prometheus
    trained: set[str] = field(default_factory=set)

    def release(self, name: str) -> str:
        """A training run whose pod reports model `name`; returns its version."""
        self.w.kube.kubectl(
            "annotate", "sg", "storefront", "-n", self.w.namespace, "--overwrite",
            f"shoppingguide.io/retrain={name}",
        )  # fmt: skip
        job = self.w.new_job(self.trained)
        self.trained.add(job["metadata"]["name"])
        self.w.finish_training(job["metadata"]["name"], self.models[name])
        return str(json.loads(self.models[name])["version"])

    def routing(self) -> dict[str, Any]:
        configmap = self.w.get("configmap", "storefront-routing") or {}
        return dict(json.loads(configmap.get("data", {}).get("routing.json", "{}")))

    def outcome(self, version: str) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            for entry in self.w.status().get("history") or []:
                if entry["version"] == version and entry["outcome"] in ("Promoted", "RolledBack"):
                    return dict(entry)
            return None

        found: dict[str, Any] = wait(ended, 120, f"the canary of {version} to end")
        return found


@pytest.fixture(scope="module")
def rig(cluster: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:  # noqa: F811
    """One guide, its serving processes, Prometheus and shoppers for the whole story: each
    scenario below starts from the stable model the one before it left, and fails by name."""
    prometheus_binary()  # fails (in CI) or skips before anything is trained
    tmp_path = tmp_path_factory.mktemp("canary")
    namespace = f"e2e-canary-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(manifest({"metadata": {"name": namespace}}))
    w = World(cluster, namespace, tmp_path / "operator.log")
    w.storage()
    w.start_operator()
    models = {"v1": train(tmp_path, "v1", 1, False, None)}
    first = json.loads(models["v1"])["version"]
    models["better"] = train(tmp_path, "better", 2, False, first)
    serving = Serving(tmp_path)
    prometheus = Prometheus(tmp_path, [], namespace)
    shoppers = Shoppers(serving.urls)
    rig = Rig(w, models, serving, shoppers, prometheus)
    try:
        _serve_v1(rig)
        yield rig
    finally:
        shoppers.stop.set()
        serving.close()
        prometheus.stop()
        if w.process is None:
            w.start_operator()
        w.tear_down()
        print(w.log.read_text()[-6000:])
        core.delete_namespace(namespace)


def _serve_v1(rig: Rig) -> None:
    w = rig.w
    prometheus = rig.prometheus
    w.apply(guide_manifest(
        w.namespace, rollout={**ROLLOUT, "analysis": {
            **ROLLOUT["analysis"], "prometheus": {"address": prometheus.address}}},
        training={**guide_manifest(w.namespace)["spec"]["training"],
                  "qualityGate": {"metric": "ndcg@10", "minimum": 0.0, "maxRegression": 1.0}},
    ))  # fmt: skip
    job = w.new_job(set())
    rig.trained.add(job["metadata"]["name"])
    w.finish_training(job["metadata"]["name"], rig.models["v1"])
    v1 = json.loads(rig.models["v1"])["version"]
    w.wait_status("v1 stable", lambda s: (s.get("stable") or {}).get("version") == v1)

    rig.serving.start(rig.routing())
    prometheus.targets = rig.serving.urls
    prometheus.start()
    sync = threading.Thread(target=rig.serving.sync, args=(w.kube, w.namespace), daemon=True)
    sync.start()
    for offset in range(3):
        threading.Thread(target=rig.shoppers.run, args=(offset * 7,), daemon=True).start()
    rig.shoppers.running.set()
    time.sleep(3)  # every series scraped once before any canary


def _stable(rig: Rig) -> str:
    """The scenario's starting point: a stable model and no canary (an earlier scenario that
    failed may have left one; it is aborted so that this one is judged on its own)."""
    w = rig.w
    if (w.status().get("canary") or {}).get("version"):
        w.kube.kubectl(
            "annotate", "sg", "storefront", "-n", w.namespace, "--overwrite",
            f"shoppingguide.io/abort={uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        w.wait_status("no canary", lambda s: not (s.get("canary") or {}).get("version"))
    return str(w.status()["stable"]["version"])


def test_the_better_model_promotes_through_every_step_across_an_operator_restart(
    rig: Rig,
) -> None:
    w = rig.w
    _stable(rig)
    better = rig.release("better")
    weights = set()

    def promoted() -> bool:
        status = w.status()
        canary = status.get("canary") or {}
        if canary.get("version") == better:
            weights.add(canary.get("weight"))
        return bool((status.get("stable") or {}).get("version") == better)

    # An operator restart in the middle of a step resumes at the same step and weight.
    def second_step() -> bool:
        promoted()
        canary = w.status().get("canary") or {}
        return bool(canary.get("version") == better and canary.get("step") == 1)

    wait(second_step, 60, "the canary at its second step")
    w.stop_operator()
    frozen = dict(w.status()["canary"])
    starts = w.events().count("CanaryStarted")
    time.sleep(INTERVAL)
    assert rig.routing()["canaryWeightBasisPoints"] == round(frozen["weight"] * 100)
    w.start_operator()
    time.sleep(1)
    resumed = w.status().get("canary") or {}
    if resumed:  # it may already have finished the step it resumed
        assert resumed["version"] == better and resumed["step"] >= frozen["step"]
    assert w.events().count("CanaryStarted") == starts  # resumed, not restarted

    wait(promoted, 120, "the better model promoted")
    entry = rig.outcome(better)
    assert entry["outcome"] == "Promoted" and entry["reason"] == "every step passed"
    assert weights >= {30.0, 60.0} or weights >= {10.0, 60.0}
    routed = [d for _, d in rig.serving.rollbacks if d.get("canary") == better]
    assert {d["canaryWeightBasisPoints"] for d in routed} == {1000, 3000, 6000}
    assert rig.routing()["stable"] == better and rig.routing()["canary"] is None
    reasons = w.events()
    assert {"CanaryStarted", "CanaryStep", "CanaryPromoted", "ModelPromoted"} <= set(reasons)


def test_the_broken_model_rolls_back_within_the_failing_step(rig: Rig) -> None:
    w = rig.w
    stable = _stable(rig)
    rig.models["broken"] = train(w.log.parent, "broken2", 3, True, stable)
    broken = rig.release("broken")
    entry = rig.outcome(broken)
    assert entry["outcome"] == "RolledBack", entry
    assert "click-through ratio" in entry["reason"]
    assert w.status()["stable"]["version"] == stable
    bad = [(t, u) for t, u, v in rig.shoppers.served if v == broken]
    rolled_back_at = next(t for t, d in rig.serving.rollbacks
                          if d.get("canary") is None and t > bad[0][0])  # fmt: skip
    users = {u for _, u in bad}
    total = {u for t, u, _ in rig.shoppers.served if bad[0][0] <= t <= rolled_back_at}
    print(
        f"\nbroken canary: first bad response to rollback {rolled_back_at - bad[0][0]:.1f}s, "
        f"{len(users)} of {len(total)} active users saw it ({len(bad)} lists); "
        f"verdict: {entry['reason']}"
    )
    assert rolled_back_at - bad[0][0] < 4 * INTERVAL + 10
    assert "CanaryAnalysisFailed" in w.events()
    assert "CanaryRolledBack" in w.events()


def test_a_prometheus_outage_holds_the_canary_then_it_promotes(rig: Rig) -> None:
    w = rig.w
    prometheus = rig.prometheus
    stable = _stable(rig)
    rig.models["steady"] = train(w.log.parent, "steady", 4, False, stable)
    steady = rig.release("steady")
    w.wait_status(
        "the canary measuring",
        lambda s: (
            (s.get("canary") or {}).get("version") == steady
            and s["canary"].get("phase") == "Progressing"
        ),
    )
    prometheus.stop()
    w.kube.wait_until(lambda: "PrometheusUnreachable" in w.events(), 60, "the outage Event")
    held = w.status()["canary"]
    time.sleep(2 * INTERVAL)
    during = w.status()["canary"]
    assert (during["version"], during["step"]) == (steady, held["step"])
    assert during["inconclusive"] > held.get("inconclusive", 0) or during["prometheusError"]
    prometheus.start()
    entry = rig.outcome(steady)
    assert entry["outcome"] == "Promoted", entry
    assert "PrometheusReachable" in w.events()


def test_a_canary_without_traffic_rolls_back_at_the_progress_deadline(rig: Rig) -> None:
    w = rig.w
    stable = _stable(rig)
    rig.shoppers.running.clear()
    w.kube.kubectl(
        "patch", "sg", "storefront", "-n", w.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"rollout": {"progressDeadline": "12s"}}}),
    )  # fmt: skip
    rig.models["idle"] = train(w.log.parent, "idle", 5, False, stable)
    idle = rig.release("idle")
    entry = rig.outcome(idle)
    assert (entry["outcome"], entry["reason"]) == ("RolledBack", "ProgressDeadlineExceeded")
    assert entry["analysis"]["result"] == "Inconclusive"
    assert w.status()["stable"]["version"] == stable
    assert "CanaryInconclusive" in w.events()
