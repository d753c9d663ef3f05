"""Does a live object already hold what we want? Pure, so steady state costs zero writes.

`holds(desired, live)` is true when every field we set has the same value in the live
object. Fields that other actors add (defaults, status, annotations of other controllers, a
sidecar injected by a webhook) do not count as drift: server-side apply would keep them
anyway, so reacting to them would only rewrite the same object forever.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number (the API server rewrites `1000m` as `1`)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        # Through str: Decimal(0.1) would be the float's binary expansion, not 0.1.
        parsed: Decimal = parse_quantity(str(value).strip())  # type: ignore[no-untyped-call]
    except (ValueError, ArithmeticError):
        return None
    return parsed


def _same_scalar(desired: Any, live: Any) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, str) and isinstance(live, str):
        return False if desired == live else _same_quantity(desired, live)
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return not isinstance(desired, bool) and not isinstance(live, bool) and desired == live
    return _same_quantity(desired, live)


def _same_quantity(desired: Any, live: Any) -> bool:
    a, b = quantity(desired), quantity(live)
    return a is not None and a == b


def _holds_list(desired: list[Any], live: list[Any]) -> bool:
    named = all(isinstance(d, dict) and "name" in d for d in desired)
    if named and desired and all(isinstance(item, dict) for item in live):
        # Map-like lists (containers, env, volumes, ports): by name, extra entries allowed.
        by_name = {item.get("name"): item for item in live}
        return all(holds(d, by_name.get(d["name"])) for d in desired)
    if len(desired) != len(live):
        return False
    return all(holds(d, item) for d, item in zip(desired, live, strict=True))


def holds(desired: Any, live: Any) -> bool:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            # An empty object we set may come back absent.
            return live is None and not desired
        return all(holds(value, live.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and _holds_list(desired, live)
    return _same_scalar(desired, live)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; removed keys become null."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch
