"""Serving benchmark: one user's top-10 in process, over HTTP, and memory; prints JSON.

In process, at 100k and 1M items (64 float32 factors, already-liked items filtered), over the
same 2,000 random users: the server's exact scorer, its approximate index, implicit's own
`recommend`, and a numpy brute force. Over HTTP, at 100k items: the highest request rate one
server process sustains (wrk, closed loop), then p50/p99 latency from an open-loop client at
half that rate. Memory: the server's resident size with two versions loaded beside the size of
their artifacts on disk.

Sizes: SERVING_BENCH_ITEMS (comma-separated), default 100000,1000000.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shopping_guide.artifacts import ModelStore
from shopping_guide.model import Model
from shopping_guide.serving.scorer import ServingModel

FACTORS = 64
USERS = 20_000
HISTORY = 20
CALLS = 2_000


def synthetic_store(root: Path, n_items: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    # Popular items get larger factors, as trained models show.
    scale = (1.0 / np.sqrt(1 + np.arange(n_items) / 1000)).astype(np.float32)[:, None]
    items = rng.standard_normal((n_items, FACTORS), dtype=np.float32) * scale
    users = rng.standard_normal((USERS, FACTORS), dtype=np.float32)
    cols = rng.integers(0, n_items, (USERS, HISTORY))
    rows = np.repeat(np.arange(USERS), HISTORY)
    history = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols.ravel())),
                            shape=(USERS, n_items))  # fmt: skip
    model = Model.from_factors("als", {"regularization": 0.01, "alpha": 1.0}, users, items, history)
    user_ids = np.array([f"u{i}" for i in range(USERS)])
    item_ids = np.array([f"i{i}" for i in range(n_items)])
    return ModelStore(root).write(model, user_ids, item_ids, {}, f"v-bench-{n_items}-{seed}")[0]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}  # fmt: skip


def in_process(root: Path, n_items: int) -> dict[str, Any]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    version = synthetic_store(root, n_items, 0)
    loaded = ModelStore(root).load(version)
    exact = ServingModel(loaded, ann_min_items=None)
    started = time.perf_counter()
    approx = ServingModel(loaded, ann_min_items=0)
    ann_build = time.perf_counter() - started
    model = loaded.model
    assert model.user_factors is not None and model.item_factors is not None
    rng = np.random.default_rng(1)
    users = rng.integers(0, USERS, CALLS)
    history = model.user_items

    als = AlternatingLeastSquares(factors=FACTORS)
    als.user_factors, als.item_factors = model.user_factors, model.item_factors

    def brute(u: int) -> np.ndarray:
        scores = model.item_factors @ model.user_factors[u]  # type: ignore[index]
        scores[history.indices[history.indptr[u] : history.indptr[u + 1]]] = -np.inf
        top = np.argpartition(-scores, 9)[:10]
        return top[np.argsort(-scores[top])]

    runs = {
        "server_exact": lambda u: exact.recommend(f"u{u}", 10),
        "server_ann": lambda u: approx.recommend(f"u{u}", 10),
        "implicit_recommend": lambda u: als.recommend(u, history[u], N=10),
        "numpy_brute_force": brute,
    }
    out: dict[str, Any] = {"items": n_items, "calls": CALLS}
    with threadpool_limits(1, "blas"):
        for name, call in runs.items():
            for u in users[:50]:
                call(int(u))  # warm caches
            times = []
            for u in users:
                t0 = time.perf_counter()
                call(int(u))
                times.append(time.perf_counter() - t0)
            out[name] = percentiles(times)
        hits = 0
        for u in users[:500]:
            want = set(exact.recommend(f"u{u}", 10).item_ids)
            hits += len(want & set(approx.recommend(f"u{u}", 10).item_ids))
    assert approx.ann is not None
    out["server_ann"] |= {
        "index": "faiss HNSW, inner product, efSearch 128",
        "recall_at_10": round(hits / (500 * 10), 4),
        "build_seconds": round(ann_build, 2),
    }
    return out


def _wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


async def open_loop(url: str, rate: float, seconds: float) -> list[float]:
    """Requests sent on a fixed schedule, whatever the responses do (no coordinated omission)."""
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def one(n: int, scheduled: float) -> None:
            async with session.get(f"{url}/v1/recommendations?user_id=u{n % USERS}&k=10") as r:
                await r.read()
            latencies.append(time.perf_counter() - scheduled)

        tasks = []
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one(n, due)))
            n += 1
        await asyncio.gather(*tasks)
    return latencies


def over_http(root: Path) -> dict[str, Any]:
    stable = synthetic_store(root, 100_000, 0)
    canary = synthetic_store(root, 100_000, 1)
    routing = root / "routing.json"
    document = {"stable": stable, "canary": canary, "canaryWeightBasisPoints": 5000,
                "salt": "b", "generation": 1}  # fmt: skip
    routing.write_text(json.dumps(document))
    port = 18_000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OPENBLAS_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "shopping_guide.cli", "serve", "--model-store", str(root),
         "--routing", str(routing), "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ready(url)
        rss_mb = int(Path(f"/proc/{server.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        disk = sum(p.stat().st_size for v in (stable, canary) for p in (root / v).iterdir())
        out: dict[str, Any] = {
            "items": 100_000,
            "memory": {"rss_mb_two_versions": round(rss_mb / 1024, 1),
                       "artifacts_mb_on_disk": round(disk / 1e6, 1)},
        }  # fmt: skip
        target = f"{url}/v1/recommendations?user_id=u42&k=10"
        if shutil.which("wrk"):
            done = subprocess.run(["wrk", "-t1", "-c16", "-d10s", target],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
            out["max_rps"] = {"tool": "wrk -t1 -c16 -d10s", "requests_per_second": round(rps)}
        else:
            rps = 500.0
            out["max_rps"] = {"tool": "none (wrk not installed)", "requests_per_second": None}
        latencies = asyncio.run(open_loop(url, rps / 2, 10.0))
        out["at_half_max_rate"] = {"rate": round(rps / 2), "requests": len(latencies),
                                   **percentiles(latencies)}  # fmt: skip
        return out
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> int:
    sizes = [int(s) for s in os.environ.get("SERVING_BENCH_ITEMS", "100000,1000000").split(",")]
    report: dict[str, Any] = {"in_process": [], "http": None}
    with tempfile.TemporaryDirectory(prefix="sg-serving-") as tmp:
        for n_items in sizes:
            report["in_process"].append(in_process(Path(tmp) / f"s{n_items}", n_items))
        report["http"] = over_http(Path(tmp) / "http")
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
