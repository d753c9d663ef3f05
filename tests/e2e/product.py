"""The product installed on the local cluster as a user installs it: the built images on the
real node, the operator from the Helm chart, statically bound volumes, the sample guide.

Used by the end-to-end tests and by `make demo` (hack/demo.py)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "shopping-guide"
SAMPLE_DATA = REPO / "data" / "online-retail" / "online_retail.csv.xz"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RECOMMENDER_IMAGE = f"localhost/shopping-guide/recommender:{VERSION}"
OPERATOR_IMAGE = f"localhost/shopping-guide/operator:{VERSION}"
NODE = "real-0"
# The images' user: volumes it writes must belong to it (hostPath has no fsGroup).
IMAGE_UID = 10001
SERVING_SELECTOR = "app.kubernetes.io/component=serving"
HOST_IP = "198.19.0.1"  # hack/node.sh: the host's cluster address, reachable from pods
SHOPPERS = Path(__file__).with_name("shopper_pod.py")
UNRECOVERABLE = {"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"}

T = TypeVar("T")


class StepError(AssertionError):
    """A step did not finish; the message says what was awaited and what was last seen."""


# What a probe may raise while the thing it waits for is not there yet.
TRANSIENT: tuple[type[BaseException], ...] = (
    subprocess.SubprocessError, OSError, ValueError, KeyError,
)  # fmt: skip


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 1.0,
    ignore: tuple[type[BaseException], ...] = TRANSIENT,
) -> T:
    """Polls `probe` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise StepError(
                f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" ({last!r})" if last else "")
            )
        time.sleep(interval)


ESTABLISHED = '{.status.conditions[?(@.type=="Established")].status}'


def wait_established(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], *crds: str, timeout: float = 60
) -> None:
    """Polls until each CRD is Established. Not `kubectl wait`: it fails at once, rather than
    waiting, on a CRD so new that it has no status conditions yet."""

    def established(crd: str) -> bool:
        found = kubectl("get", f"crd/{crd}", "-o", f"jsonpath={ESTABLISHED}")
        return bool(found.stdout.strip() == "True")

    for crd in crds:
        wait_until(functools.partial(established, crd), timeout, f"CRD {crd} established")


