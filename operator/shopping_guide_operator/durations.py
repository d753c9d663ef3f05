"""Durations as the CRD writes them, with Go's `time.ParseDuration` semantics.

One parser for the whole operator. A duration is a sequence of decimal numbers, each with a
unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), such as `30s`, `1.5h` or `1h30m`; `0` alone is
the only number without one. The CRD's fields are strings (`pattern: ([0-9]+(\\.[0-9]+)?(s|m|h))+`),
so a bare number such as `90` or `1h30` is refused, never guessed. Negative durations mean
nothing here and are refused too.
"""

from __future__ import annotations

import re

import durationpy

_GO_DURATION = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `30s`, `10m` or `1h30m`; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(
            f"not a duration: {text!r} (a duration is a string with units, e.g. 30s or 1h30m)"
        )
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        raise ValueError(
            f"not a duration: {text!r} (every number needs a unit: ns, us, ms, s, m or h, "
            "e.g. 30s, 10m, 1h30m)"
        )
    seconds = durationpy.from_str(text).total_seconds()
    if seconds < 0:
        raise ValueError(f"not a duration: {text!r} is negative")
    return float(seconds)
