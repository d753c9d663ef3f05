"""Operator benchmark on a real control plane: many ShoppingGuides at once; prints JSON.

Uses the cluster $KUBECONFIG points at when it answers, else starts the local one with
hack/cluster.sh in a temporary state directory (and cleans it up). Applies N guides
(BENCH_GUIDES, default 100) in a namespace of its own, runs the operator as a host process and
plays the kubelet for the training pods: they go to a node of the benchmark's own that nothing
drives, and each gets a trainer result in its termination message, as in the end-to-end tests
(kwok would complete a Job's pod at once, with no message). The serving pods run on a kwok
node of the benchmark's own (kwok manages every node annotated kwok.x-k8s.io/node=fake), sized
for them and tainted so that nothing else lands there.

Measures the time until every guide is Ready and the operator's peak resident memory. Then,
at steady state, counts over a window of resync passes the API requests the operator process
itself makes (counted inside it, on both of its HTTP clients, so other clients of a shared
cluster do not blur the numbers): a converged guide should cause no reads and no writes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
RESYNC = 5.0
WINDOW = 30.0
BENCH_LABEL = "shoppingguide.io/bench"
KWOK_TAINT = "kwok.x-k8s.io/node"
UNFINALIZE = '{"metadata":{"finalizers":null}}'

# --- inside the operator process: count every request it makes ------------------------------

_PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([^/?]+)(?:/[^/?]+)?(/[^/?]+)?"
)


def classify(method: str, url: str) -> str:
    """'read|write|watch:resource[/subresource]' of one request."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    match = _PATH.match(parts.path)
    resource = "other"
    if match:
        resource = match.group(1) + (match.group(2) or "")
    if method == "GET":
        kind = "watch" if query.get("watch", ["false"])[0] in ("true", "1") else "read"
    else:
        kind = "write"
    return f"{kind}:{resource}"


