"""`make demo`: the local cluster, the operator, and a shopping guide trained on real data.

1. starts (or reuses) the local cluster: control plane and the real node `real-0`, with the
   project's images built and loaded into it (`make images`, `make cluster-up`);
2. installs the CRDs and the operator through the Helm chart, from the built operator image;
3. puts the Online Retail sample (UCI, CC BY 4.0, doi:10.24432/C5BW33) on a hostPath volume and
   applies examples/online-retail.yaml with the built recommender image;
4. waits while the operator's Job trains it and its Deployment serves it, then prints
   `kubectl get sg`, the model's metrics, recommendations for a sample customer and a guided
   query, fetched through the guide's Service.

`make demo-down` removes the guide and the operator, and stops the local cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.product import SAMPLE_DATA, Cluster, Product, StepError  # noqa: E402

STATE = REPO / ".demo"
NAMESPACE = "shop"
SYSTEM = "shopping-guide-system"
RELEASE = "demo"
GUIDE = "storefront"
CUSTOMER = "14911"
TIMEOUT = 900.0


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


def show(p: Product) -> None:
    print(p.cluster.kubectl("get", "sg", "-n", NAMESPACE, "-o", "wide"))
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


def down() -> int:
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
    subprocess.run(["make", "-s", "-C", str(REPO), "cluster-down"], check=False)
    return 0


def main() -> int:
    if "--down" in sys.argv:
        return down()
    if not SAMPLE_DATA.exists():
        raise SystemExit(f"the sample data is missing: {SAMPLE_DATA}")
    print("building what is missing and starting the local cluster (the first run builds the")
    print("Kubernetes binaries and the images, about 20 minutes on 2 cores; later runs reuse them)")
    subprocess.run(["make", "-s", "-C", str(REPO), "images", "cluster-up"], check=True)
    p = product(cluster())
    progress = Progress()
    try:
        progress("installing the operator from its chart and image")
        p.install_operator()
        p.volumes()
        p.cluster.apply(p.sample_guide(GUIDE))
        print("training on Online Retail and serving through the operator's own pods:")
        p.wait_serving(GUIDE, TIMEOUT, progress)
    except StepError as exc:
        progress.done()
        raise SystemExit(f"\n{exc}") from None
    except KeyboardInterrupt:
        progress.done()
        print("\ninterrupted; `make demo-down` stops everything")
        return 130
    progress.done()
    show(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
