"""Writes the ShoppingGuide spec reference (Markdown) from the CRD's schema: one source.

python hack/crd_reference.py > docs/reference.md
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

CRD = Path(__file__).resolve().parents[1] / "crds" / "shoppingguide.io_shoppingguides.yaml"


def rows(schema: dict[str, Any], path: str) -> list[tuple[str, str, str, str]]:
    out = []
    for name, prop in sorted((schema.get("properties") or {}).items()):
        here = f"{path}.{name}" if path else name
        kind = prop.get("type", "")
        if kind == "array" and isinstance(prop.get("items"), dict):
            kind = f"array of {prop['items'].get('type', 'object')}"
        if "enum" in prop:
            kind += " (" + " \\| ".join(str(v) for v in prop["enum"]) + ")"
        default = prop.get("default")
        flat = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...")
        shown = "" if default is None else f"`{flat.strip()}`"
        description = " ".join(str(prop.get("description", "")).split())
        out.append((here, kind, shown, description))
        if prop.get("type") == "object":
            out += rows(prop, here)
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            out += rows(prop["items"], here + "[]")
    return out


def main() -> int:
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    print("# ShoppingGuide reference\n")
    print(
        f"`{crd['spec']['group']}/{version['name']}`, kind `{crd['spec']['names']['kind']}`, "
        f"short name `{crd['spec']['names']['shortNames'][0]}`. Generated from "
        "`crds/shoppingguide.io_shoppingguides.yaml` by `hack/crd_reference.py`.\n"
    )
    print("| field | type | default | description |\n| --- | --- | --- | --- |")
    for field, kind, default, description in rows(spec, "spec"):
        print(f"| `{field}` | {kind} | {default} | {description} |")
    rules = _rules(spec)
    if rules:
        print("\n## Validation at apply time\n")
        for message in sorted(set(rules)):
            print(f"- {message}")
    return 0


def _rules(schema: dict[str, Any]) -> list[str]:
    found = [r["message"] for r in schema.get("x-kubernetes-validations", []) if "message" in r]
    for prop in (schema.get("properties") or {}).values():
        found += _rules(prop)
    if isinstance(schema.get("items"), dict):
        found += _rules(schema["items"])
    return found


if __name__ == "__main__":
    sys.exit(main())
