"""Each name is defined once in the operator, transitions are typed, and only what the CRD
keeps is read."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from shopping_guide_operator import canary
from shopping_guide_operator.analysis import Thresholds
from shopping_guide_operator.canary import Transition, plan_from_spec

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "operator" / "shopping_guide_operator"


def test_each_class_and_type_alias_is_defined_once_in_the_operator() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names: list[str] = []
            if isinstance(node, ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            for name in names:
                if name[:1].isupper() and not name.isupper():  # not CONSTANTS
                    where[name].append(str(path.relative_to(PACKAGE)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}


def test_decisions_carry_a_typed_transition_not_routing_markers() -> None:
    assert not hasattr(canary.Decision, "routing_changed")
    reasons = {t: t.event_reason for t in Transition}
    assert len(set(reasons.values())) >= len(Transition) - 1  # Started is posted by begin
    assert all(r.startswith("Canary") for r in reasons.values())
    assert Transition.ROLLED_BACK.event_type == "Warning"
    assert Transition.ANALYSIS_FAILED.event_type == "Warning"
    assert Transition.PROMOTED.event_type == "Normal"
    assert Transition.RESTARTED.event_reason == "CanaryRestarted"


class Recording(dict[str, Any]):
    """A spec mapping that records every key read from it, and hands out recorders."""

    def __init__(self, value: dict[str, Any], path: str, seen: set[str]) -> None:
        super().__init__(value)
        self.path, self.seen = path, seen

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(f"{self.path}.{key}")
        value = super().get(key, default)
        if isinstance(value, dict):
            return Recording(value, f"{self.path}.{key}", self.seen)
        if isinstance(value, list):
            return [
                Recording(v, f"{self.path}.{key}[]", self.seen) if isinstance(v, dict) else v
                for v in value
            ]
        return value


def crd_paths(schema: dict[str, Any], path: str) -> set[str]:
    found = {path}
    for key, sub in (schema.get("properties") or {}).items():
        found |= crd_paths(sub, f"{path}.{key}")
    if "items" in schema:
        found |= crd_paths(schema["items"], f"{path}[]")
    return found


def test_the_rollout_reads_only_fields_the_crd_keeps() -> None:
    crd = yaml.safe_load((REPO / "crds" / "shoppingguide.io_shoppingguides.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    known = crd_paths(spec["properties"]["rollout"], "rollout")
    seen: set[str] = set()
    rollout = Recording(
        {"steps": [{"weight": 10, "pause": "1m"}], "analysis": {"interval": "1m"}},
        "rollout",
        seen,
    )
    plan_from_spec(rollout)
    Thresholds.from_spec(rollout.get("analysis"))
    assert seen - known == set()
