"""How many workers a pod runs by default: the CPUs it may use, within its CPU limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopping_guide.serving import workers
from shopping_guide.serving.workers import cgroup_cpus, default_workers


def test_the_cgroup_v2_limit_is_read_and_no_limit_is_none(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None


def test_the_cgroup_v1_limit_is_read_when_there_is_no_v2(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path) == 2.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpus(tmp_path) is None
    assert cgroup_cpus(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("cpus", "limit", "requested", "expected"),
    [
        (8, None, None, 8),
        (8, 1.5, None, 2),
        (8, 0.25, None, 1),
        (2, 4.0, None, 2),
        (1, None, None, 1),
        # No limit: the request, not every CPU of the node.
        (16, None, "1", 1),
        (16, None, "3", 3),
        (2, None, "3", 2),
        (16, 4.0, "1", 4),
        (16, None, "0", 16),
    ],
)
def test_default_workers_are_the_cpus_within_the_limit_or_the_request(
    monkeypatch: pytest.MonkeyPatch,
    cpus: int,
    limit: float | None,
    requested: str | None,
    expected: int,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)))
    monkeypatch.setattr(workers, "cgroup_cpus", lambda: limit)
    if requested is None:
        monkeypatch.delenv(workers.CPUS_ENV, raising=False)
    else:
        monkeypatch.setenv(workers.CPUS_ENV, requested)
    assert default_workers() == expected
