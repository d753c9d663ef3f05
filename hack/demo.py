"""`make demo`: a local control plane, the operator, and a shopping guide trained on real data.

1. starts (or reuses) the local control plane and the process-backed node `local-0`;
2. installs the CRDs and, through the Helm chart, the operator's ServiceAccount and RBAC;
3. runs the operator as a process that authenticates as that ServiceAccount;
4. puts the Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33) on a hostPath volume
   and applies examples/online-retail.yaml;
5. waits while it trains and serves, then prints `kubectl get sg`, the status, and real
   recommendations and a guided query for a sample customer, with product descriptions.

Ctrl-C while waiting stops what this run started. `make demo-down` stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".demo"
DATASET = REPO / "data" / "online-retail" / "online_retail.csv.xz"
NAMESPACE = "shop"
SYSTEM = "shopping-guide-system"
RELEASE = "demo"
GUIDE = "storefront"
CUSTOMER = "14911"
TIMEOUT = 900.0
SPINNER = "|/-\\"


def run(*args: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, input=stdin, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} ... failed:\n{done.stderr or done.stdout}")
    return done.stdout


def cluster_env() -> dict[str, str]:
    run("make", "-s", "-C", str(REPO), "cluster-up")
    kubeconfig = run(str(REPO / "hack" / "cluster.sh"), "kubeconfig").strip()
    bin_dir = run(str(REPO / "hack" / "build-cluster-binaries.sh"), "--bin-dir").strip()
    return {"KUBECONFIG": kubeconfig, "BIN": bin_dir}


class Demo:
    def __init__(self, env: dict[str, str]) -> None:
        self.kubeconfig = env["KUBECONFIG"]
        self.bin = Path(env["BIN"])
        STATE.mkdir(exist_ok=True)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return run(
            str(self.bin / "kubectl"),
            "--kubeconfig",
            self.kubeconfig,
            *args,
            check=check,
            stdin=stdin,
        )

    def apply(self, document: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(document))

    # Installation ---------------------------------------------------------------------
    def install(self) -> None:
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/shoppingguides.shoppingguide.io",
        )
        for namespace in (SYSTEM, NAMESPACE):
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        # The chart's ServiceAccount and RBAC; the operator itself runs as a process here.
        run(
            str(self.bin / "helm"),
            "--kubeconfig",
            self.kubeconfig,
            "upgrade",
            "--install",
            RELEASE,
            str(REPO / "charts" / "shopping-guide"),
            "--namespace",
            SYSTEM,
            "--skip-crds",
            "--set",
            "replicas=0",
            "--set",
            f"watchNamespaces={{{NAMESPACE}}}",
        )

    def volumes(self) -> None:
        data, models = STATE / "data", STATE / "models"
        data.mkdir(exist_ok=True)
        models.mkdir(exist_ok=True)
        target = data / DATASET.name
        if not target.exists():
            shutil.copy(DATASET, target)
        for claim, path, mode in (
            ("events", data, "ReadOnlyMany"),
            ("models", models, "ReadWriteMany"),
        ):
            volume = f"demo-{NAMESPACE}-{claim}"
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": volume},
                    "spec": {
                        "capacity": {"storage": "10Gi"},
                        "accessModes": [mode],
                        "storageClassName": "",
                        "persistentVolumeReclaimPolicy": "Retain",
                        "hostPath": {"path": str(path), "type": "Directory"},
                        "claimRef": {"namespace": NAMESPACE, "name": claim},
                    },
                }
            )
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": NAMESPACE},
                    "spec": {
                        "accessModes": [mode],
                        "storageClassName": "",
                        "volumeName": volume,
                        "resources": {"requests": {"storage": "10Gi"}},
                    },
                }
            )

    # Processes ------------------------------------------------------------------------
    def _alive(self, name: str) -> bool:
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            return False
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"tests.process_node" in cmdline or b"shopping_guide_operator" in cmdline

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        if self._alive(name):
            return
        log = (STATE / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
        (STATE / f"{name}.pid").write_text(str(process.pid))

    def start_node(self) -> None:
        self._start(
            "node",
            [
                "tests.process_node",
                "--kubeconfig",
                self.kubeconfig,
                "--node",
                "local-0",
                "--state-dir",
                str(STATE / "node"),
            ],
            {},
        )

    def start_operator(self) -> None:
        account = f"{RELEASE}-operator"
        token = self.kubectl("create", "token", account, "-n", SYSTEM, "--duration", "24h")
        admin = json.loads(self.kubectl("config", "view", "--raw", "-o", "json"))
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": account, "user": {"token": token.strip()}}],
            "contexts": [
                {"name": account, "context": {"cluster": cluster["name"], "user": account}}
            ],
            "current-context": account,
        }
        path = STATE / "operator.kubeconfig"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        self._start(
            "operator",
            ["shopping_guide_operator", "--standalone", "--namespace", NAMESPACE, "--resync", "5"],
            {"KUBECONFIG": str(path)},
        )

    def stop(self) -> None:
        for name in ("operator", "node"):
            if self._alive(name):
                pid = int((STATE / f"{name}.pid").read_text())
                os.killpg(pid, signal.SIGTERM)
        if (STATE / "node").exists():
            run(
                sys.executable,
                "-m",
                "tests.process_node",
                "--state-dir",
                str(STATE / "node"),
                "--stop-all",
                check=False,
            )

    # Waiting and showing ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out = self.kubectl("get", "sg", GUIDE, "-n", NAMESPACE, "-o", "json", check=False)
        return dict(json.loads(out).get("status") or {}) if out else {}

    def serving_pod_ip(self) -> str | None:
        out = self.kubectl(
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=serving",
            "-o",
            "json",
        )
        for pod in json.loads(out)["items"]:
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            if ready and pod["status"].get("podIP"):
                return str(pod["status"]["podIP"])
        return None

    def wait(self) -> str:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < TIMEOUT:
            status = self.status()
            phase = status.get("phase", "Pending")
            ip = self.serving_pod_ip() if phase == "Ready" else None
            if ip:
                print(f"\r{'':100}\r", end="")
                return ip
            run_info = status.get("lastTrainingRun") or {}
            detail = status.get("message") or run_info.get("job") or "waiting for the operator"
            elapsed = time.monotonic() - started
            print(
                f"\r{SPINNER[tick % 4]} {elapsed:5.0f}s  {phase:<11} {detail[:70]:<70}",
                end="",
                flush=True,
            )
            tick += 1
            time.sleep(1)
        raise SystemExit(f"\nnot ready after {TIMEOUT:.0f}s; see {STATE}/operator.log")

    def show(self, ip: str) -> None:
        print(self.kubectl("get", "sg", "-n", NAMESPACE, "-o", "wide"))
        status = self.status()
        stable = status.get("stable", {})
        print(f"stable model {stable.get('version')}:")
        for name, value in sorted((stable.get("metrics") or {}).items()):
            print(f"  {name:<13} {value:.4f}")
        base = "http://" + ip + ":8080"
        with urllib.request.urlopen(f"{base}/v1/recommendations?user_id={CUSTOMER}&k=5") as r:
            body = json.loads(r.read())
        print(f"\nrecommendations for customer {CUSTOMER} ({body['model_version']}):")
        for item in body["items"]:
            print(f"  {item['item_id']:<8} {item.get('title', ''):<40} {item['score']:.3f}")
        query = json.dumps({"query": "christmas lights under 5", "user_id": CUSTOMER, "k": 5})
        request = urllib.request.Request(f"{base}/v1/guide", data=query.encode(), method="POST")
        with urllib.request.urlopen(request) as r:
            guide = json.loads(r.read())
        print(f'\nguided query "christmas lights under 5" ({", ".join(guide["constraints"])}):')
        for item in guide["items"]:
            because = item.get("because_you_bought")
            note = f"  (you bought: {because})" if because else ""
            print(f"  {item['item_id']:<8} {item['title']:<40} £{item.get('price', 0):.2f}{note}")
        print(f"\nserving pod: {base}   kubeconfig: {self.kubeconfig}")
        print("try: kubectl describe sg storefront -n shop    stop: make demo-down")


def main() -> int:
    if "--down" in sys.argv:
        demo = Demo(cluster_env())
        demo.stop()
        run("make", "-s", "-C", str(REPO), "cluster-down", check=False)
        return 0
    if not DATASET.exists():
        raise SystemExit(f"the sample data is missing: {DATASET}")
    print("starting the local control plane (the first run builds it, then it is cached) ...")
    demo = Demo(cluster_env())
    try:
        demo.install()
        demo.volumes()
        demo.start_node()
        demo.start_operator()
        demo.apply(
            __import__("yaml").safe_load((REPO / "examples" / "online-retail.yaml").read_text())
        )
        print("training on Online Retail and serving through the operator's own pods:")
        ip = demo.wait()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the operator, the node and its pods")
        demo.stop()
        return 130
    demo.show(ip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
