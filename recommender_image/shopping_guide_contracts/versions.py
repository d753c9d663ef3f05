"""The one grammar of model version names, shared by the trainer, the server and the operator.

A version names a directory of the model store, a routing entry, a Prometheus label value and
(through the CRD) `spec.model.pinnedVersion`, so it must be safe as all of them: lowercase
letters, digits, '.', '_' and '-', 1 to 63 characters, starting and ending with a letter or a
digit, and never `..` (no way out of the store, and no hidden or relative directory). The names
the trainer mints (`v20261201-115447-a1b2c3`) follow it.
"""

from __future__ import annotations

import re

MAX_LENGTH = 63
# The CRD's pattern for spec.model.pinnedVersion is this exact string, and its CEL rule this
# one (a test compares both): the API server's regular expressions (RE2) have no lookahead, so
# "no `..`" is a rule of its own.
VERSION_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
VERSION_CEL_RULE = "!self.contains('..')"
_VERSION = re.compile(VERSION_PATTERN)


class VersionError(ValueError):
    """A model version name that does not follow the grammar."""


def is_valid_version(text: object) -> bool:
    return isinstance(text, str) and bool(_VERSION.fullmatch(text)) and ".." not in text


def validate_version(text: object, what: str = "model version") -> str:
    """`text` unchanged when it is a valid version name; VersionError otherwise."""
    if not isinstance(text, str):
        raise VersionError(f"{what} must be a string, got {type(text).__name__}")
    if not is_valid_version(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise VersionError(
            f"{what} {shown!r} is not a version name: 1 to {MAX_LENGTH} lowercase letters, "
            "digits, '.', '_' or '-', starting and ending with a letter or digit, without '..'"
        )
    return text
