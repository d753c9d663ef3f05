"""Shared fixtures: small synthetic event files with a known structure."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Kube
    from tests.s3 import S3Server

REPO = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = REPO / "data" / "online-retail" / "online_retail.csv.xz"


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A reachable cluster (tests/e2e/conftest.py): $KUBECONFIG's, or the local one, started
    once for the whole session and stopped at its end."""
    from tests.e2e.conftest import kube_session

    yield from kube_session(tmp_path_factory)


def required(reason: str) -> None:
    """A missing part (a binary, an image, a server) fails the run in CI and skips elsewhere:
    CI never passes by leaving a tier out."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def prometheus_binary() -> str:
    """The Prometheus that hack/build-cluster-binaries.sh builds (with Kubernetes service
    discovery, which Debian's package lacks)."""
    from tests.e2e.conftest import bin_dir

    binary = bin_dir() / "prometheus"
    if not binary.exists():
        required(f"no {binary}: make cluster-binaries builds it")
    return str(binary)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def two_taste_rows(users_per_group: int = 30, items_per_group: int = 12) -> list[tuple[str, str]]:
    """Two groups of users with disjoint tastes: group A buys items a0.., group B items b0...

    Each user buys all but one item of their group (a different one per user), so the right
    recommendation for everyone is an item of their own group.
    """
    rows = []
    for group in ("a", "b"):
        for u in range(users_per_group):
            for i in range(items_per_group):
                if i != u % items_per_group:
                    rows.append((f"{group}-user-{u}", f"{group}{i}"))
    return rows


@pytest.fixture
def two_taste_csv(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    lines = ["user_id,item_id"] + [f"{u},{i}" for u, i in two_taste_rows()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """versitygw on this host for the whole session (tests/s3.py)."""
    from tests.s3 import s3_session

    yield from s3_session(tmp_path_factory.mktemp("s3") / "data")


@pytest.fixture
def s3_store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<a new bucket>/models`, its credentials in the environment (children inherit)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.new_bucket()}/models"