@dataclass
class Cluster:
    """kubectl and helm against one cluster."""

    kubeconfig: Path
    bin_dir: Path
    env: dict[str, str]

    def run_kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        done = self.run_kubectl(*args, stdin=stdin, timeout=timeout)
        if check and done.returncode != 0:
            raise StepError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def helm(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [str(self.bin_dir / "helm"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if done.returncode != 0:
            raise StepError(f"helm {' '.join(args[:2])} failed: {done.stderr or done.stdout}")
        return done.stdout

    def apply(self, *documents: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(out) if out else None

    def items(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args))["items"])


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


@dataclass
class Product:
    """One install of the operator (a Helm release) watching one namespace."""

    cluster: Cluster
    namespace: str
    system_namespace: str
    release: str
    volumes_root: Path

    # --- installing ---------------------------------------------------------------------

    def install_operator(self, *extra: str) -> None:
        """The chart, with the built operator image, as a pod under the chart's account."""
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        wait_established(self.cluster.run_kubectl, "shoppingguides.shoppingguide.io")
        self.cluster.apply(namespace_manifest(self.namespace))
        repository, tag = OPERATOR_IMAGE.rsplit(":", 1)
        self.cluster.helm(
            "upgrade", "--install", self.release, str(CHART),
            "--namespace", self.system_namespace, "--create-namespace",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never",
            "--set", f"watchNamespaces={{{self.namespace}}}",
            # The test's Prometheus runs on the host, outside the in-cluster default.
            "--set-json", f'prometheus.allowedAddresses=["http://{HOST_IP}:*"]',
            "--wait", "--timeout", "180s", *extra,
        )  # fmt: skip

    def operator_pods(self) -> list[dict[str, Any]]:
        return self.cluster.items(
            "pods", self.system_namespace, f"app.kubernetes.io/instance={self.release}"
        )

    def volumes(self) -> None:
        """The sample data (read-only) and a model store, as statically bound hostPath
        volumes: the local cluster has no provisioner."""
        data = self.volumes_root / f"{self.namespace}-events"
        models = self.volumes_root / f"{self.namespace}-models"
        data.mkdir(parents=True, exist_ok=True)
        models.mkdir(parents=True, exist_ok=True)
        target = data / SAMPLE_DATA.name
        if not target.exists():
            shutil.copyfile(SAMPLE_DATA, target)
        target.chmod(0o644)
        for path in (self.volumes_root, data):
            path.chmod(0o755)
        os.chown(models, IMAGE_UID, IMAGE_UID)
        for claim, path, mode in (
            ("events", data, "ReadOnlyMany"),
            ("models", models, "ReadWriteMany"),
        ):
            volume = f"{self.namespace}-{claim}"
            self.cluster.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {
                        "name": volume,
                        "labels": {"shoppingguide.io/e2e": self.namespace},
                    },
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": [mode],
                        "storageClassName": "",
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": str(path), "type": "Directory"},
                        "claimRef": {"namespace": self.namespace, "name": claim},
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": self.namespace},
                    "spec": {
                        "accessModes": [mode],
                        "storageClassName": "",
                        "volumeName": volume,
                        "resources": {"requests": {"storage": "10Gi"}},
                    },
                },
            )

    def sample_guide(self, name: str = "storefront", **spec: Any) -> dict[str, Any]:
        """examples/online-retail.yaml, in this namespace, with the built recommender image."""
        guide: dict[str, Any] = yaml.safe_load(
            (REPO / "examples" / "online-retail.yaml").read_text()
        )
        guide["metadata"] = {"name": name, "namespace": self.namespace}
        guide["spec"]["image"] = RECOMMENDER_IMAGE
        guide["spec"]["imagePullPolicy"] = "Never"
        guide["spec"].update(spec)
        return guide

    # --- reading ------------------------------------------------------------------------

    def status(self, name: str = "storefront") -> dict[str, Any]:
        guide = self.cluster.get("shoppingguide", name, self.namespace)
        return dict((guide or {}).get("status") or {})

    def serving_pods(self, name: str = "storefront") -> list[dict[str, Any]]:
        return self.cluster.items(
            "pods", self.namespace, f"{SERVING_SELECTOR},app.kubernetes.io/instance={name}"
        )

    def wait_serving(
        self,
        name: str = "storefront",
        timeout: float = 900,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Until the guide is Ready with a stable model and a Ready serving pod; returns status."""

        def probe() -> dict[str, Any] | None:
            stuck = self.stuck_pods()
            if stuck:
                raise StepError(f"pods cannot run: {', '.join(stuck)}")
            status = self.status(name)
            if progress is not None:
                run = status.get("lastTrainingRun") or {}
                detail = status.get("message") or run.get("job") or "waiting for the operator"
                progress(f"{status.get('phase', 'Pending')}: {detail}")
            serving = status.get("phase") == "Ready" and (status.get("stable") or {}).get("version")
            if serving and any(ready(p) for p in self.serving_pods(name)):
                return status
            return None

        try:
            return wait_until(probe, timeout, f"guide {name} serving", interval=2)
        except StepError as exc:
            raise StepError(f"{exc}\n{self.diagnose(name)}") from None

    def stuck_pods(self) -> list[str]:
        """Pods of the operator or the guides that will not come up without a change: a
        crash loop, an image the node lacks, a bad container config."""
        found = []
        for namespace in (self.system_namespace, self.namespace):
            for pod in self.cluster.items("pods", namespace):
                for container in pod.get("status", {}).get("containerStatuses", []):
                    reason = (container.get("state", {}).get("waiting") or {}).get("reason", "")
                    looping = reason == "CrashLoopBackOff" and container["restartCount"] >= 3
                    if looping or reason in UNRECOVERABLE:
                        found.append(f"{namespace}/{pod['metadata']['name']} ({reason})")
        return found

    def service_url(self, name: str = "storefront") -> str:
        service = self.cluster.get("service", name, self.namespace)
        assert service is not None, f"no Service {name}"
        port = service["spec"]["ports"][0]["port"]
        return f"http://{service['spec']['clusterIP']}:{port}"

    def dns_url(self, name: str = "storefront") -> str:
        service = self.cluster.get("service", name, self.namespace)
        assert service is not None, f"no Service {name}"
        port = service["spec"]["ports"][0]["port"]
        return f"http://{name}.{self.namespace}.svc.cluster.local:{port}"

    def diagnose(self, name: str = "storefront") -> str:
        """What a user would look at: the guide, its pods and the namespace's Events."""
        parts = [
            self.cluster.kubectl(
                "describe", "shoppingguide", name, "-n", self.namespace, check=False
            ),
            self.cluster.kubectl(
                "get", "pods,jobs", "-n", self.namespace, "-o", "wide", check=False
            ),
            self.cluster.kubectl(
                "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
            )[-4000:],
        ]
        for pod in self.operator_pods():
            parts.append(
                self.cluster.kubectl(
                    "logs", pod["metadata"]["name"], "-n", self.system_namespace, "--tail=60",
                    check=False,
                )
            )  # fmt: skip
        return "\n".join(parts)

    # --- shoppers, Prometheus, rollouts ----------------------------------------------------

    def start_shoppers(
        self,
        *args: str,
        name: str = "shoppers",
        guide: str = "storefront",
        files: tuple[Path, ...] = (),
    ) -> None:
        """The shopper simulator (tests/e2e/shopper_pod.py) as a pod of the recommender image,
        sending requests and clicks to the guide's Service by its DNS name."""
        sources = [f"--from-file={path}" for path in (SHOPPERS, *files)]
        self.cluster.kubectl("create", "configmap", name, "-n", self.namespace, *sources)
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {
                    "containers": [
                        {
                            "name": "shoppers",
                            "image": RECOMMENDER_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": [
                                "python",
                                f"/sim/{SHOPPERS.name}",
                                self.dns_url(guide),
                                *args,
                            ],
                            "volumeMounts": [{"name": "sim", "mountPath": "/sim"}],
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                            },
                        }
                    ],
                    "volumes": [{"name": "sim", "configMap": {"name": name}}],
                },
            }
        )

    def stop_shoppers(self, name: str = "shoppers") -> None:
        self.cluster.kubectl(
            "delete", "pod,configmap", name, "-n", self.namespace, "--grace-period=1",
            "--ignore-not-found", check=False,
        )  # fmt: skip

    def shopper_counts(self, name: str = "shoppers") -> dict[str, int]:
        """The shoppers' last report; empty until the pod has written one."""
        done = self.cluster.run_kubectl("logs", name, "-n", self.namespace, "--tail=1")
        logs = done.stdout if done.returncode == 0 else ""
        line = logs.strip().splitlines()[-1] if logs.strip() else "{}"
        counts = json.loads(line)
        counts.pop("time", None)
        return {k: int(v) for k, v in counts.items()}

    def outcome(
        self, version: str, guide: str = "storefront", timeout: float = 240
    ) -> dict[str, Any]:
        """The history entry that ends the canary of `version`."""

        def ended() -> dict[str, Any] | None:
            for entry in self.status(guide).get("history") or []:
                if entry["version"] == version and entry["outcome"] in ("Promoted", "RolledBack"):
                    return dict(entry)
            return None

        return wait_until(ended, timeout, f"the canary of {version} to end", interval=2)

    def canary_version(
        self, known: set[str], guide: str = "storefront", timeout: float = 300
    ) -> str:
        def started() -> str | None:
            version = (self.status(guide).get("canary") or {}).get("version")
            return version if version and version not in known else None

        return wait_until(started, timeout, "a new canary", interval=2)

    def retrain(self, key: str, path: str | None = None, guide: str = "storefront") -> None:
        """Retrain on demand (the annotation), optionally on another events file."""
        if path is not None:
            patch = {"spec": {"data": {"interactions": {"path": path}}}}
            self.cluster.kubectl(
                "patch", "sg", guide, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
            )
        self.cluster.kubectl(
            "annotate", "sg", guide, "-n", self.namespace, "--overwrite",
            f"shoppingguide.io/retrain={key}",
        )  # fmt: skip

    # --- a pod of our image inside the cluster ---------------------------------------------

    def run_in_pod(self, pod: str, script: str, timeout: float = 120) -> str:
        """Runs a Python script in a fresh pod of the recommender image; returns its output."""
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": self.namespace},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "client",
                            "image": RECOMMENDER_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-c", script],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "securityContext": {"runAsNonRoot": True},
                },
            }
        )

        def done() -> str | None:
            got = self.cluster.get("pod", pod, self.namespace) or {}
            phase = got.get("status", {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_until(done, timeout, f"pod {pod} to finish")
        logs = self.cluster.kubectl("logs", pod, "-n", self.namespace)
        if phase != "Succeeded":
            raise StepError(f"pod {pod} failed:\n{logs}")
        return logs


def namespace_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@dataclass
class Prometheus:
    """Prometheus on the host, discovering the guide's serving pods by the API."""

    root: Path
    kubeconfig: Path
    namespace: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"http://{HOST_IP}:{self.port}"

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, binary: str) -> None:
        config = self.root / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "shopping-guide",
                            "kubernetes_sd_configs": [
                                {
                                    "role": "pod",
                                    "kubeconfig_file": str(self.kubeconfig),
                                    "namespaces": {"names": [self.namespace]},
                                    "selectors": [
                                        {
                                            "role": "pod",
                                            "label": "app.kubernetes.io/component=serving",
                                        }
                                    ],
                                }
                            ],
                            "relabel_configs": [
                                {
                                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                                    "regex": "metrics",
                                    "action": "keep",
                                },
                                {
                                    "source_labels": ["__meta_kubernetes_namespace"],
                                    "target_label": "namespace",
                                },
                                {
                                    "source_labels": ["__meta_kubernetes_pod_name"],
                                    "target_label": "pod",
                                },
                            ],
                        }
                    ],
                }
            )
        )
        with (self.root / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address={HOST_IP}:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: http_status(self.address + "/-/ready") == 200, 60, "Prometheus ready")

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.address + "/api/v1/targets", timeout=5) as response:
            return list(json.loads(response.read())["data"]["activeTargets"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


NON_PRODUCTS = {
    "POST",
    "D",
    "M",
    "DOT",
    "C2",
    "CRUK",
    "BANK CHARGES",
    "PADS",
    "AMAZONFEE",
    "S",
    "B",
    "m",
}


def write_story_data(
    folder: Path, cutoff: str = "2011-11-01", shoppers: int = 1000
) -> dict[str, Path]:
    """The Online Retail sample cut at `cutoff`: the events before it (what a guide trains on),
    the same events with every line's product replaced by a random one (a broken export: a
    model trained on it recommends at random), and, for the shopper simulator, what each of
    `shoppers` customers bought from `cutoff` on: a shopper clicks what they would buy."""
    import csv
    import io
    import lzma
    import random

    before = folder / f"online_retail_before_{cutoff}.csv"
    broken = folder / f"online_retail_before_{cutoff}_shuffled.csv"
    tastes_file = folder / "tastes.json"
    if before.exists() and broken.exists() and tastes_file.exists():
        return {"before": before, "shuffled": broken, "tastes": tastes_file}
    with lzma.open(SAMPLE_DATA, "rt", encoding="utf-8", newline="") as source:
        reader = csv.reader(source)
        header = next(reader)
        rows = list(reader)
    col = {name: i for i, name in enumerate(header)}
    early = [r for r in rows if r[col["InvoiceDate"]] < cutoff]
    later: dict[str, set[str]] = {}
    known = {r[col["CustomerID"]] for r in early}
    for r in rows:
        customer, item = r[col["CustomerID"]], r[col["StockCode"]]
        bought = int(r[col["Quantity"]]) > 0 and not r[col["InvoiceNo"]].startswith("C")
        product = item not in NON_PRODUCTS
        if (
            r[col["InvoiceDate"]] >= cutoff
            and customer in known
            and customer
            and bought
            and product
        ):
            later.setdefault(customer, set()).add(item)
    # Shoppers, not wholesalers: an account that buys hundreds of products would click almost
    # anything, and clicks would no longer tell a good model from a random one.
    typical = sorted(c for c in later if 5 <= len(later[c]) <= 40)[:shoppers]
    tastes_file.write_text(json.dumps({c: sorted(later[c]) for c in typical}))

    def write(path: Path, data: list[list[str]]) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(data)
        path.write_text(out.getvalue(), encoding="utf-8")

    write(before, early)
    # Every line gets a product drawn uniformly from the catalogue: shuffling lines would keep
    # each product's popularity, and popularity alone earns clicks.
    product_columns = [col["StockCode"], col["Description"], col["UnitPrice"]]
    catalogue = sorted({tuple(r[i] for i in product_columns) for r in early})
    rng = random.Random(7)
    products = [rng.choice(catalogue) for _ in early]
    shuffled = []
    for row, p in zip(early, products, strict=True):
        changed = list(row)
        for i, value in zip(product_columns, p, strict=True):
            changed[i] = value
        shuffled.append(changed)
    write(broken, shuffled)
    for path in (before, broken, tastes_file):
        path.chmod(0o644)
    return {"before": before, "shuffled": broken, "tastes": tastes_file}
