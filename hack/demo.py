"""`make demo`: the local cluster, the operator, and a shopping guide trained on real data.

1. starts (or reuses) the local cluster: control plane and the real node `real-0`, with the
   project's images built and loaded into it (`make images`, `make cluster-up`);
2. installs the CRDs and the operator through the Helm chart, from the built operator image,
   and a Prometheus on the host that finds the serving pods through the Kubernetes API;
3. puts the Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33) on a volume, cut at
   2011-11-01: the guide trains on what came before; a shopper pod plays the customers and
   clicks what each of them really bought afterwards;
4. the first model trains and serves; then the story: a retrained model goes through a canary
   and is promoted on the shoppers' clicks (--skip-canary); a model trained on a broken export
   (products shuffled) is rolled back while the stable model keeps serving (--skip-rollback);
   a rush of shoppers makes the HPA add serving pods, and remove them after (--skip-autoscale);
5. prints `kubectl get sg`, the plugin's status and history, recommendations and a guided
   query.

Skip parts for a quicker run: `make demo DEMO_ARGS="--skip-canary --skip-autoscale"`.
`make demo-down` removes the guide, the operator and Prometheus, and stops the local cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import prometheus_binary  # noqa: E402
from tests.e2e.product import (  # noqa: E402
    SAMPLE_DATA,
    Cluster,
    Product,
    Prometheus,
    StepError,
    ready,
    wait_until,
    write_story_data,
)

STATE = REPO / ".demo"
NAMESPACE = "shop"
SYSTEM = "shopping-guide-system"
RELEASE = "demo"
GUIDE = "storefront"
CUSTOMER = "14911"
TIMEOUT = 900.0
PROMETHEUS_PORT = 29090


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} ... failed:\n{done.stderr or done.stdout}")
    return done.stdout


def cluster() -> Cluster:
    kubeconfig = run(str(REPO / "hack" / "cluster.sh"), "kubeconfig").strip()
    bin_dir = run(str(REPO / "hack" / "build-cluster-binaries.sh"), "--bin-dir").strip()
    return Cluster(Path(kubeconfig), Path(bin_dir), dict(os.environ))


def product(c: Cluster) -> Product:
    return Product(c, NAMESPACE, SYSTEM, RELEASE, STATE / "volumes")


class Progress:
    """One status line: rewritten in place on a terminal, printed when it changes otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.started = time.monotonic()
        self.last = ""

    def __call__(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:5.0f}s  {text[:90]}"
        if self.tty:
            print(f"\r{line:<100}", end="", flush=True)
        elif text != self.last:
            print(line, flush=True)
        self.last = text

    def done(self) -> None:
        if self.tty:
            print(f"\r{'':100}\r", end="")


# The commands the demo ends with, written as README.md shows them: tests/unit/test_readme.py
# accepts a kubectl line of the README when it is one of these.
SHOWN = [
    f"kubectl get sg -n {NAMESPACE} -o wide",
    f"kubectl shoppingguide status {GUIDE} -n {NAMESPACE}",
    f"kubectl shoppingguide history {GUIDE} -n {NAMESPACE}",
]


def shown_argv(line: str, c: Cluster) -> list[str]:
    """A SHOWN line as this cluster runs it: its kubectl binary and kubeconfig."""
    words = shlex.split(line)
    if words[0] != "kubectl":
        raise ValueError(f"not a kubectl command: {line}")
    return [str(c.bin_dir / "kubectl"), *words[1:], "--kubeconfig", str(c.kubeconfig)]


def show(p: Product) -> None:
    print()
    # kubectl finds the plugin, kubectl-shoppingguide, on PATH beside this Python.
    path = f"{Path(sys.executable).parent}:{p.cluster.env.get('PATH', os.environ['PATH'])}"
    for line in SHOWN:
        done = subprocess.run(
            shown_argv(line, p.cluster), capture_output=True, text=True, check=False,
            env={**p.cluster.env, "PATH": path}, timeout=60,
        )  # fmt: skip
        print(f"$ {line}\n{done.stdout}{done.stderr}")
    stable = p.status(GUIDE).get("stable", {})
    print(f"stable model {stable.get('version')}:")
    for name, value in sorted((stable.get("metrics") or {}).items()):
        print(f"  {name:<13} {value:.4f}")
    base = p.service_url(GUIDE)
    with urllib.request.urlopen(f"{base}/v1/recommendations?user_id={CUSTOMER}&k=5") as r:
        body = json.loads(r.read())
    print(f"\nrecommendations for customer {CUSTOMER} ({body['model_version']}), through {base}:")
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
    print(f"\nService: {base}   kubeconfig: {p.cluster.kubeconfig}")
    print(f"try: kubectl describe sg {GUIDE} -n {NAMESPACE}")
    print("Grafana dashboard: dashboards/shopping-guide.json")
    print("stop: make demo-down")


