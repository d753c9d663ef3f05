"""Errors a user can act on: each names the file, and where known the row and column."""

from __future__ import annotations

from pathlib import Path


class ShoppingGuideError(Exception):
    """Base of every error reported to the user as a one-line reason."""


class DataError(ShoppingGuideError, ValueError):
    """Input events (or another input file) that cannot be used as given."""

    def __init__(
        self,
        reason: str,
        path: Path | str | None = None,
        *,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.row = row
        self.line = line
        self.column = column
        where = [self.path] if self.path else []
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line not in (None, row) else ""))
        elif line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class ArtifactError(ShoppingGuideError):
    """A model artifact that is missing, corrupt, truncated or of another shape."""


class ConfigError(ShoppingGuideError, ValueError):
    """Parameters that do not fit the chosen algorithm or command."""
