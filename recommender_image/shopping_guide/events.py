"""Reading interaction events from CSV, TSV, JSON Lines and Parquet files.

Everything stays columnar (Arrow, then numpy): ten million rows never become ten million Python
objects. Every problem is reported with the file, the row and the column, and the opt-in
`skip` policy drops invalid rows and counts them by reason instead.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import lzma
import math
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .errors import DataError

Format = Literal["csv", "tsv", "jsonl", "parquet"]
InvalidPolicy = Literal["error", "skip"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "parquet")

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bz2",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclass(frozen=True)
class EventSchema:
    """Where each field lives in the input, and how rows turn into weights."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    event_col: str | None = None
    weight_col: str | None = None
    time_col: str | None = None
    event_weights: Mapping[str, float] = field(default_factory=dict)
    time_format: str | None = None
    # An order or session id: rows that share one were bought (or viewed) together.
    basket_col: str | None = None

    def columns(self) -> list[str]:
        optional = (self.event_col, self.weight_col, self.time_col, self.basket_col)
        return [self.user_col, self.item_col, *(c for c in optional if c)]


@dataclass
class Events:
    """Valid rows, columnar. `weight` already includes the event-type weight."""

    users: pa.Array
    items: pa.Array
    weight: npt.NDArray[np.float64]
    timestamp: npt.NDArray[np.int64] | None
    rows_read: int
    skipped: Counter[str]
    filtered: int
    # The basket id of each row (null where the row has none), with a basket column.
    baskets: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.weight)

    def without_users(self, user_ids: list[str]) -> Events:
        keep = pc.invert(pc.is_in(self.users, value_set=pa.array(user_ids, pa.string())))
        return self.where(np.asarray(keep))

    def where(self, mask: npt.NDArray[np.bool_]) -> Events:
        """The rows where `mask` is true; the others count as filtered."""
        keep = pa.array(mask)
        return Events(
            users=pc.filter(self.users, keep),
            items=pc.filter(self.items, keep),
            weight=self.weight[mask],
            timestamp=None if self.timestamp is None else self.timestamp[mask],
            rows_read=self.rows_read,
            skipped=self.skipped,
            filtered=self.filtered + int((~mask).sum()),
            baskets=None if self.baskets is None else pc.filter(self.baskets, keep),
        )


def detect_format(path: Path) -> Format:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".xz", ".bz2", ".zst")]
    last = suffixes[-1] if suffixes else ""
    by_suffix: dict[str, Format] = {
        ".csv": "csv",
        ".tsv": "tsv",
        ".tab": "tsv",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "jsonl",
        ".parquet": "parquet",
        ".pq": "parquet",
    }
    if last not in by_suffix:
        raise DataError(
            f"cannot tell the format from the name; pass --format ({'|'.join(FORMATS)})", path
        )
    return by_suffix[last]


def _open(path: Path) -> IO[bytes]:
    """A decompressing byte stream, whatever the compression (found by magic bytes)."""
    try:
        with path.open("rb") as probe:
            head = probe.read(6)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path) from exc
    codec = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if codec == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "xz":
        return lzma.open(path, "rb")
    if codec == "bz2":
        return bz2.open(path, "rb")
    if codec == "zstd":
        return pa.input_stream(str(path), compression="zstd")  # type: ignore[no-any-return]
    return path.open("rb")


def read_table(
    path: Path, schema: EventSchema, fmt: Format | None, policy: InvalidPolicy
) -> tuple[pa.Table, int]:
    """Read the needed columns as a table; returns it and the count of malformed lines skipped."""
    return read_columns(path, schema.columns(), fmt, policy)


def read_columns(
    path: Path, columns: list[str], fmt: Format | None, policy: InvalidPolicy
) -> tuple[pa.Table, int]:
    """Any of the supported files, these columns only (text columns as strings)."""
    fmt = fmt or detect_format(path)
    if not path.exists():
        raise DataError("file not found", path)
    try:
        if fmt == "parquet":
            return _read_parquet(path, columns), 0
        if fmt == "jsonl":
            return _read_jsonl(path, columns), 0
        return _read_delimited(path, columns, "\t" if fmt == "tsv" else ",", policy)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise DataError(f"cannot decompress or read: {exc}", path) from exc


def _check_columns(path: Path, wanted: list[str], present: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(
            f"missing column {', '.join(repr(c) for c in missing)}; "
            f"the file has {', '.join(repr(c) for c in present) or 'no columns'}",
            path,
            column=missing[0],
        )


def _read_delimited(
    path: Path, columns: list[str], delimiter: str, policy: InvalidPolicy
) -> tuple[pa.Table, int]:
    with _open(path) as stream:
        header = stream.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if not header.strip():
            raise DataError("file is empty (no header line)", path)
    present = [name.strip().strip('"') for name in header.split(delimiter)]
    _check_columns(path, columns, present)
    malformed: list[int] = []

    def on_invalid(row: Any) -> str:
        malformed.append(row.number or 0)
        return "skip"

    def read(use_threads: bool) -> pa.Table:
        with _open(path) as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=use_threads, block_size=8 << 20),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns,
                    column_types=dict.fromkeys(columns, pa.string()),
                    strings_can_be_null=True,
                ),
            )

    try:
        table = read(use_threads=True)
        if malformed and policy == "error":
            # Threaded parsing does not know line numbers: parse again serially to name it.
            malformed.clear()
            read(use_threads=False)
            raise DataError(
                f"malformed line: expected {len(present)} fields", path, line=malformed[0]
            )
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot parse: {exc}", path) from exc
    return table, len(malformed)


