"""The built operator image: its modules import without the recommender's libraries, it
starts, and against a real API server it reports healthy and reconciles a ShoppingGuide, as
its non-root user on a read-only root filesystem.

Without an API server the operator cannot start (its startup handler loads the kubeconfig),
so the live test uses the e2e suite's cluster (tests/e2e/conftest.py: $KUBECONFIG when it
answers, else the local control plane of hack/cluster.sh) and is marked e2e as well.
"""

from __future__ import annotations

import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Kube
from tests.images.conftest import (
    REPO,
    Mount,
    Podman,
    check_ca_in_no_layer,
    check_metadata,
    check_no_build_tools,
    free_port,
    http_get,
    images_sh,
)
from tests.images.test_recommender_image import IMPORT_ALL, source_modules

PACKAGES = ("shopping_guide_operator", "shopping_guide_contracts")
LIBRARIES = ("kopf", "kubernetes", "kubernetes.client", "prometheus_client", "yaml", "aiohttp")
# The operator meets the workload through the contracts package only.
ABSENT = ("numpy", "scipy", "implicit", "pyarrow", "faiss")
CRD = REPO / "crds" / "shoppingguide.io_shoppingguides.yaml"


def test_metadata_user_and_size(podman: Podman, operator_image: str) -> None:
    check_metadata(
        podman, operator_image, "shopping-guide-operator", "shopping-guide-operator", 250_000_000
    )


def test_no_compilers_installers_or_build_secrets(podman: Podman, operator_image: str) -> None:
    check_no_build_tools(podman, operator_image)


def test_every_module_imports_and_no_recommender_library(
    podman: Podman, operator_image: str
) -> None:
    found = podman.python(operator_image, IMPORT_ALL, *PACKAGES, "--", *LIBRARIES, *ABSENT)
    assert set(found["failed"]) == set(ABSENT), found["failed"]
    expected = set(LIBRARIES)
    for package in PACKAGES:
        root = REPO / ("operator" if package == "shopping_guide_operator" else "recommender_image")
        expected |= source_modules(package, root)
    assert expected <= set(found["imported"]), expected - set(found["imported"])


def test_command_line_starts(podman: Podman, operator_image: str) -> None:
    done = podman.run(operator_image, "--help")
    assert "--liveness" in done.stdout and "--standalone" in done.stdout


@pytest.fixture
def watched(kube: Kube) -> Iterator[str]:
    """A namespace of its own, with the CRD installed, for one operator to watch."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kube.wait_established("shoppingguides.shoppingguide.io")
    name = f"images-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.e2e
def test_reports_healthy_and_reconciles(
    service: Any, operator_image: str, kube: Kube, watched: str, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kube.kubeconfig.read_text())
    kubeconfig.chmod(0o644)
    liveness, metrics = free_port(), free_port()
    operator = service(
        operator_image,
        "--standalone",
        "--namespace", watched,
        "--liveness", f"http://127.0.0.1:{liveness}/healthz",
        "--metrics-port", str(metrics),
        "--resync", "5",
        mounts=[Mount(kubeconfig, "/etc/shopping-guide/kubeconfig")],
        environment={"KUBECONFIG": "/etc/shopping-guide/kubeconfig"},
        # The client writes a kubeconfig's embedded certificates to temporary files; the
        # chart's Deployment mounts an emptyDir there too.
        tmpfs=["/tmp"],
    )  # fmt: skip
    operator.wait_for(f"http://127.0.0.1:{liveness}/healthz", timeout=90)

    guide = {
        "apiVersion": "shoppingguide.io/v1alpha1",
        "kind": "ShoppingGuide",
        "metadata": {"name": "storefront", "namespace": watched},
        "spec": {
            "image": "localhost/shopping-guide/recommender:0.1.0",
            "data": {
                "interactions": {"persistentVolumeClaim": {"claimName": "events"}, "path": "e.csv"}
            },
            "modelStore": {"persistentVolumeClaim": {"claimName": "models"}},
        },
    }
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(guide))

    def observed() -> bool:
        out = kube.kubectl("get", "shoppingguide", "storefront", "-n", watched, "-o", "json")
        status = json.loads(out.stdout).get("status", {})
        return bool(status.get("observedGeneration"))

    try:
        kube.wait_until(observed, 90, "the operator in the image to write the guide's status")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.logs()[-6000:]}") from None
    status, body = http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert status == 200 and b"shopping_guide" in body
    assert "Traceback" not in operator.logs()


@pytest.fixture(scope="module")
def archive(operator_image: str) -> Path:
    return Path(images_sh("save", operator_image))


def test_saved_once_per_image_id(podman: Podman, operator_image: str, archive: Path) -> None:
    image_id = podman.inspect(operator_image)["Id"]
    assert archive.name.endswith(f"-{image_id[:12]}.tar")
    before = archive.stat().st_mtime_ns
    assert Path(images_sh("save", "operator")) == archive
    assert archive.stat().st_mtime_ns == before
    with tarfile.open(archive) as saved:
        member = saved.extractfile("manifest.json")
        assert member is not None
        manifest = json.loads(member.read())
    assert manifest[0]["RepoTags"] == [operator_image]
    assert len(source_modules("shopping_guide_operator", REPO / "operator")) > 10


def test_build_ca_is_in_no_layer(podman: Podman, operator_image: str, archive: Path) -> None:
    bundle = check_no_build_tools(podman, operator_image)["bundle"]
    check_ca_in_no_layer(archive, bundle)
