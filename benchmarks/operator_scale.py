"""Operator benchmark on the local control plane: many ShoppingGuides at once; prints JSON.

Applies N guides (BENCH_GUIDES, default 100) in one namespace, plays the kubelet for their
training pods (each gets a trainer result in its termination message, as in the end-to-end
tests), and measures the time until every guide is Ready and the operator's peak resident
memory. Then, at steady state, counts the API requests the operator's objects receive over a
window of forced resync passes: a converged guide should cause no writes at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
RESYNC = 5.0
WINDOW = 30.0
OWNED = (
    "shoppingguides",
    "configmaps",
    "services",
    "deployments",
    "jobs",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
)


def guide(name: str) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.e2e.test_operator import guide_manifest

    return guide_manifest(NAMESPACE, name)


def api_counts(kubectl: list[str]) -> Counter[tuple[str, str]]:
    """(verb class, resource) -> requests so far, from the apiserver's own metrics."""
    text = subprocess.run(
        [*kubectl, "get", "--raw", "/metrics"], capture_output=True, text=True, check=True
    ).stdout
    counts: Counter[tuple[str, str]] = Counter()
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.e+]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        resource, sub = labels.get("resource", ""), labels.get("subresource", "")
        if resource not in OWNED or (
            sub and not (resource == "shoppingguides" and sub == "status")
        ):
            continue
        verb = labels.get("verb", "")
        kind = "write" if verb in ("POST", "PUT", "PATCH", "APPLY", "DELETE") else "read"
        if verb == "WATCH":
            continue
        counts[(kind, f"{resource}/{sub}" if sub else resource)] += int(float(match.group(2)))
    return counts


def main() -> int:
    guides = int(os.environ.get("BENCH_GUIDES", "100"))
    state = Path(tempfile.mkdtemp(prefix="sg-bench-cluster-"))
    env = {**os.environ, "SHOPPING_GUIDE_CLUSTER_DIR": str(state)}
    cluster = REPO / "hack" / "cluster.sh"
    subprocess.run([str(cluster), "up"], env=env, check=True, capture_output=True)
    operator: subprocess.Popen[bytes] | None = None
    try:
        kubeconfig = str(state / "kubeconfig")
        load: Any = config.new_client_from_config
        # The client's models are not needed here: plain dicts, untyped.
        core: Any = client.CoreV1Api(load(config_file=kubeconfig))
        kubectl = [str(state / "bin" / "kubectl"), "--kubeconfig", kubeconfig]
        subprocess.run(
            [
                *kubectl,
                "apply",
                "--server-side",
                "-f",
                str(REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *kubectl,
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/shoppingguides.shoppingguide.io",
            ],
            check=True,
            capture_output=True,
        )
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        sys.path.insert(0, str(REPO))
        from tests.e2e.test_operator import (
            TRAIN_LABEL,
            TRAIN_NODE,
            TRAIN_TAINT,
            finished_pod_status,
            result_document,
        )

        core.create_node(
            {
                "metadata": {"name": TRAIN_NODE, "labels": {TRAIN_LABEL: "trainer"}},
                "spec": {"taints": [{"key": TRAIN_TAINT, "value": "true", "effect": "NoSchedule"}]},
            }
        )
        capacity = {"cpu": "1000", "memory": "4000Gi", "pods": "1000"}
        core.patch_node_status(
            TRAIN_NODE, {"status": {"capacity": capacity, "allocatable": capacity}}
        )
        for claim in ("events", "models"):
            core.create_persistent_volume(
                {
                    "metadata": {"name": f"bench-{claim}"},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadWriteMany"],
                        "storageClassName": "",
                        "hostPath": {"path": f"/tmp/sg-bench-{claim}"},
                        "claimRef": {"namespace": NAMESPACE, "name": claim},
                    },
                }
            )
            core.create_namespaced_persistent_volume_claim(
                NAMESPACE,
                {
                    "metadata": {"name": claim},
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "storageClassName": "",
                        "volumeName": f"bench-{claim}",
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )
        log = (state / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shopping_guide_operator",
                "--standalone",
                "--namespace",
                NAMESPACE,
                "--resync",
                str(RESYNC),
                "--log-level",
                "WARNING",
            ],
            env={**os.environ, "KUBECONFIG": kubeconfig},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        names = [f"sg-{i:03d}" for i in range(guides)]
        manifests = "\n---\n".join(yaml.safe_dump(guide(n)) for n in names)
        started = time.monotonic()
        subprocess.run(
            [*kubectl, "apply", "-f", "-"],
            input=manifests.encode(),
            check=True,
            capture_output=True,
        )
        finished: set[str] = set()
        ready_at = None
        while time.monotonic() - started < 900:
            pods = core.list_namespaced_pod(
                NAMESPACE, label_selector="batch.kubernetes.io/job-name"
            )
            for pod in pods.items:
                if pod.metadata.name in finished or not pod.spec.node_name:
                    continue
                owner = pod.metadata.labels["batch.kubernetes.io/job-name"].split("-train-")[0]
                message = result_document(f"v1-{owner}", 0.2)
                core.patch_namespaced_pod_status(
                    pod.metadata.name, NAMESPACE, {"status": finished_pod_status(message)}
                )
                finished.add(pod.metadata.name)
            listed = json.loads(
                subprocess.run(
                    [*kubectl, "get", "sg", "-n", NAMESPACE, "-o", "json"],
                    capture_output=True,
                    check=True,
                ).stdout
            )
            ready = sum(
                1 for g in listed["items"] if (g.get("status") or {}).get("phase") == "Ready"
            )
            if ready == guides:
                ready_at = time.monotonic() - started
                break
            time.sleep(1)

        # Steady state: the HPA has raised every Deployment to minReplicas (2) and every
        # guide reports it, then two more resync passes.
        def settled() -> bool:
            listed = json.loads(
                subprocess.run(
                    [*kubectl, "get", "sg", "-n", NAMESPACE, "-o", "json"],
                    capture_output=True,
                    check=True,
                ).stdout
            )
            return all((g.get("status") or {}).get("readyReplicas") == 2 for g in listed["items"])

        while not settled() and time.monotonic() - started < 900:
            time.sleep(1)
        time.sleep(2 * RESYNC)
        before = api_counts(kubectl)
        time.sleep(WINDOW)
        after = api_counts(kubectl)
        delta = {
            f"{k}:{r}": after[(k, r)] - before[(k, r)]
            for k, r in after
            if after[(k, r)] - before[(k, r)]
        }
        passes = guides * WINDOW / RESYNC
        peak_kib = int(
            Path(f"/proc/{operator.pid}/status").read_text().split("VmHWM:")[1].split()[0]
        )
        writes = sum(v for k, v in delta.items() if k.startswith("write"))
        reads = sum(v for k, v in delta.items() if k.startswith("read"))
        report = {
            "guides": guides,
            "seconds_until_all_ready": None if ready_at is None else round(ready_at, 1),
            "operator_peak_rss_mb": round(peak_kib / 1024, 1),
            "steady_state": {
                "window_seconds": WINDOW,
                "resync_seconds": RESYNC,
                "passes": passes,
                "writes": writes,
                "reads": reads,
                "writes_per_pass": round(writes / passes, 3),
                "reads_per_pass": round(reads / passes, 2),
                "by_verb_and_resource": delta,
            },
        }
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        subprocess.run([str(cluster), "clean"], env=env, capture_output=True, check=False)


if __name__ == "__main__":
    sys.exit(main())
