"""How long a new serving pod waits for a model version from object storage.

A real S3 server on this host (versitygw, built by hack/build-addons.sh; missing is an error)
holds two versions: the Online Retail model the sample guide trains (ALS with the catalogue
from the events), and a synthetic 1M-item model (64 factors). For each: the upload (the
trainer's write), the download into a cache with every checksum checked on the way
(`ObjectModelStore.fetch`, what a new pod does), the load from the cache, and as baselines the
same version's load from a local directory (what a claim gives) and a plain copy of its bytes
on this disk, measured in the same run.

`python -m benchmarks.object_store` prints JSON. SIZES=online-retail,1m chooses the models.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.online_retail import train_json


def _seconds(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _synthetic_1m(store: Any) -> str:
    from shopping_guide.model import Model

    rng = np.random.default_rng(0)
    items, users, factors = 1_000_000, 20_000, 64
    per_user = 20
    columns = rng.integers(0, items, size=users * per_user)
    rows = np.repeat(np.arange(users), per_user)
    matrix = sp.csr_matrix(
        (np.ones(len(columns), dtype=np.float32), (rows, columns)), shape=(users, items)
    )
    model = Model(
        algorithm="als",
        params={"factors": factors},
        user_items=matrix,
        user_factors=rng.standard_normal((users, factors), dtype=np.float32),
        item_factors=rng.standard_normal((items, factors), dtype=np.float32),
    )
    user_ids = np.array([f"u{i}" for i in range(users)])
    item_ids = np.array([f"item-{i:07d}" for i in range(items)])
    version: str = store.write(model, user_ids, item_ids, {"metrics": {}})[0]
    return version


def measure(name: str, local_root: Path, version: str, s3: Any, scratch: Path) -> dict[str, Any]:
    from shopping_guide.artifacts import ModelStore
    from shopping_guide.object_store import ObjectModelStore

    local = ModelStore(local_root)
    source = local.path(version)
    size = sum(p.stat().st_size for p in source.iterdir())
    start = time.perf_counter()
    loaded = local.load(version)
    claim_load = _seconds(start)

    start = time.perf_counter()
    copied = scratch / f"copy-{name}"
    shutil.copytree(source, copied)
    disk_copy = _seconds(start)
    shutil.rmtree(copied)

    remote = ObjectModelStore(s3, f"s3://bench/{name}")
    meta = {k: v for k, v in loaded.manifest.items() if k not in ("files", "version")}
    start = time.perf_counter()
    remote.write(loaded.model, loaded.user_ids, loaded.item_ids, meta, version, loaded.extras)
    upload = _seconds(start)
    del loaded

    cache = scratch / f"cache-{name}"
    start = time.perf_counter()
    remote.fetch(version, cache)
    download = _seconds(start)
    start = time.perf_counter()
    ModelStore(cache).load(version, verify=True)
    cache_load = _seconds(start)
    return {
        "version_bytes": size,
        "upload_seconds": upload,
        "download_and_check_seconds": download,
        "download_mb_per_s": round(size / 1e6 / download, 1),
        "load_from_cache_seconds": cache_load,
        "new_pod_total_seconds": round(download + cache_load, 3),
        "baseline_claim_load_seconds": claim_load,
        "baseline_disk_copy_seconds": disk_copy,
        "ratio_total_to_claim_load": round((download + cache_load) / claim_load, 2),
        "ratio_download_to_disk_copy": round(download / disk_copy, 2),
    }


def main() -> int:
    from shopping_guide.artifacts import ModelStore
    from tests.s3 import S3Server, versitygw_binary

    sizes = os.environ.get("SIZES", "online-retail,1m").split(",")
    report: dict[str, Any] = {"server": "versitygw on this host (posix backend, same disk)"}
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["CI"] = os.environ.get("CI", "1")  # a missing versitygw is an error here
        server = S3Server(versitygw_binary(), root / "s3")
        server.start()
        try:
            os.environ.update(server.env)
            fs = server.filesystem()
            fs.create_dir("bench")
            if "online-retail" in sizes:
                store = root / "online-retail"
                result = train_json(
                    store, "--algorithm", "als", "--catalog-from-events", "Description,UnitPrice"
                )
                report["online_retail"] = measure(
                    "online-retail", store, str(result["version"]), fs, root
                )
            if "1m" in sizes:
                store = root / "synthetic-1m"
                version = _synthetic_1m(ModelStore(store))
                report["items_1m"] = measure("items-1m", store, version, fs, root)
        finally:
            server.stop()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
