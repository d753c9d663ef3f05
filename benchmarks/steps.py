"""Single benchmark steps, each run in a fresh process so its peak memory is its own.

`python -m benchmarks.steps STEP ARGS...` prints one JSON object with `seconds` and
`peak_rss_mb`.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ALS_PARAMS = {"factors": 64, "iterations": 15, "regularization": 0.01}


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """Power-law users and items (a few of each are very active/popular), as CSV + CSR."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 20, 10), max(rows // 200, 10)
    users = np.minimum((rng.pareto(1.5, rows) * n_users / 20).astype(np.int64), n_users - 1)
    items = np.minimum((rng.pareto(1.2, rows) * n_items / 50).astype(np.int64), n_items - 1)
    table = pa.table(
        {
            "user_id": pa.array(np.char.add("u", users.astype(str))),
            "item_id": pa.array(np.char.add("i", items.astype(str))),
        }
    )
    pacsv.write_csv(table, path)
    matrix = sp.csr_matrix(
        (np.ones(rows, dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    matrix.sum_duplicates()
    sp.save_npz(path.with_suffix(".npz"), matrix)
    return {"rows": rows, "bytes": path.stat().st_size, "nnz": int(matrix.nnz)}


def parse(path: Path) -> dict[str, Any]:
    from shopping_guide.events import EventSchema, load_events
    from shopping_guide.interactions import build_interactions

    started = time.perf_counter()
    events = load_events(path, EventSchema())
    data = build_interactions(events)
    return {
        "rows": events.rows_read,
        "nnz": data.nnz,
        "work_seconds": time.perf_counter() - started,
    }


def bare_fit(path: Path) -> dict[str, Any]:
    """implicit's ALS on a prebuilt CSR matrix, nothing else: the baseline."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix = sp.load_npz(path.with_suffix(".npz")).tocsr()
    started = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(**ALS_PARAMS, random_state=0)
        model.fit(matrix, show_progress=False)
    return {"work_seconds": time.perf_counter() - started, "nnz": int(matrix.nnz)}


def train(path: Path, store: Path) -> dict[str, Any]:
    import implicit.cpu.als  # noqa: F401  (imported before the clock starts, as in bare_fit)

    from shopping_guide.cli import main

    params = [arg for k, v in ALS_PARAMS.items() for arg in ("--param", f"{k}={v}")]
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--events", str(path), "--model-store", str(store), *params])
    seconds = time.perf_counter() - started
    if code:
        raise SystemExit(code)
    result = json.loads(out.getvalue())
    return {"timings": result["timings"], "metrics": result["metrics"], "work_seconds": seconds}


def run(step: str, args: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    if step == "generate":
        out = generate(Path(args[0]), int(args[1]))
    elif step == "parse":
        out = parse(Path(args[0]))
    elif step == "bare_fit":
        out = bare_fit(Path(args[0]))
    elif step == "train":
        out = train(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(f"unknown step {step}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**out, "process_seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mb": round(peak_kib / 1024, 1)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2:])))