def _read_jsonl(path: Path, columns: list[str]) -> pa.Table:
    try:
        with _open(path) as stream:
            table = pajson.read_json(
                stream, parse_options=pajson.ParseOptions(newlines_in_values=False)
            )
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "Empty JSON file" in message or table_is_empty(path):
            raise DataError("file is empty", path) from exc
        raise DataError(f"cannot parse JSON Lines: {message}", path) from exc
    _check_columns(path, columns, table.column_names)
    return table.select(columns)


def table_is_empty(path: Path) -> bool:
    with _open(path) as stream:
        return not stream.read(4096).strip()


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        present = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path) from exc
    _check_columns(path, columns, present)
    return pq.read_table(path, columns=columns)


class _Validity:
    """Collects invalid rows per reason; the first one becomes the error in strict mode."""

    def __init__(self, path: Path, rows: int, header_lines: int) -> None:
        self.path = path
        self.invalid = np.zeros(rows, dtype=bool)
        self.reasons: Counter[str] = Counter()
        self.first: tuple[int, str, str, Any] | None = None
        self.header_lines = header_lines

    def mark(self, bad: npt.NDArray[np.bool_], column: str, reason: str, values: pa.Array) -> None:
        new = bad & ~self.invalid
        count = int(new.sum())
        if not count:
            return
        self.invalid |= bad
        self.reasons[f"{column}: {reason}"] += count
        row = int(np.argmax(new))
        if self.first is None or row < self.first[0]:
            self.first = (row, column, reason, values[row].as_py())

    def raise_first(self) -> None:
        if self.first is None:
            return
        row, column, reason, value = self.first
        raise DataError(
            f"{reason} (value {value!r}); pass --on-invalid skip to drop such rows",
            self.path,
            row=row + 1,
            line=row + 1 + self.header_lines,
            column=column,
        )


