"""The Helm chart on the real control plane: rendered objects pass server-side validation, and
an operator holding only the chart's RBAC identity reconciles a ShoppingGuide."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import Kube, bin_dir
from tests.e2e.test_operator import guide_manifest, install_crd

CHART = REPO / "charts" / "shopping-guide"


def helm(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir() / "helm"), "--kubeconfig", str(kube.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        env=kube.env,
        timeout=300,
    )


def test_rendered_chart_passes_server_side_dry_run(kube: Kube, namespace: str) -> None:
    # The peering object's kind must exist before a dry run can validate it.
    kube.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "kopf.dev_peerings.yaml"))
    kube.wait_established("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
    rendered = helm(
        kube,
        "template",
        f"dry-{namespace[-6:]}",
        str(CHART),
        "--namespace",
        namespace,
        "--include-crds",
        "--set",
        "metrics.serviceMonitor.enabled=false",
    )
    assert rendered.returncode == 0, rendered.stderr
    applied = kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout)
    kinds = applied.stdout
    for kind in (
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "deployment",
        "customresourcedefinition",
    ):
        assert kind in kinds, kinds


@pytest.fixture
def release(kube: Kube, namespace: str) -> Iterator[tuple[str, str]]:
    install_crd(kube)
    kube.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "kopf.dev_peerings.yaml"))
    name = f"sg{uuid.uuid4().hex[:6]}"
    done = helm(
        kube,
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--skip-crds",
    )
    assert done.returncode == 0, done.stderr
    try:
        yield name, f"{name}-operator"
    finally:
        helm(kube, "uninstall", name, "--namespace", namespace)


def token_kubeconfig(kube: Kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount, nothing more."""
    token = kube.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": cluster["name"], "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_with_the_charts_identity_reconciles(
    kube: Kube, namespace: str, release: tuple[str, str], tmp_path: Path
) -> None:
    _, account = release
    kubeconfig = token_kubeconfig(kube, namespace, account, tmp_path / "kubeconfig")
    # The identity may read guides here, and nothing in other namespaces' secrets.
    can = kube.kubectl(
        "auth",
        "can-i",
        "patch",
        "shoppingguides/status",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{account}",
        check=False,
    )
    assert can.stdout.strip() == "yes"
    cannot = kube.kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        "kube-system",
        f"--as=system:serviceaccount:{namespace}:{account}",
        check=False,
    )
    assert cannot.stdout.strip() == "no"

    log = (tmp_path / "operator.log").open("wb")
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopping_guide_operator",
            "--standalone",
            "--namespace",
            namespace,
            "--resync",
            "5",
        ],
        env={**kube.env, "KUBECONFIG": str(kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        body = guide_manifest(namespace)
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))

        def trained() -> bool:
            jobs = kube.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout
            status = kube.kubectl(
                "get", "sg", "storefront", "-n", namespace, "-o", "jsonpath={.status.conditions}"
            ).stdout
            return bool(json.loads(jobs)["items"]) and "Training" in status

        kube.wait_until(trained, 90, "a training Job and status written by the chart identity")
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()
    assert "Forbidden" not in (tmp_path / "operator.log").read_text()
