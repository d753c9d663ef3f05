"""The trainer's result: one JSON object on stdout and in the pod's termination message.

Kubernetes keeps at most 4 KiB of a termination message, so `encode_termination_message`
drops optional detail until the document fits, and never drops what the operator's quality
gate reads (version, artifact, metrics, baseline, champion).
"""

from __future__ import annotations

import json
from typing import Any

from .versions import VersionError, validate_version

SCHEMA_VERSION = 1
TERMINATION_MESSAGE_LIMIT = 4096

REQUIRED_KEYS = ("version", "artifact", "metrics", "baseline", "data")
METRIC_NAMES = ("precision", "recall", "ndcg", "map")
# Optional sections, least important first: dropped in this order when space runs out.
OPTIONAL_KEYS = ("tuning", "trending", "bought_together", "timings", "params", "champion_error")


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
    try:
        validate_version(document["version"], "training result 'version'")
    except VersionError as exc:
        raise ResultError(str(exc)) from exc
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
    """The termination message of a failed run: the reason, cut to fit.

    The whole document is at most TERMINATION_MESSAGE_LIMIT bytes of UTF-8 (write it as
    UTF-8). Non-ASCII text is kept as it is rather than \\u-escaped, so more of the reason
    fits, and the cut falls between characters, never inside one; a lone surrogate (an
    undecodable file name) becomes U+FFFD.
    """
    reason = reason.encode("utf-8", "replace").decode("utf-8")

    def encoded(text: str, cut: bool) -> bytes:
        document: dict[str, Any] = {"schema": SCHEMA_VERSION, "error": text}
        if cut:
            document["truncated"] = True
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    if len(encoded(reason, False)) <= TERMINATION_MESSAGE_LIMIT:
        return encoded(reason, False).decode("utf-8")
    # The longest prefix that fits: the size only grows with the prefix, so bisect on it.
    low, high = 0, len(reason)
    while low < high:
        middle = (low + high + 1) // 2
        if len(encoded(reason[:middle], True)) <= TERMINATION_MESSAGE_LIMIT:
            low = middle
        else:
            high = middle - 1
    return encoded(reason[:low], True).decode("utf-8")
