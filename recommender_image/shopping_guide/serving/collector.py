"""Python's cyclic garbage collector, kept off the request path.

A full collection walks every object the collector tracks: in a worker with a 100k-item model
loaded, 45-76 ms on the benchmark machine, about every 4 s under load, and the p99 of every
request it landed on. The objects that live as long as the process or a model version
(modules, the loaded versions and their lookups) are moved out of its sight (`gc.freeze`)
once loaded, and again after each change of the loaded versions, collecting first so that a
dropped version's reference cycles are freed, not frozen for good: one full collection per
change of versions (a canary step that only moves the weight keeps them) instead of one every
few seconds.

Young objects are collected after YOUNG_THRESHOLD more allocations than frees instead of
Python's 700: a request allocates a few hundred objects, most freed by reference counting, so
the default ran a collection every few requests (0.5-1 ms each on the same machine). The
garbage a collection finds is cycles only, and 20,000 objects of it is a few MB at most.

Measured with `benchmarks/serving.py`'s server, 2 workers, 100k items, open-loop 2,500
requests/s, one run each: p99 56.2 ms as Python sets it, 25.1 frozen, 12.6 frozen and with this
threshold (max rps 5,029, 5,251, 5,857).
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Collect everything once, then freeze what survived; cheap collections from then on."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class Settler:
    """`settle` whenever the loaded versions change, not on every routing change that keeps
    them (a weight step, a failed version's retry)."""

    def __init__(self) -> None:
        self._loaded: frozenset[int] = frozenset()

    def __call__(self, models: Iterable[object]) -> None:
        # By identity: a version rewritten in place loads as a new object under its old name.
        loaded = frozenset(id(model) for model in models)
        if loaded != self._loaded:
            self._loaded = loaded
            settle()
