"""The built recommender image: every module imports, it trains on a slice of Online Retail
and serves the model it trained, as its non-root user on a read-only root filesystem."""

from __future__ import annotations

import json
import lzma
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shopping_guide_contracts import training_result
from tests.conftest import ONLINE_RETAIL
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

SAMPLE_ROWS = 5000
# As benchmarks/online_retail.py reads it: customers x stock codes, non-products left out.
TRAIN_ARGS = [
    "--user-col", "CustomerID",
    "--item-col", "StockCode",
    "--on-invalid", "skip",
    "--exclude-items", "POST,D,M,DOT,C2,CRUK,BANK CHARGES,PADS,AMAZONFEE,S,B,m",
    "--min-user-items", "5",
    "--catalog-from-events", "Description,UnitPrice",
    "--param", "factors=16",
]  # fmt: skip
PACKAGES = ("shopping_guide", "shopping_guide_contracts")
LIBRARIES = (
    "implicit", "implicit.cpu.als", "implicit.cpu.bpr", "implicit.nearest_neighbours", "faiss",
    "scipy", "scipy.sparse", "numpy", "threadpoolctl", "aiohttp", "prometheus_client", "yaml",
    "pyarrow", "pyarrow.compute", "pyarrow.csv", "pyarrow.json", "pyarrow.parquet",
    "pyarrow.dataset", "pyarrow.fs", "pyarrow._s3fs",
)  # fmt: skip

# Imports every module of the packages named in argv, then the libraries after "--".
IMPORT_ALL = """
import importlib, json, pkgutil, sys
split = sys.argv.index("--")
packages, libraries = sys.argv[1:split], sys.argv[split + 1:]
imported, failed = [], {}
def load(name):
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception as exc:
        failed[name] = repr(exc)
for package in packages:
    load(package)
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        load(info.name)
for library in libraries:
    load(library)
print(json.dumps({"imported": imported, "failed": failed}))
"""


def source_modules(package: str, root: Path) -> set[str]:
    names = {package}
    for info in pkgutil.walk_packages([str(root / package)], package + "."):
        names.add(info.name)
    return names


def test_metadata_user_and_size(podman: Podman, recommender_image: str) -> None:
    check_metadata(
        podman, recommender_image, "shopping-guide-recommender", "shopping-guide", 700_000_000
    )


def test_no_compilers_installers_or_build_secrets(podman: Podman, recommender_image: str) -> None:
    check_no_build_tools(podman, recommender_image)


def test_every_module_and_library_imports(podman: Podman, recommender_image: str) -> None:
    found = podman.python(recommender_image, IMPORT_ALL, *PACKAGES, "--", *LIBRARIES)
    assert found["failed"] == {}
    expected = set(LIBRARIES)
    for package in PACKAGES:
        expected |= source_modules(package, REPO / "recommender_image")
    assert expected <= set(found["imported"]), expected - set(found["imported"])


def test_openmp_runtime_is_the_systems(podman: Podman, recommender_image: str) -> None:
    # implicit's extension links libgomp.so.1 from the image, not a vendored copy.
    code = (
        "import json, implicit.cpu._als; "
        "print(json.dumps([l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l]))"
    )
    maps = podman.python(recommender_image, code)
    assert any(path.startswith(("/usr/lib/", "/lib/")) for path in maps), maps


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = ONLINE_RETAIL
    folder = tmp_path_factory.mktemp("events")
    with lzma.open(dataset, "rt", encoding="utf-8") as source:
        lines = [line for _, line in zip(range(SAMPLE_ROWS + 1), source, strict=False)]
    (folder / "online_retail.csv").write_text("".join(lines), encoding="utf-8")
    folder.chmod(0o755)
    (folder / "online_retail.csv").chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def trained(
    podman: Podman, recommender_image: str, sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """A model store that the image trained into, and the result it printed."""
    store = tmp_path_factory.mktemp("models")
    store.chmod(0o777)  # the image's user owns nothing on the host
    done = podman.run(
        recommender_image,
        "train",
        "--events", "/data/online_retail.csv",
        "--model-store", "/models",
        "--termination-log", "/models/termination-log",
        *TRAIN_ARGS,
        mounts=[Mount(sample, "/data"), Mount(store, "/models", writable=True)],
        timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return store, result


def test_trains_on_an_online_retail_slice(trained: tuple[Path, dict[str, Any]]) -> None:
    store, result = trained
    training_result.validate(result)
    assert result["data"]["rows"] == SAMPLE_ROWS
    assert result["data"]["users"] > 100 and result["data"]["items"] > 1000
    assert result["metrics"]["ndcg@10"] > result["baseline"]["popularity"]["ndcg@10"]
    assert (store / result["version"]).is_dir()
    message = (store / "termination-log").read_text()
    assert training_result.decode(message)["version"] == result["version"]


@pytest.fixture
def routing(tmp_path: Path, trained: tuple[Path, dict[str, Any]]) -> Path:
    folder = tmp_path / "routing"
    folder.mkdir(mode=0o755)
    document = {"schema": 1, "stable": trained[1]["version"], "salt": "images"}
    (folder / "routing.json").write_text(json.dumps(document))
    (folder / "routing.json").chmod(0o644)
    return folder


def test_serves_what_it_trained(
    service: Any, recommender_image: str, trained: tuple[Path, dict[str, Any]], routing: Path
) -> None:
    store, result = trained
    port = free_port()
    server = service(
        recommender_image,
        "serve",
        "--model-store", "/models",
        "--routing", "/etc/shopping-guide/routing/routing.json",
        "--host", "127.0.0.1",
        "--port", str(port),
        # The model store is read-only for the server, as the chart mounts it.
        mounts=[Mount(store, "/models"), Mount(routing, "/etc/shopping-guide/routing")],
        # The Deployment's /tmp emptyDir: the worker processes keep their metrics there.
        tmpfs=["/tmp"],
    )  # fmt: skip
    _, body = server.wait_for(f"http://127.0.0.1:{port}/readyz")
    assert json.loads(body)["stable"]["version"] == result["version"]

    status, body = http_get(f"http://127.0.0.1:{port}/v1/recommendations?user_id=17850&k=5")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_version"] == result["version"]
    assert answer["strategy"] == "personalized"
    assert len(answer["items"]) == 5 and all(item["title"] for item in answer["items"])
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and b"shopping_guide" in body


@pytest.fixture(scope="module")
def archive(recommender_image: str) -> Iterator[Path]:
    yield Path(images_sh("save", recommender_image))


def test_build_ca_is_in_no_layer(podman: Podman, recommender_image: str, archive: Path) -> None:
    bundle = check_no_build_tools(podman, recommender_image)["bundle"]
    check_ca_in_no_layer(archive, bundle)
