"""`make bench`: trainer speed and memory on synthetic power-law data; prints JSON.

For each size: CSV generation, parse + aggregation (rows per second), implicit's ALS fit on a
prebuilt CSR matrix (the baseline), and the whole `shopping-guide train` run. The ratio
`train / (bare fit + parse)` is the project's overhead (split, evaluation, artifact writing);
both sides are measured in the same run on the same machine.

Sizes: BENCH_SIZES (comma-separated rows), default 1000000,10000000.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any


def step(name: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.steps", name, *args],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"benchmark step {name} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_size(rows: int, tmp: Path) -> dict[str, Any]:
    csv = tmp / f"events-{rows}.csv"
    generated = step("generate", str(csv), str(rows))
    parse = step("parse", str(csv))
    bare = step("bare_fit", str(csv))
    train = step("train", str(csv), str(tmp / f"store-{rows}"))
    reference = bare["work_seconds"] + parse["work_seconds"]
    return {
        "rows": rows,
        "nnz": generated["nnz"],
        "csv_mb": round(generated["bytes"] / 1e6, 1),
        "parse": {
            "seconds": round(parse["work_seconds"], 3),
            "rows_per_second": round(rows / parse["work_seconds"]),
            "peak_rss_mb": parse["peak_rss_mb"],
        },
        "bare_als_fit": {
            "seconds": round(bare["work_seconds"], 3),
            "peak_rss_mb": bare["peak_rss_mb"],
        },
        "train": {
            "seconds": round(train["work_seconds"], 3),
            "peak_rss_mb": train["peak_rss_mb"],
            "timings": train["timings"],
        },
        "train_over_bare_fit_plus_parse": round(train["work_seconds"] / reference, 3),
    }


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "1000000,10000000").split(",")]
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "sizes": [],
    }
    with TemporaryDirectory(prefix="sg-bench-") as tmp:
        for rows in sizes:
            report["sizes"].append(bench_size(rows, Path(tmp)))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