def stop_prometheus() -> None:
    """The demo's Prometheus, by the PID it recorded, while that PID still runs Prometheus."""
    pid_file = STATE / "prometheus.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        if b"prometheus" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
    pid_file.unlink()


def down() -> int:
    stop_prometheus()
    state = subprocess.run(
        [str(REPO / "hack" / "cluster.sh"), "status"], capture_output=True, check=False
    )
    if state.returncode == 0:
        c = cluster()
        c.kubectl("delete", "sg", "--all", "-n", NAMESPACE, "--timeout=60s", check=False)
        c.run_kubectl("--namespace", SYSTEM, "delete", "deploy", "--all", "--timeout=60s")
        subprocess.run(
            [str(c.bin_dir / "helm"), "--kubeconfig", str(c.kubeconfig), "uninstall", RELEASE,
             "-n", SYSTEM], capture_output=True, check=False,
        )  # fmt: skip
        # The volumes are bound to this namespace's claims: a later demo makes them anew.
        c.kubectl("delete", "namespace", NAMESPACE, "--timeout=120s", check=False)
        c.kubectl("delete", "pv", "-l", f"shoppingguide.io/e2e={NAMESPACE}", check=False)
    subprocess.run(["make", "-s", "-C", str(REPO), "cluster-down"], check=False)
    return 0


# The shoppers of the whole story: 4 workers, 5 items a list, half of the clicks bought.
STEADY_SHOPPERS = ("--tastes", "/sim/tastes.json", "--k", "5", "--workers", "4", "--pause", "0.02",
                   "--purchase-share", "0.5")  # fmt: skip


def story_guide(p: Product, files: dict[str, Path], prometheus: Prometheus) -> dict[str, Any]:
    guide = p.sample_guide(GUIDE)
    spec = guide["spec"]
    spec["data"]["interactions"]["path"] = files["before"].name
    spec["data"]["interactions"].pop("format", None)
    # The gate stays open here so that the shoppers, not the offline metric, judge the broken
    # model: that is what the canary is for.
    spec["training"] = {"qualityGate": {"metric": "ndcg@10", "minimum": 0.0, "maxRegression": 1.0}}
    spec["serving"] = {
        # Pods leave 30 s after the load falls (the HPA's default is 5 minutes).
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetCPUUtilizationPercentage": 60,
            "scaleDownStabilizationSeconds": 30,
        },
        "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    }
    spec["rollout"] = {
        "steps": [{"weight": 20, "pause": "20s"}, {"weight": 50, "pause": "20s"}],
        "analysis": {
            "prometheus": {"address": prometheus.address},
            "interval": "10s",
            "failureLimit": 2,
            "minRequests": 40,
            "maxErrorRate": 0.05,
            "minClickThroughRatio": 0.5,
            # The shoppers buy half of what they click: sales are guarded as well.
            "minConversionRatio": 0.5,
            "minStablePurchases": 10,
        },
        "progressDeadline": "5m",
    }
    return guide


def follow_canary(p: Product, known: set[str], progress: Progress) -> dict[str, Any]:
    """Prints each step's weight and each analysis verdict with its numbers; returns the
    history entry that ends the canary."""
    version = p.canary_version(known, GUIDE, timeout=TIMEOUT)
    progress.done()
    print(f"  canary {version} started")
    seen: set[tuple[Any, ...]] = set()
    while True:
        status = p.status(GUIDE)
        for entry in status.get("history") or []:
            if entry["version"] == version and entry["outcome"] in ("Promoted", "RolledBack"):
                print(f"  {entry['outcome']}: {entry.get('reason', '')}")
                return dict(entry)
        canary = status.get("canary") or {}
        step = (canary.get("step"), canary.get("weight"))
        if canary.get("version") == version and ("step", *step) not in seen:
            seen.add(("step", *step))
            print(f"  step {int(step[0] or 0) + 1}: {step[1]}% of shoppers get {version}")
        verdict = canary.get("last_verdict") or {}
        key = ("verdict", verdict.get("at"))
        if verdict and key not in seen:
            seen.add(key)
            values = verdict.get("values") or {}
            numbers = ", ".join(
                f"{k} {v:.3g}" for k, v in sorted(values.items()) if isinstance(v, int | float)
            )
            reasons = "; ".join(verdict.get("reasons") or [])
            print(
                f"    analysis: {verdict.get('result')}  {numbers}"
                + (f"  ({reasons})" if reasons else "")
            )
        time.sleep(2)


