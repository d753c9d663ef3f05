"""The operator on a real control plane: train, gate, serve, fail, drift, restart, delete.

Each test runs its own operator process against its own namespace. Serving pods run on kwok's
fake nodes (Running and Ready at once). Training pods go to a node that nothing manages, so
they stay as the scheduler left them until the test writes the trainer's outcome into the
pod's status, termination message included, the way a kubelet would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import REPO
from tests.e2e.conftest import ON_FAKE_NODES, Kube

pytestmark = pytest.mark.e2e

CRD = REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"
ERASURE_CRD = REPO / "crds" / "shoppingguide.io_shoppingguideerasures.yaml"
TRAIN_NODE = "shopping-guide-e2e-trainer"
TRAIN_LABEL = "shoppingguide.io/e2e-node"
TRAIN_TAINT = "shoppingguide.io/e2e-trainer"
IMAGE = "registry.example.com/shopping-guide/recommender:e2e"
TIMEOUT = 90.0


def install_crd(kube: Kube) -> None:
    for crd in (CRD, ERASURE_CRD):
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kube.wait_established(
        "shoppingguides.shoppingguide.io", "shoppingguideerasures.shoppingguide.io"
    )


@pytest.fixture(scope="module")
def cluster(kube: Kube) -> Iterator[Kube]:
    """The CRD, and a node for training pods that no kubelet (or kwok) drives."""
    install_crd(kube)
    core: Any = client.CoreV1Api(kube.api)
    try:
        core.delete_node(TRAIN_NODE)
    except ApiException as exc:
        if exc.status != 404:
            raise
    core.create_node(
        {
            "metadata": {"name": TRAIN_NODE, "labels": {TRAIN_LABEL: "trainer"}},
            "spec": {"taints": [{"key": TRAIN_TAINT, "value": "true", "effect": "NoSchedule"}]},
        }
    )
    capacity = {"cpu": "8", "memory": "32Gi", "pods": "110"}
    core.patch_node_status(TRAIN_NODE, {"status": {"capacity": capacity, "allocatable": capacity}})
    yield kube
    core.delete_node(TRAIN_NODE)


def guide_manifest(namespace: str, name: str = "storefront", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "shoppingguide.io/v1alpha1",
        "kind": "ShoppingGuide",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": IMAGE,
            "data": {
                "interactions": {
                    "persistentVolumeClaim": {"claimName": "events"},
                    "path": "interactions.csv",
                    "columns": {"event": "event"},
                },
                "eventWeights": {"view": 1, "purchase": 10},
            },
            "modelStore": {"persistentVolumeClaim": {"claimName": "models"}},
            "training": {
                "qualityGate": {"metric": "ndcg@10", "minimum": 0.05, "maxRegression": 0.02},
                "retry": {"initialDelay": "2s", "maxDelay": "10s"},
                "nodeSelector": {TRAIN_LABEL: "trainer"},
                "tolerations": [
                    {"key": TRAIN_TAINT, "operator": "Exists", "effect": "NoSchedule"},
                    # Nothing reports this node's health: the controllers taint it.
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
                ],
            },
            "serving": {
                "autoscaling": {
                    "minReplicas": 2,
                    "maxReplicas": 5,
                    "targetCPUUtilizationPercentage": 60,
                },
                # kwok stands in for serving pods here; test_product runs them for real.
                **ON_FAKE_NODES,
            },
        },
    }
    body["spec"].update(spec)
    return body


def result_document(version: str, ndcg: float, champion: tuple[str, float] | None = None) -> str:
    metrics = {
        "ndcg@10": ndcg,
        "precision@10": 0.1,
        "recall@10": 0.3,
        "map@10": 0.1,
        "coverage": 0.6,
    }
    doc: dict[str, Any] = {
        "schema": 1,
        "version": version,
        "artifact": f"/models/{version}",
        "metrics": metrics,
        "baseline": {"popularity": {"ndcg@10": 0.03}},
        "data": {"users": 100, "items": 40, "interactions": 900},
    }
    if champion is not None:
        doc["champion"] = {"version": champion[0], "metrics": {"ndcg@10": champion[1]}}
    return json.dumps(doc, separators=(",", ":"))


def finished_pod_status(message: str, ok: bool = True) -> dict[str, Any]:
    """A training pod's status as a kubelet reports it once the trainer exits."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {
        "exitCode": 0 if ok else 1,
        "reason": "Completed" if ok else "Error",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    return {
        "phase": "Succeeded" if ok else "Failed",
        "containerStatuses": [
            {
                "name": "trainer",
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }


@dataclass
class World:
    kube: Kube
    namespace: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    # --- the operator ---------------------------------------------------------------------

    def start_operator(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shopping_guide_operator",
                    "--standalone",
                    "--namespace",
                    self.namespace,
                    "--resync",
                    "5",
                    # The canary tests' Prometheus runs on this host.
                    "--prometheus-allowed-address=http://127.0.0.1:*",
                ],
                env={**self.kube.env, "KUBECONFIG": str(self.kube.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def stop_operator(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    # --- reading --------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self.kube.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr:
                return None
            raise AssertionError(out.stderr)
        found: dict[str, Any] = json.loads(out.stdout)
        return found

    def must(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] | None = self.kube.wait_until(
            lambda: self.get(kind, name), TIMEOUT, f"{kind} {name}"
        )
        assert found is not None
        return found

    def status(self, name: str = "storefront") -> dict[str, Any]:
        guide = self.get("shoppingguide", name) or {}
        return dict(guide.get("status") or {})

    def condition(self, kind: str, name: str = "storefront") -> tuple[str, str] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == kind:
                return c["status"], c["reason"]
        return None

    def wait_status(self, what: str, test: Any, name: str = "storefront") -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if test(status) else None

        found: dict[str, Any] | None = self.kube.wait_until(probe, TIMEOUT, what)
        assert found is not None
        return found

    def jobs(self) -> list[dict[str, Any]]:
        out = self.kube.kubectl("get", "jobs", "-n", self.namespace, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return sorted(items, key=lambda j: j["metadata"]["creationTimestamp"])

    def new_job(self, known: set[str]) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            fresh = [j for j in self.jobs() if j["metadata"]["name"] not in known]
            return fresh[0] if fresh else None

        found: dict[str, Any] | None = self.kube.wait_until(probe, TIMEOUT, "a new training Job")
        assert found is not None
        return found

    def events(self) -> list[str]:
        out = self.kube.kubectl("get", "events", "-n", self.namespace, "-o", "json")
        return [e.get("reason", "") for e in json.loads(out.stdout)["items"]]

    # --- acting as kubelet ----------------------------------------------------------------

    def finish_training(self, job: str, message: str, ok: bool = True) -> None:
        core: Any = client.CoreV1Api(self.kube.api)

        def scheduled_pod() -> str | None:
            pods = core.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
            ).items
            return next((p.metadata.name for p in pods if p.spec.node_name), None)

        pod = self.kube.wait_until(scheduled_pod, TIMEOUT, f"the pod of {job} scheduled")
        status = finished_pod_status(message, ok)
        core.patch_namespaced_pod_status(pod, self.namespace, {"status": status})

    def tear_down(self) -> None:
        """Delete the guides while the operator still runs (it holds their finalizer), stop
        it, and release the test's volumes."""
        self.kube.kubectl(
            "delete",
            "shoppingguides",
            "--all",
            "-n",
            self.namespace,
            "--wait=true",
            "--timeout=60s",
            check=False,
        )
        self.stop_operator()
        self.kube.kubectl(
            "delete", "pv", "-l", f"e2e-namespace={self.namespace}", "--wait=false", check=False
        )

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))

    def storage(self) -> None:
        """Two statically bound volumes, so that the pods' claims can be scheduled."""
        core: Any = client.CoreV1Api(self.kube.api)
        for claim in ("events", "models"):
            pv = f"{self.namespace}-{claim}"
            core.create_persistent_volume(
                {
                    "metadata": {"name": pv, "labels": {"e2e-namespace": self.namespace}},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteMany"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "",
                        "hostPath": {"path": f"/tmp/shopping-guide-e2e/{pv}"},
                        "claimRef": {"namespace": self.namespace, "name": claim},
                    },
                }
            )
            core.create_namespaced_persistent_volume_claim(
                self.namespace,
                {
                    "metadata": {"name": claim},
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "storageClassName": "",
                        "volumeName": pv,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )


@pytest.fixture
def world(cluster: Kube, namespace: str, tmp_path: Path) -> Iterator[World]:
    w = World(cluster, namespace, tmp_path / "operator.log")
    w.storage()
    w.start_operator()
    try:
        yield w
    finally:
        if w.process is None:
            w.start_operator()
        w.tear_down()
        print(w.log.read_text()[-6000:])


def operator_owned_fields(w: World, kind: str, name: str) -> dict[str, Any]:
    """The fields the operator's server-side apply owns (its managedFields entry)."""
    out = w.kube.kubectl(
        "get", kind, name, "-n", w.namespace, "-o", "json", "--show-managed-fields"
    )
    entries = json.loads(out.stdout)["metadata"]["managedFields"]
    mine = [e for e in entries if e["manager"] == "shopping-guide-operator"]
    assert mine, entries
    fields: dict[str, Any] = mine[0]["fieldsV1"]
    return fields


def promote_first_model(w: World) -> str:
    w.apply(guide_manifest(w.namespace))
    job = w.new_job(set())
    w.finish_training(job["metadata"]["name"], result_document("v1", 0.30))
    w.wait_status(
        "v1 stable and the guide Ready",
        lambda s: s.get("phase") == "Ready" and s["stable"]["version"] == "v1",
    )
    return str(job["metadata"]["name"])


def test_a_guide_trains_passes_the_gate_and_serves(world: World) -> None:
    w = world
    w.apply(guide_manifest(w.namespace))
    job = w.new_job(set())
    name = job["metadata"]["name"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["shopping-guide"]
    assert container["args"][0] == "train"
    assert "--champion" not in container["args"]
    assert container["terminationMessagePolicy"] == "File"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ShoppingGuide"
    w.wait_status("phase Training", lambda s: s.get("phase") == "Training")
    assert w.get("deployment", "storefront") is None  # nothing to serve yet

    w.finish_training(name, result_document("v1", 0.30))
    status = w.wait_status("the guide Ready", lambda s: s.get("phase") == "Ready")
    assert status["stable"]["version"] == "v1"
    assert status["stable"]["metrics"]["ndcg@10"] == 0.30
    assert status["history"][0]["outcome"] == "Promoted"
    assert status["readyReplicas"] >= 1
    guide = w.get("shoppingguide", "storefront")
    assert guide is not None
    assert status["observedGeneration"] == guide["metadata"]["generation"]

    deployment = w.must("deployment", "storefront")
    spec = deployment["spec"]
    assert "f:replicas" not in operator_owned_fields(w, "deployment", "storefront")["f:spec"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    hpa = w.must("hpa", "storefront")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "storefront"
    pdb = w.must("pdb", "storefront")
    assert pdb["spec"]["maxUnavailable"] == 1
    service = w.must("service", "storefront")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    configmap = w.must("configmap", "storefront-routing")
    routing = json.loads(configmap["data"]["routing.json"])
    assert (routing["stable"], routing["canary"]) == ("v1", None)

    printed = w.kube.kubectl("get", "sg", "-n", w.namespace).stdout
    assert "Ready" in printed and "v1" in printed
    w.kube.wait_until(
        lambda: {"TrainingStarted", "ModelPromoted"} <= set(w.events()),
        TIMEOUT,
        "events of the training and the promotion",
    )


def test_a_rejected_model_is_recorded_and_the_stable_keeps_serving(world: World) -> None:
    w = world
    first = promote_first_model(w)
    w.kube.kubectl(
        "annotate", "sg", "storefront", "-n", w.namespace, "shoppingguide.io/retrain=again"
    )
    job = w.new_job({first})
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--champion") + 1] == "v1"
    w.finish_training(job["metadata"]["name"], result_document("v2", 0.20, champion=("v1", 0.30)))
    # The phase settles a pass after the history (a busy machine shows the one in between).
    status = w.wait_status(
        "v2 rejected, the guide Ready",
        lambda s: (
            (s.get("history") or [{}])[0].get("outcome") == "Rejected" and s.get("phase") == "Ready"
        ),
    )
    assert status["stable"]["version"] == "v1"
    assert "below the stable model" in status["history"][0]["reason"]
    routing = json.loads(w.must("configmap", "storefront-routing")["data"]["routing.json"])
    assert routing["stable"] == "v1"
    w.kube.wait_until(lambda: "ModelRejected" in w.events(), TIMEOUT, "a ModelRejected event")


def test_a_failed_job_degrades_and_is_retried(world: World) -> None:
    w = world
    w.apply(guide_manifest(w.namespace))
    first = w.new_job(set())["metadata"]["name"]
    w.finish_training(first, '{"schema":1,"error":"interactions.csv: no such file"}', ok=False)
    status = w.wait_status("Degraded", lambda s: s.get("phase") == "Degraded")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "TrainingFailed"
    assert "no such file" in degraded["message"]
    retry = w.new_job({first})["metadata"]["name"]
    assert retry.endswith("-1")
    w.finish_training(retry, result_document("v1", 0.30))
    w.wait_status("recovered", lambda s: s.get("phase") == "Ready")
    assert w.condition("Degraded") == ("False", "Healthy")


def test_drift_in_the_deployment_is_repaired(world: World) -> None:
    w = world
    promote_first_model(w)
    w.kube.kubectl(
        "set", "image", "deployment/storefront", "recommender=attacker/image:1", "-n", w.namespace
    )

    def restored() -> bool:
        deployment = w.get("deployment", "storefront") or {}
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        return bool(image == IMAGE)

    w.kube.wait_until(restored, TIMEOUT, "the Deployment's image restored")


def test_an_operator_restart_resumes_from_status(world: World) -> None:
    w = world
    w.apply(guide_manifest(w.namespace))
    first = w.new_job(set())["metadata"]["name"]
    w.wait_status("Training recorded", lambda s: s.get("phase") == "Training")
    w.stop_operator()
    w.finish_training(first, result_document("v1", 0.30))
    w.kube.wait_until(
        lambda: any(
            c["type"] == "Complete"
            for c in (w.get("job", first) or {}).get("status", {}).get("conditions") or []
        ),
        TIMEOUT,
        "the Job complete",
    )
    w.start_operator()
    status = w.wait_status("Ready after the restart", lambda s: s.get("phase") == "Ready")
    assert status["stable"]["version"] == "v1"
    assert [j["metadata"]["name"] for j in w.jobs()] == [first]  # nothing trained twice


def test_deleting_a_guide_mid_training_leaves_only_the_claims(world: World) -> None:
    w = world
    w.apply(guide_manifest(w.namespace))
    job = w.new_job(set())["metadata"]["name"]
    w.must("service", "storefront")
    w.kube.kubectl("delete", "sg", "storefront", "-n", w.namespace, "--timeout=60s")

    def cleaned() -> bool:
        out = w.kube.kubectl(
            "get", "jobs,services,configmaps,deployments,cronjobs", "-n", w.namespace, "-o", "name"
        )
        left = [line for line in out.stdout.split() if "kube-root-ca" not in line]
        pods = json.loads(w.kube.kubectl("get", "pods", "-n", w.namespace, "-o", "json").stdout)
        # No kubelet runs on the training node to confirm a pod's end: being deleted is gone.
        alive = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
        return not left and not alive

    w.kube.wait_until(cleaned, TIMEOUT, f"{job} and every other child garbage-collected")
    claims = w.kube.kubectl("get", "pvc", "-n", w.namespace, "-o", "name").stdout.split()
    assert sorted(claims) == ["persistentvolumeclaim/events", "persistentvolumeclaim/models"]
    w.kube.kubectl("delete", "pods", "--all", "-n", w.namespace, "--grace-period=0", "--force")


def test_two_replicas_with_peering_take_turns(
    cluster: Kube, namespace: str, tmp_path: Path
) -> None:
    """With kopf peering the lower-priority replica stands by, then takes over when the
    active one goes away: no two operators ever reconcile the same guide."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / "crds" / "kopf.dev_peerings.yaml"),
    )
    # The peering object the replicas meet at (the chart creates it in the same way).
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": "e2e", "namespace": namespace},
            }
        ),
    )
    w = World(cluster, namespace, tmp_path / "unused.log")
    w.storage()

    def replica(priority: int, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shopping_guide_operator",
                    "--peering",
                    "e2e",
                    "--priority",
                    str(priority),
                    "--namespace",
                    namespace,
                    "--resync",
                    "5",
                    # The canary tests' Prometheus runs on this host.
                    "--prometheus-allowed-address=http://127.0.0.1:*",
                ],
                env={**cluster.env, "KUBECONFIG": str(cluster.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    active_log, standby_log = tmp_path / "active.log", tmp_path / "standby.log"

    def paused(log: Path) -> bool:
        """kopf's last word on peering in this log was a pause."""
        text = log.read_text()
        return text.rfind("Pausing operations") > text.rfind("Resuming operations")

    active = replica(100, active_log)
    standby: subprocess.Popen[bytes] | None = None
    try:
        cluster.wait_until(
            lambda: "Resuming operations" in active_log.read_text(), TIMEOUT, "the active replica"
        )
        standby = replica(50, standby_log)
        # The standby stands by: it pauses (logged), or never resumes at all.
        try:
            cluster.wait_until(lambda: paused(standby_log), 15, "the standby to pause")
        except AssertionError:
            assert "Resuming operations" not in standby_log.read_text()
        job = promote_first_model(w)
        assert [j["metadata"]["name"] for j in w.jobs()] == [job]
        assert paused(standby_log) or "Resuming operations" not in standby_log.read_text()

        active.terminate()
        active.wait(30)
        cluster.wait_until(
            lambda: "Resuming operations" in standby_log.read_text() and not paused(standby_log),
            120,
            "the standby to resume",
        )
        w.kube.kubectl(
            "annotate", "sg", "storefront", "-n", namespace, "shoppingguide.io/retrain=again"
        )
        second = w.new_job({job})
        assert second["metadata"]["name"] != job
    finally:
        running = [p for p in (active, standby) if p is not None and p.poll() is None]
        w.process = running[0] if running else None
        w.tear_down()
        for process in running[1:]:
            w.process = process
            w.stop_operator()