def counted_operator() -> None:
    """`python -c '...counted_operator()' ARGS`: the operator, counting its requests into the
    JSON file $BENCH_COUNTS every half second (the API client's urllib3 and kopf's aiohttp)."""
    import aiohttp
    import urllib3

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def count(method: str, url: str) -> None:
        with lock:
            counts[classify(method.upper(), url)] += 1

    urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def counting_urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        count(method, url)
        return urlopen(self, method, url, *args, **kwargs)

    urllib3.connectionpool.HTTPConnectionPool.urlopen = counting_urlopen  # type: ignore[method-assign]
    request = aiohttp.ClientSession._request

    async def counting_request(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        params = kwargs.get("params") or {}
        text = str(url)
        if params:
            text += ("&" if "?" in text else "?") + "&".join(f"{k}={v}" for k, v in params.items())
        count(method, text)
        return await request(self, method, url, *args, **kwargs)

    aiohttp.ClientSession._request = counting_request  # type: ignore[method-assign,assignment]
    target = Path(os.environ["BENCH_COUNTS"])

    def dump() -> None:
        while True:
            with lock:
                text = json.dumps(dict(counts))
            target.with_suffix(".tmp").write_text(text)
            target.with_suffix(".tmp").replace(target)
            time.sleep(0.5)

    threading.Thread(target=dump, daemon=True).start()
    from shopping_guide_operator.__main__ import main

    main(sys.argv[1:])


# --- the benchmark ----------------------------------------------------------------------------


@dataclass
class Cluster:
    kubeconfig: str
    kubectl: list[str]
    core: Any


def _answers(kubeconfig: str) -> bool:
    try:
        load: Any = config.new_client_from_config
        client.VersionApi(load(config_file=kubeconfig)).get_code(_request_timeout=10)
    except Exception:
        return False
    return True


@contextmanager
def cluster() -> Iterator[Cluster]:
    """$KUBECONFIG's cluster when it answers (left running), else one started for the run."""
    external = os.environ.get("KUBECONFIG")
    state: Path | None = None
    env = dict(os.environ)
    if external and _answers(external):
        kubeconfig = external
        sys.path.insert(0, str(REPO))
        from tests.e2e.conftest import bin_dir

        kubectl = bin_dir() / "kubectl"
        kubectl_path = str(kubectl) if kubectl.exists() else shutil.which("kubectl") or "kubectl"
    else:
        state = Path(tempfile.mkdtemp(prefix="sg-bench-cluster-"))
        env["SHOPPING_GUIDE_CLUSTER_DIR"] = str(state)
        script = str(REPO / "hack" / "cluster.sh")
        subprocess.run([script, "up"], env=env, check=True, capture_output=True)
        kubeconfig = str(state / "kubeconfig")
        kubectl_path = str(state / "bin" / "kubectl")
    try:
        load: Any = config.new_client_from_config
        core: Any = client.CoreV1Api(load(config_file=kubeconfig))
        yield Cluster(kubeconfig, [kubectl_path, "--kubeconfig", kubeconfig], core)
    finally:
        if state is not None:
            subprocess.run(
                [str(REPO / "hack" / "cluster.sh"), "clean"],
                env=env,
                capture_output=True,
                check=False,
            )


def guide(namespace: str, name: str, run: str) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.e2e.test_operator import TRAIN_LABEL, guide_manifest

    body = guide_manifest(namespace, name)
    training = body["spec"]["training"]
    training["nodeSelector"] = {TRAIN_LABEL: run}
    training["tolerations"] = [
        {"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists"},
    ]
    serving = body["spec"]["serving"]
    serving["nodeSelector"] = {"type": "kwok", BENCH_LABEL: run}
    serving["tolerations"] = [
        {"key": KWOK_TAINT, "operator": "Exists", "effect": "NoSchedule"},
        {"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"},
    ]
    serving["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reconciles(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("shopping_guide_operator_reconciles_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def operator_counts(path: Path) -> Counter[str]:
    try:
        return Counter(json.loads(path.read_text()))
    except (OSError, ValueError):
        return Counter()


def setup(c: Cluster, namespace: str, run: str, guides: int) -> list[str]:
    """Namespace, volumes, a node for training pods, a kwok node for serving ones; returns the
    names of the cluster-scoped objects made (for the cleanup)."""
    sys.path.insert(0, str(REPO))
    from tests.e2e.test_operator import TRAIN_LABEL

    subprocess.run(
        [
            *c.kubectl,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *c.kubectl,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/shoppingguides.shoppingguide.io",
        ],
        check=True,
        capture_output=True,
    )
    c.core.create_namespace({"metadata": {"name": namespace}})
    pods = str(guides * 3 + 10)
    train_node, serve_node = f"sg-bench-train-{run}", f"sg-bench-serve-{run}"
    c.core.create_node(
        {
            "metadata": {"name": train_node, "labels": {TRAIN_LABEL: run}},
            "spec": {"taints": [{"key": BENCH_LABEL, "value": run, "effect": "NoSchedule"}]},
        }
    )
    capacity = {"cpu": "10000", "memory": "100000Gi", "pods": pods}
    c.core.patch_node_status(
        train_node, {"status": {"capacity": capacity, "allocatable": capacity}}
    )
    c.core.create_node(
        {
            "metadata": {
                "name": serve_node,
                "annotations": {KWOK_TAINT: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", BENCH_LABEL: run, "kubernetes.io/hostname": serve_node},
            },
            "spec": {
                "taints": [
                    {"key": KWOK_TAINT, "value": "fake", "effect": "NoSchedule"},
                    {"key": BENCH_LABEL, "value": run, "effect": "NoSchedule"},
                ]
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }
    )
    for claim in ("events", "models"):
        c.core.create_persistent_volume(
            {
                "metadata": {"name": f"{namespace}-{claim}", "labels": {BENCH_LABEL: run}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/sg-bench-{claim}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        c.core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": f"{namespace}-{claim}",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    return [train_node, serve_node]


def heartbeat(api: Any, node: str, stop: threading.Event) -> None:
    """Renew the node's Lease every few seconds, as a kubelet does. kwok patches its nodes'
    status only about once a minute, which is longer than the node controller's grace period:
    without a lease the node goes NotReady now and then, and its pods with it."""
    leases: Any = client.CoordinationV1Api(api)
    body: dict[str, Any] = {
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40},
    }
    while not stop.is_set():
        # A MicroTime: the client writes a datetime as isoformat, which must have microseconds.
        now = datetime.datetime.now(datetime.UTC)
        body["spec"]["renewTime"] = now.replace(microsecond=now.microsecond or 1)
        try:
            try:
                leases.patch_namespaced_lease(node, "kube-node-lease", {"spec": body["spec"]})
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                leases.create_namespaced_lease("kube-node-lease", body)
        except Exception as exc:
            print(f"lease of {node}: {exc}", file=sys.stderr)
        stop.wait(5)


def keep_serving_pods_ready(c: Cluster, namespace: str) -> int:
    """kwok's nodes miss a heartbeat now and then; the node controller then marks their pods
    unready, and kwok (which readies a pod once, when it starts it) never reports them ready
    again. Report them ready, as a kubelet would; returns how many it touched."""
    pods = c.core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=serving"
    )
    touched = 0
    for pod in pods.items:
        if pod.status.phase != "Running" or pod.metadata.deletion_timestamp is not None:
            continue
        conditions = {cond.type: cond.status for cond in pod.status.conditions or []}
        if conditions.get("Ready") == "True":
            continue
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("Ready", "ContainersReady")
        ]
        try:
            c.core.patch_namespaced_pod_status(
                pod.metadata.name, namespace, {"status": {"conditions": ready}}
            )
            touched += 1
        except client.ApiException:
            pass
    return touched


def guides_json(c: Cluster, namespace: str) -> list[dict[str, Any]]:
    listed = json.loads(
        subprocess.run(
            [*c.kubectl, "get", "sg", "-n", namespace, "-o", "json"],
            capture_output=True,
            check=True,
        ).stdout
    )
    items: list[dict[str, Any]] = listed["items"]
    return items


def main() -> int:
    guides = int(os.environ.get("BENCH_GUIDES", "100"))
    window = float(os.environ.get("BENCH_WINDOW", WINDOW))
    run = uuid.uuid4().hex[:6]
    namespace = f"bench-{run}"
    work = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    with cluster() as c:
        operator: subprocess.Popen[bytes] | None = None
        nodes: list[str] = []
        beating = threading.Event()
        try:
            nodes = setup(c, namespace, run, guides)
            threading.Thread(
                target=heartbeat, args=(c.core.api_client, nodes[1], beating), daemon=True
            ).start()
            sys.path.insert(0, str(REPO))
            from tests.e2e.test_operator import finished_pod_status, result_document

            counts_file = work / "counts.json"
            metrics_port = _free_port()
            log = (work / "operator.log").open("wb")
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from benchmarks.operator_scale import counted_operator; counted_operator()",
                    "--standalone",
                    "--namespace",
                    namespace,
                    "--resync",
                    str(RESYNC),
                    "--log-level",
                    "WARNING",
                    "--metrics-port",
                    str(metrics_port),
                ],
                env={
                    **os.environ,
                    "KUBECONFIG": c.kubeconfig,
                    "BENCH_COUNTS": str(counts_file),
                    # This checkout's operator, unless $PYTHONPATH names another one.
                    "PYTHONPATH": os.pathsep.join(
                        [
                            str(REPO),
                            *filter(None, [os.environ.get("PYTHONPATH")]),
                            str(REPO / "operator"),
                        ]
                    ),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            names = [f"sg-{i:04d}" for i in range(guides)]
            manifests = "\n---\n".join(yaml.safe_dump(guide(namespace, n, run)) for n in names)
            started = time.monotonic()
            subprocess.run(
                [*c.kubectl, "apply", "-f", "-"],
                input=manifests.encode(),
                check=True,
                capture_output=True,
            )
            finished: set[str] = set()
            ready_at = None
            deadline = float(os.environ.get("BENCH_TIMEOUT", "900"))
            while time.monotonic() - started < deadline:
                pods = c.core.list_namespaced_pod(
                    namespace, label_selector="batch.kubernetes.io/job-name"
                )
                for pod in pods.items:
                    if pod.metadata.name in finished or not pod.spec.node_name:
                        continue
                    job = pod.metadata.labels["batch.kubernetes.io/job-name"]
                    message = result_document(f"v1-{job.split('-train-')[0]}", 0.2)
                    c.core.patch_namespaced_pod_status(
                        pod.metadata.name, namespace, {"status": finished_pod_status(message)}
                    )
                    finished.add(pod.metadata.name)
                keep_serving_pods_ready(c, namespace)
                items = guides_json(c, namespace)
                ready = sum(1 for g in items if (g.get("status") or {}).get("phase") == "Ready")
                if ready == guides:
                    ready_at = time.monotonic() - started
                    break
                time.sleep(1)

            # Steady state: the HPA has raised every Deployment to minReplicas (2) and every
            # guide reports it, then two more resync passes.
            def settled() -> bool:
                return all(
                    (g.get("status") or {}).get("readyReplicas") == 2
                    for g in guides_json(c, namespace)
                )

            while not settled() and time.monotonic() - started < deadline:
                keep_serving_pods_ready(c, namespace)
                time.sleep(1)
            settled_at = time.monotonic() - started
            time.sleep(2 * RESYNC)
            before, passes_before = operator_counts(counts_file), reconciles(metrics_port)
            window_started = time.monotonic()
            flapped = 0
            while time.monotonic() - window_started < window:
                flapped += keep_serving_pods_ready(c, namespace)
                time.sleep(1)
            after, passes_after = operator_counts(counts_file), reconciles(metrics_port)
            delta = {k: after[k] - before[k] for k in sorted(after) if after[k] - before[k]}
            passes = passes_after - passes_before
            peak_kib = int(
                Path(f"/proc/{operator.pid}/status").read_text().split("VmHWM:")[1].split()[0]
            )
            writes = sum(v for k, v in delta.items() if k.startswith("write:"))
            reads = sum(v for k, v in delta.items() if k.startswith("read:"))
            watches = sum(v for k, v in delta.items() if k.startswith("watch:"))
            report = {
                "guides": guides,
                "seconds_until_all_ready": None if ready_at is None else round(ready_at, 1),
                "seconds_until_settled": round(settled_at, 1),
                "operator_peak_rss_mb": round(peak_kib / 1024, 1),
                "steady_state": {
                    "window_seconds": window,
                    "resync_seconds": RESYNC,
                    "passes": passes,
                    "passes_expected": guides * window / RESYNC,
                    "reads": reads,
                    "writes": writes,
                    "watch_requests": watches,
                    "reads_per_pass": round(reads / passes, 3) if passes else None,
                    "writes_per_pass": round(writes / passes, 3) if passes else None,
                    "operator_requests_per_second": round((reads + writes + watches) / window, 2),
                    "by_kind_and_resource": delta,
                    # Pods made ready again in the window (a missed kwok heartbeat): each one
                    # is a real change the operator reacts to (Deployment status, guide status).
                    "serving_pods_readied_again": flapped,
                },
            }
            json.dump(report, sys.stdout, indent=2)
            print()
            return 0
        finally:
            beating.set()
            cleanup(c, namespace, run, nodes, operator)
            print(f"operator log: {work / 'operator.log'}", file=sys.stderr)


def cleanup(
    c: Cluster,
    namespace: str,
    run: str,
    nodes: list[str],
    operator: subprocess.Popen[bytes] | None,
) -> None:
    """The guides go while the operator runs (it holds their finalizers); then the rest."""
    kubectl = c.kubectl
    quiet: dict[str, Any] = {"capture_output": True}
    if operator is not None and operator.poll() is None:
        # A while for the operator to let go of them; what is left then loses its finalizer.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [*kubectl, "delete", "sg", "--all", "-n", namespace, "--timeout=120s"],
                timeout=150,
                check=False,
                **quiet,
            )
        operator.terminate()
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)
    left = subprocess.run(
        [*kubectl, "get", "sg", "-n", namespace, "-o", "name"], text=True, check=False, **quiet
    ).stdout.split()
    for name in left:
        subprocess.run(
            [*kubectl, "patch", name, "-n", namespace, "--type=merge", "-p", UNFINALIZE],
            check=False,
            **quiet,
        )
    subprocess.run([*kubectl, "delete", "ns", namespace, "--wait=false"], check=False, **quiet)
    subprocess.run(
        [*kubectl, "delete", "pv", "-l", f"{BENCH_LABEL}={run}", "--wait=false"],
        check=False,
        **quiet,
    )
    for node in nodes:
        subprocess.run([*kubectl, "delete", "node", node, "--wait=false"], check=False, **quiet)
        subprocess.run(
            [*kubectl, "delete", "lease", node, "-n", "kube-node-lease", "--ignore-not-found"],
            check=False,
            **quiet,
        )


if __name__ == "__main__":
    sys.exit(main())
