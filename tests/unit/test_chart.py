"""The Helm chart: one source for CRDs and RBAC, lint-clean, renders what the values say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import required

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "shopping-guide"


def helm() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "build-cluster-binaries.sh"), "--bin-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = Path(out) / "helm"
    if not path.exists():
        required("helm is not built yet (make cluster-binaries)")
    return path


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(helm()), "template", "sg", str(CHART), "--namespace", "sg-system"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("crds/shoppingguide.io_shoppingguides.yaml", "crds/shoppingguide.io_shoppingguides.yaml"),
        ("crds/kopf.dev_peerings.yaml", "crds/kopf.dev_peerings.yaml"),
        ("files/role.yaml", "operator/rbac/role.yaml"),
    ],
)
def test_chart_copies_match_their_source(copy: str, source: str) -> None:
    assert (CHART / copy).read_text() == (REPO / source).read_text(), (
        f"charts/shopping-guide/{copy} drifted from {source}: run `make chart-sync`"
    )


def test_reference_documentation_is_generated_from_the_crd() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "crd_reference.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (REPO / "docs" / "reference.md").read_text() == done.stdout, (
        "docs/reference.md is out of date: run `make chart-sync`"
    )


def test_helm_lint() -> None:
    done = subprocess.run(
        [str(helm()), "lint", str(CHART), "--strict"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rbac_carries_every_rule_of_the_operator_role() -> None:
    source = yaml.safe_load((REPO / "operator/rbac/role.yaml").read_text())["rules"]
    roles = [d for d in render() if d["kind"] == "ClusterRole"]
    rendered = [rule for role in roles for rule in role["rules"]]
    assert sorted(map(str, rendered)) == sorted(map(str, source))
    bindings = {d["kind"] for d in render()}
    assert "ClusterRoleBinding" in bindings and "RoleBinding" not in bindings


def test_watched_namespaces_get_role_bindings_and_operator_args() -> None:
    docs = render("watchNamespaces={shop,outlet}", "replicas=2")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["outlet", "shop"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--namespace=shop" in container["args"] and "--all-namespaces" not in container["args"]
    assert "--peering=sg" in container["args"]
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["outlet", "shop"]
    assert any(d["kind"] == "ClusterKopfPeering" for d in render())
    assert deployment["spec"]["replicas"] == 2
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--metrics-port=9090" in container["args"]


def test_monitoring_objects_are_opt_in() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    kinds = {
        d["kind"]
        for d in render(
            "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
        )
    }
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
