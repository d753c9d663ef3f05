"""The Online Retail sample as the trainer reads it, and its tuned quality over three seeds.

Data: UCI Online Retail (Chen, 2015), CC BY 4.0, https://doi.org/10.24432/C5BW33 .
Filtering follows data/online-retail/README.md: rows without a customer are
skipped, non-product stock codes excluded, customers with fewer than 5 items dropped; each
(customer, product) counts the invoice lines that contain it.

`python -m benchmarks.online_retail` prints JSON: nDCG@10 and friends per algorithm, untuned
and tuned, mean over seeds 0, 1, 2, beside the popularity baseline.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "data" / "online-retail" / "online_retail.csv.xz"
NON_PRODUCTS = "POST,D,M,DOT,C2,CRUK,BANK CHARGES,PADS,AMAZONFEE,S,B,m"
TRAIN_ARGS = [
    "--user-col", "CustomerID",
    "--item-col", "StockCode",
    "--on-invalid", "skip",
    "--exclude-items", NON_PRODUCTS,
    "--min-user-items", "5",
]  # fmt: skip


def train_json(store: Path, *extra: str) -> dict[str, object]:
    """Run the real command line in-process and return its JSON result."""
    import contextlib
    import io

    from shopping_guide.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--events", str(DATASET), "--model-store", str(store),
                     *TRAIN_ARGS, *extra])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"train failed with {extra}")
    result: dict[str, object] = json.loads(out.getvalue())
    return result


def main() -> int:
    report: dict[str, object] = {"dataset": str(DATASET), "seeds": [0, 1, 2]}
    runs = {
        "als": ["--algorithm", "als"],
        "als_bm25": ["--algorithm", "als", "--param", "weighting=bm25"],
        "itemknn_bm25": ["--algorithm", "itemknn"],
        "als_tuned": ["--algorithm", "als", "--tune", "--tune-trials", "40"],
        "itemknn_tuned": ["--algorithm", "itemknn", "--tune", "--tune-trials", "40"],
        "ease": ["--algorithm", "ease"],
        "ease_tuned": ["--algorithm", "ease", "--tune", "--tune-trials", "40"],
    }
    with TemporaryDirectory() as tmp:
        baseline: list[float] = []
        for name, args in runs.items():
            scores = []
            for seed in (0, 1, 2):
                result = train_json(Path(tmp), *args, "--seed", str(seed))
                scores.append(result["metrics"]["ndcg@10"])  # type: ignore[index]
                if name == "als":
                    baseline.append(result["baseline"]["popularity"]["ndcg@10"])  # type: ignore[index]
            report[name] = {"ndcg@10_mean": round(statistics.mean(scores), 4), "per_seed": scores}
        report["popularity"] = {"ndcg@10_mean": round(statistics.mean(baseline), 4)}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
