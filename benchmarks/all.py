"""`make bench`: every benchmark in turn, one JSON object out (each also runs on its own:
`python -m benchmarks.run`, `benchmarks.serving`, `benchmarks.operator_scale`,
`benchmarks.object_store`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

SUITES = {
    "trainer": "benchmarks.run",
    "serving": "benchmarks.serving",
    "operator": "benchmarks.operator_scale",
    "object_store": "benchmarks.object_store",
}


def main() -> int:
    wanted = os.environ.get("BENCH_SUITES", ",".join(SUITES)).split(",")
    report: dict[str, Any] = {}
    failed = False
    for name in wanted:
        done = subprocess.run(
            [sys.executable, "-m", SUITES[name]],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if done.returncode != 0:
            # A benchmark that cannot run (a missing tool) fails `make bench`, not a null.
            report[name] = {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
            failed = True
            continue
        report[name] = json.loads(done.stdout)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