def _null_mask(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    mask = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        mask = pc.or_(mask, pc.equal(pc.utf8_trim_whitespace(values), ""))
    return np.asarray(pc.fill_null(mask, True))


def _as_ids(values: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_floating(values.type):
        # Parquet/JSON integers with nulls arrive as floats: 12346.0 must stay "12346".
        whole = pc.fill_null(pc.equal(values, pc.floor(values)), True)
        if pc.all(whole).as_py():
            return pc.cast(pc.cast(values, pa.int64()), pa.string())
    return pc.cast(values, pa.string())


def _as_float(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, npt.NDArray[np.bool_]]:
    """Floats and a mask of unparsable values (nulls are reported separately)."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numbers = pc.cast(values, pa.float64())
        bad = np.zeros(len(values), dtype=bool)
    else:
        text = pc.cast(values, pa.string())
        ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER), True)
        bad = ~np.asarray(ok)
        numbers = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
    finite = np.asarray(pc.fill_null(pc.is_finite(numbers), True))
    return numbers, bad | ~finite


def _as_epoch_seconds(
    values: pa.ChunkedArray, time_format: str | None
) -> tuple[pa.ChunkedArray, npt.NDArray[np.bool_]]:
    """Seconds since the epoch (UTC), and which values could not be read. Text is read as ISO
    8601 or one of _TIME_FORMATS, with or without fractional seconds and a UTC offset (`Z`,
    `+02:00`, `+0200`), in any mix: exports with offsets are common. A time without an offset
    is taken to be UTC."""
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        seconds = pc.cast(
            pc.cast(values, pa.timestamp("s", tz=getattr(kind, "tz", None))), pa.int64()
        )
        return seconds, np.zeros(len(values), dtype=bool)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return pc.cast(values, pa.int64(), safe=False), np.zeros(len(values), dtype=bool)
    text = pc.cast(values, pa.string())
    if time_format is None:
        # Arrow's own ISO 8601 parser, vectorised, when every value has the same form.
        for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC"), pa.timestamp("ns"),
                       pa.timestamp("ns", tz="UTC")):  # fmt: skip
            try:
                parsed = pc.cast(text, target)
            except pa.ArrowInvalid:
                continue
            return _floor_seconds(parsed), np.zeros(len(text), dtype=bool)
        if pc.all(pc.fill_null(pc.match_substring_regex(text, r"^\s*\d+\s*$"), True)).as_py():
            return pc.cast(text, pa.int64()), np.zeros(len(text), dtype=bool)
    formats = (time_format,) if time_format else _TIME_FORMATS
    parsed = [pc.strptime(text, format=f, unit="s", error_is_null=True) for f in formats]
    combined = pc.cast(pc.coalesce(*parsed) if len(parsed) > 1 else parsed[0], pa.int64())
    if time_format is None:
        combined = _iso_one_by_one(text, combined)
    bad = np.asarray(pc.and_(pc.is_null(combined), pc.is_valid(text)))
    return combined, bad


def _floor_seconds(parsed: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whole seconds since the epoch, fractions floored (before 1970 too)."""
    whole = pc.floor_temporal(parsed, unit="second")
    return pc.cast(pc.cast(whole, pa.timestamp("s", tz=parsed.type.tz)), pa.int64())


def _iso_one_by_one(text: pa.ChunkedArray, seconds: pa.ChunkedArray) -> pa.ChunkedArray:
    """The values still unread, each distinct one through Python's ISO 8601 parser: a column
    that mixes forms (offsets on some rows only, fractional seconds with an offset)."""
    unread = pc.and_(pc.is_null(seconds), pc.is_valid(text))
    if not pc.any(unread).as_py():
        return seconds
    distinct = pc.unique(pc.filter(text, unread)).to_pylist()
    found: list[int | None] = []
    for value in distinct:
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            found.append(None)
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        found.append(math.floor(when.timestamp()))
    at = pc.index_in(text, value_set=pa.array(distinct, pa.string()))
    looked_up = pc.take(pa.array(found, pa.int64()), at)
    return pc.coalesce(seconds, looked_up)


def load_events(
    path: Path,
    schema: EventSchema,
    fmt: Format | None = None,
    policy: InvalidPolicy = "error",
) -> Events:
    """Read, validate and weight the events of one file."""
    fmt = fmt or detect_format(path)
    table, malformed = read_table(path, schema, fmt, policy)
    rows = table.num_rows
    if rows == 0 and not malformed:
        raise DataError("file has a header but no rows", path)
    header_lines = 1 if fmt in ("csv", "tsv") else 0
    check = _Validity(path, rows, header_lines)
    if malformed:
        check.reasons["malformed line"] += malformed

    users = _as_ids(table.column(schema.user_col))
    items = _as_ids(table.column(schema.item_col))
    for name, ids in ((schema.user_col, users), (schema.item_col, items)):
        check.mark(_null_mask(ids), name, "missing value", ids)

    weight = np.ones(rows, dtype=np.float64)
    if schema.event_col:
        events = pc.cast(table.column(schema.event_col), pa.string())
        check.mark(_null_mask(events), schema.event_col, "missing event type", events)
        names = list(schema.event_weights)
        if not names:
            raise DataError("an event column needs event weights (e.g. view=1,purchase=10)", path)
        index = pc.index_in(events, value_set=pa.array(names, pa.string()))
        known = np.asarray(pc.is_valid(index))
        check.mark(
            ~known & ~_null_mask(events),
            schema.event_col,
            f"event type without a weight (known: {', '.join(names)})",
            events,
        )
        table_weights = np.array([schema.event_weights[n] for n in names], dtype=np.float64)
        weight *= table_weights[np.asarray(pc.fill_null(index, 0), dtype=np.int64)]

    if schema.weight_col:
        raw = table.column(schema.weight_col)
        check.mark(_null_mask(raw), schema.weight_col, "missing weight", raw)
        numbers, bad = _as_float(raw)
        check.mark(bad & ~_null_mask(raw), schema.weight_col, "not a finite number", raw)
        weight *= np.asarray(pc.fill_null(numbers, 0.0), dtype=np.float64)

    timestamp: npt.NDArray[np.int64] | None = None
    if schema.time_col:
        raw = table.column(schema.time_col)
        check.mark(_null_mask(raw), schema.time_col, "missing timestamp", raw)
        seconds, bad = _as_epoch_seconds(raw, schema.time_format)
        check.mark(bad, schema.time_col, "unparsable timestamp", raw)
        timestamp = np.asarray(pc.fill_null(seconds, 0), dtype=np.int64)

    # A row without a basket id still counts as an interaction; it is only in no basket.
    baskets = None if not schema.basket_col else _as_ids(table.column(schema.basket_col))

    if policy == "error":
        check.raise_first()
    keep = ~check.invalid
    # Returns, cancellations and zero-weight event types carry no positive signal.
    nonpositive = keep & (weight <= 0)
    keep &= ~nonpositive
    if not keep.any():
        reasons = check.reasons + Counter({"non-positive weight": int(nonpositive.sum())})
        detail = ", ".join(f"{n} x {r}" for r, n in reasons.most_common(3) if n)
        raise DataError(f"no usable rows ({detail})", path)
    mask = pa.array(keep)
    return Events(
        users=pc.filter(users, mask).combine_chunks(),
        items=pc.filter(items, mask).combine_chunks(),
        weight=weight[keep],
        timestamp=None if timestamp is None else timestamp[keep],
        rows_read=rows + malformed,
        skipped=check.reasons,
        filtered=int(nonpositive.sum()),
        baskets=None if baskets is None else pc.filter(baskets, mask).combine_chunks(),
    )
