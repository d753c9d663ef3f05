"""The project's CRDs side by side: names kubectl resolves must not shadow one another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _names() -> list[dict[str, Any]]:
    return [
        yaml.safe_load(path.read_text())["spec"]["names"]
        for path in sorted(CRDS.glob("shoppingguide.io_*.yaml"))
    ]


def test_no_category_shadows_a_resource_name() -> None:
    """kubectl expands a category before it looks for a resource: a category named like a
    resource (`shoppingguide`) turned `kubectl get shoppingguide NAME` into a get of the
    category's other kinds."""
    names = _names()
    resources = {
        n.lower()
        for crd in names
        for n in (crd["plural"], crd["singular"], crd["kind"], *crd.get("shortNames", []))
    }
    categories = {c for crd in names for c in crd.get("categories", [])}
    assert not categories & resources


def test_short_names_are_unique() -> None:
    short = [s for crd in _names() for s in crd.get("shortNames", [])]
    assert len(short) == len(set(short))
