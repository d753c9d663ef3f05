"""After `settle`, what was alive is frozen out of the collector's walks, a cycle dropped
before it is freed (not frozen for good), and young objects are collected less often."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shopping_guide.serving import collector


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_frees_dropped_cycles_and_freezes_the_survivors() -> None:
    kept = [_Node() for _ in range(1_000)]
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    gone = weakref.ref(a)
    del a, b
    gc.disable()  # no collection but settle's own
    try:
        collector.settle()
    finally:
        gc.enable()
    assert gone() is None
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
    # A second settle, after a version is dropped: frozen objects come back into sight first,
    # so a cycle among them is freed too.
    c, d = kept[0], kept[1]
    c.other, d.other = d, c
    second = weakref.ref(c)
    del c, d, kept[:2]
    collector.settle()
    assert second() is None


def test_the_settler_settles_only_when_the_loaded_versions_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(collector, "settle", lambda: calls.append(1))
    settle = collector.Settler()
    stable, canary, rewritten = _Node(), _Node(), _Node()
    settle([stable])
    settle([stable])  # the routing changed, the loaded versions did not
    settle([stable, canary])
    settle([canary, stable])
    settle([rewritten, canary])
    assert len(calls) == 3