def autoscale(p: Product, tastes: Path) -> None:
    def replicas() -> int:
        hpa = p.cluster.get("hpa", GUIDE, NAMESPACE) or {}
        return int(hpa.get("status", {}).get("currentReplicas") or 0)

    # From a quiet guide: the steady shoppers alone may have kept more than one pod busy.
    p.stop_shoppers()
    started = time.monotonic()
    wait_until(lambda: replicas() == 1, 300, "the HPA at one serving pod", interval=3)
    before = replicas()
    print(f"\nthe shoppers paused; the HPA is back at {before} pod after "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
    print("a rush of shoppers (a shopper pod, 12 workers)")
    p.start_shoppers(
        "--tastes",
        "/sim/tastes.json",
        "--k",
        "5",
        "--workers",
        "12",
        "--pause",
        "0",
        name="rush",
        files=(tastes,),
    )
    started = time.monotonic()
    wait_until(lambda: replicas() > before, 300, "the HPA to add serving pods", interval=2)
    print(f"  the HPA scaled to {replicas()} pods after {time.monotonic() - started:.0f}s")
    wait_until(lambda: sum(ready(x) for x in p.serving_pods(GUIDE)) > before, 180, "new pods Ready")
    p.stop_shoppers("rush")
    started = time.monotonic()
    print("  the rush is over")
    wait_until(lambda: replicas() == before, 600, "the HPA to scale back", interval=3)
    print(f"  back to {before} pod(s) after {time.monotonic() - started:.0f}s")
    p.start_shoppers(*STEADY_SHOPPERS, files=(tastes,))
    print("  the steady shoppers are back (the fixed model's canary needs their clicks)")


def main() -> int:
    if "--down" in sys.argv:
        return down()
    if not SAMPLE_DATA.exists():
        raise SystemExit(f"the sample data is missing: {SAMPLE_DATA}")
    skip = {a.removeprefix("--skip-") for a in sys.argv[1:] if a.startswith("--skip-")}
    print("building what is missing and starting the local cluster (the first run builds the")
    print("Kubernetes binaries and the images, about 20 minutes on 2 cores; later runs reuse them)")
    subprocess.run(["make", "-s", "-C", str(REPO), "images", "cluster-up"], check=True)
    c = cluster()
    p = product(c)
    prometheus = Prometheus(STATE / "prometheus", c.kubeconfig, NAMESPACE, PROMETHEUS_PORT)
    progress = Progress()
    started = time.monotonic()
    try:
        progress("installing the operator from its chart and image")
        p.install_operator()
        p.volumes()
        progress("cutting the sample at 2011-11-01")
        files = write_story_data(STATE / "volumes" / f"{NAMESPACE}-events")
        prometheus.root.mkdir(parents=True, exist_ok=True)
        stop_prometheus()
        prometheus.start(prometheus_binary())
        (STATE / "prometheus.pid").write_text(str(prometheus.pid()))
        p.cluster.apply(story_guide(p, files, prometheus))
        print(f"training on Online Retail before 2011-11-01; Prometheus at {prometheus.address}")
        first = p.wait_serving(GUIDE, TIMEOUT, progress)["stable"]["version"]
        progress.done()
        print(f"serving {first}; shoppers start (a pod that asks, clicks and buys via the Service)")
        p.stop_shoppers()
        p.start_shoppers(*STEADY_SHOPPERS, files=(files["tastes"],))
        known = {first}
        if "canary" not in skip:
            print("\n1. retrained on the same events: a canary, judged by clicks and sales")
            p.retrain(f"demo-{int(time.time())}")
            entry = follow_canary(p, known, progress)
            known.add(entry["version"])
        if "rollback" not in skip:
            print("\n2. trained on a broken export (products shuffled): rolled back on its clicks")
            p.retrain(f"demo-broken-{int(time.time())}", files["shuffled"].name)
            entry = follow_canary(p, known, progress)
            known.add(entry["version"])
            counts = p.shopper_counts()
            failed = sum(v for k, v in counts.items() if k.startswith("failed:"))
            served = sum(v for k, v in counts.items() if k.startswith("served:"))
            print(f"  the shoppers got {served} lists and {failed} errors throughout")
            print("  the export is fixed: the guide trains on the good events again")
            p.retrain(f"demo-fixed-{int(time.time())}", files["before"].name)
        if "autoscale" not in skip:
            autoscale(p, files["tastes"])
    except StepError as exc:
        progress.done()
        raise SystemExit(f"\n{exc}") from None
    except KeyboardInterrupt:
        progress.done()
        print("\ninterrupted; `make demo-down` stops everything")
        return 130
    progress.done()
    show(p)
    print(f"the demo took {time.monotonic() - started:.0f}s after the cluster was up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
