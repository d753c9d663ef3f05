"""The trainer's result: one JSON object on stdout and in the pod's termination message.

Kubernetes keeps at most 4 KiB of a termination message, so `encode_termination_message`
drops optional detail until the document fits, and never drops what the operator's quality
gate reads (version, artifact, metrics, baseline, champion).
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096

REQUIRED_KEYS = ("version", "artifact", "metrics", "baseline", "data")
METRIC_NAMES = ("precision", "recall", "ndcg", "map")
# Optional sections, least important first: dropped in this order when space runs out.
OPTIONAL_KEYS = ("tuning", "timings", "params", "champion_error")


class ResultError(ValueError):
    """A training result that does not follow this contract."""


def metric_keys(k: int) -> tuple[str, ...]:
    return (*(f"{name}@{k}" for name in METRIC_NAMES), "coverage")


def validate(document: Any) -> dict[str, Any]:
    """Check the shape the operator relies on; return the document unchanged."""
    if not isinstance(document, dict):
        raise ResultError("training result must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise ResultError(f"training result lacks {', '.join(missing)}")
    schema = document.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ResultError(f"training result schema {schema} is not {SCHEMA_VERSION}")
    if not isinstance(document["version"], str) or not document["version"]:
        raise ResultError("training result 'version' must be a non-empty string")
    for section in ("metrics",):
        values = document[section]
        if not isinstance(values, dict) or not all(
            isinstance(v, int | float) for v in values.values()
        ):
            raise ResultError(f"training result '{section}' must map metric names to numbers")
    popularity = (
        document["baseline"].get("popularity") if isinstance(document["baseline"], dict) else None
    )
    if not isinstance(popularity, dict):
        raise ResultError("training result 'baseline.popularity' must be an object")
    return document


def encode_termination_message(document: dict[str, Any]) -> str:
    """Compact JSON of at most TERMINATION_MESSAGE_LIMIT bytes."""
    trimmed = dict(document)
    text = json.dumps(trimmed, separators=(",", ":"), sort_keys=True)
    for key in OPTIONAL_KEYS:
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            break
        if trimmed.pop(key, None) is not None:
            trimmed["truncated"] = True
            text = json.dumps(trimmed, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        raise ResultError(f"training result is {len(text.encode())} bytes even without detail")
    return text


def decode(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(f"training result is not JSON: {exc}") from exc
    return validate(document)


def encode_failure(reason: str) -> str:
    """The termination message of a failed run: the reason, cut to fit."""
    document = {"schema": SCHEMA_VERSION, "error": reason[: TERMINATION_MESSAGE_LIMIT - 64]}
    return json.dumps(document, separators=(",", ":"))
