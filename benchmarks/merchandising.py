"""What rules, the fallback chain and exploration cost on the batched scoring path.

One synthetic factor model with a catalogue (50,000 items, 64 factors, three categories, a
third out of stock); batches of 100 known users, k=10. Each case is timed as the median of
repeated batches, in turn with the scoring alone (`_score_many`, the path before any list is
finished), and reported as a ratio to it.

`python -m benchmarks.merchandising` prints JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shopping_guide.artifacts import LoadedModel
from shopping_guide.catalog import Catalog
from shopping_guide.model import Model
from shopping_guide.serving.scorer import Query, ServingModel
from shopping_guide_contracts.merchandising import Merchandising, parse

USERS, ITEMS, FACTORS, BATCH, K, REPEATS = 10_000, 50_000, 64, 100, 10, 30


def _model() -> ServingModel:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(USERS), 20)
    history = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows, rng.integers(0, ITEMS, rows.size))),
        shape=(USERS, ITEMS),
    )
    model = Model.from_factors(
        "als", {"regularization": 0.01, "alpha": 1.0},
        rng.standard_normal((USERS, FACTORS), dtype=np.float32),
        rng.standard_normal((ITEMS, FACTORS), dtype=np.float32), history,
    )  # fmt: skip
    item_ids = np.array([f"i{i}" for i in range(ITEMS)])
    names = np.array(["lights", "mugs", "tea"])
    catalog = Catalog(
        item_ids=item_ids,
        titles=item_ids,
        categories=sp.csr_matrix(
            (np.ones(ITEMS, np.float32), (np.arange(ITEMS), rng.integers(0, 3, ITEMS))),
            shape=(ITEMS, 3),
        ),
        category_names=names,
        attributes=None,
        price=np.ones(ITEMS, np.float32),
        in_stock=rng.random(ITEMS) > 0.3,
    )
    loaded = LoadedModel(
        "v-bench", Path("/nonexistent"), {}, model,
        np.array([f"u{u}" for u in range(USERS)]), item_ids, catalog.to_arrays(),
    )  # fmt: skip
    return ServingModel(loaded, ann_min_items=None)


def _paired_ms(baseline: Callable[[], Any], case: Callable[[], Any]) -> tuple[float, float]:
    """Median milliseconds of each, run in turn so that a noisy neighbour hits both alike."""
    baseline(), case()  # warm
    times: tuple[list[float], list[float]] = ([], [])
    pairs = ((baseline, times[0]), (case, times[1]))
    for repeat in range(REPEATS):
        # Each goes first in half the rounds: the second of two runs is often the faster.
        for run, into in pairs if repeat % 2 else pairs[::-1]:
            started = time.perf_counter()
            run()
            into.append(time.perf_counter() - started)
    return tuple(round(statistics.median(t) * 1000, 3) for t in times)  # type: ignore[return-value]


def main() -> int:
    model = _model()
    users = [f"u{u}" for u in np.random.default_rng(1).integers(0, USERS, BATCH)]
    rules = parse({"rules": [
        {"type": "hideOutOfStock"},
        {"type": "noRepurchase", "repeatableCategories": ["tea"]},
        {"type": "diversity", "maxPerCategory": 4},
        {"type": "promote", "match": {"categories": ["mugs"]}, "share": 0.2},
        {"type": "pin", "item": "i7", "position": 1},
    ]})  # fmt: skip
    cases: dict[str, Merchandising | None] = {
        "no_rules": None,
        "exploration_0.2": Merchandising(exploration_share=0.2),
        "five_rules": rules,
    }
    plain = [Query(u, K) for u in users]
    report: dict[str, Any] = {"setup": {"items": ITEMS, "factors": FACTORS, "batch": BATCH, "k": K}}
    for name, policy in cases.items():
        queries = [Query(u, K, merchandising=policy) for u in users]

        def scoring_only() -> Any:
            return model._score_many(plain)

        def finished(queries: list[Query] = queries) -> Any:
            return model.recommend_many(queries)

        base, took = _paired_ms(scoring_only, finished)
        report[name] = {
            "ms_per_batch": took,
            "scoring_only_ms_per_batch": base,
            "ratio_to_scoring_only": round(took / base, 3),
        }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
