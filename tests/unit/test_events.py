"""Loading events: formats, compression, columns, weights, and a corpus of bad files."""

from __future__ import annotations

import gzip
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shopping_guide.errors import DataError
from shopping_guide.events import EventSchema, detect_format, load_events

CSV = (
    "user,item,event,qty,ts\n"
    "007,A-1,view,1,2024-01-01 10:00\n"
    "007,A-1,purchase,2,2024-01-02 10:00\n"
    "u2,B,cart,1,2024-01-03T11:30:00\n"
)
SCHEMA = EventSchema(
    user_col="user",
    item_col="item",
    event_col="event",
    weight_col="qty",
    time_col="ts",
    event_weights={"view": 1, "cart": 4, "purchase": 10},
)


def _rows() -> list[dict[str, object]]:
    return [
        {"user": "007", "item": "A-1", "event": "view", "qty": 1, "ts": "2024-01-01 10:00"},
        {"user": "007", "item": "A-1", "event": "purchase", "qty": 2, "ts": "2024-01-02 10:00"},
        {"user": "u2", "item": "B", "event": "cart", "qty": 1, "ts": "2024-01-03T11:30:00"},
    ]


def _check(events_users: list[str], weights: list[float], stamps: np.ndarray | None) -> None:
    assert events_users == ["007", "007", "u2"]  # string ids keep their leading zeros
    assert weights == [1.0, 20.0, 4.0]  # event weight x quantity
    assert stamps is not None
    assert stamps[1] - stamps[0] == 86_400


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz", "e.csv.xz"])
def test_csv_plain_and_compressed(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    suffix = name.rsplit(".", 1)[-1]
    if suffix == "gz":
        path.write_bytes(gzip.compress(CSV.encode()))
    elif suffix == "xz":
        path.write_bytes(lzma.compress(CSV.encode()))
    else:
        path.write_text(CSV)
    events = load_events(path, SCHEMA)
    _check(events.users.to_pylist(), events.weight.tolist(), events.timestamp)
    assert events.rows_read == 3 and not events.skipped


def test_tsv(write_file: Callable[[str, str], Path]) -> None:
    events = load_events(write_file("e.tsv", CSV.replace(",", "\t")), SCHEMA)
    _check(events.users.to_pylist(), events.weight.tolist(), events.timestamp)


def test_jsonl_with_numeric_ids(write_file: Callable[[str, str], Path]) -> None:
    lines = [json.dumps({**r, "user": 7 if r["user"] == "007" else 8}) for r in _rows()]
    path = write_file("e.jsonl", "\n".join(lines) + "\n")
    events = load_events(path, SCHEMA)
    assert events.users.to_pylist() == ["7", "7", "8"]
    assert events.weight.tolist() == [1.0, 20.0, 4.0]


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {
            "user": ["007", "007", "u2"],
            "item": ["A-1", "A-1", "B"],
            "event": ["view", "purchase", "cart"],
            "qty": pa.array([1, 2, 1], pa.int32()),
            "ts": pa.array([1704103200, 1704189600, 1704281400], pa.timestamp("s")),
            "ignored": [1, 2, 3],
        }
    )
    pq.write_table(table, path)
    events = load_events(path, SCHEMA)
    _check(events.users.to_pylist(), events.weight.tolist(), events.timestamp)


def test_default_weight_is_one_per_row(write_file: Callable[[str, str], Path]) -> None:
    path = write_file("e.csv", "user_id,item_id\nu,i\nu,i\nv,j\n")
    events = load_events(path, EventSchema())
    assert events.weight.tolist() == [1.0, 1.0, 1.0]
    assert events.timestamp is None


def test_nonpositive_weights_are_filtered_not_errors(
    write_file: Callable[[str, str], Path],
) -> None:
    path = write_file("e.csv", "user_id,item_id,q\nu,i,3\nu,j,-2\nv,j,0\n")
    events = load_events(path, EventSchema(weight_col="q"))
    assert events.items.to_pylist() == ["i"]
    assert events.filtered == 2


def test_format_from_name_and_unknown_suffix(tmp_path: Path) -> None:
    assert detect_format(Path("x.tsv.gz")) == "tsv"
    assert detect_format(Path("x.ndjson")) == "jsonl"
    with pytest.raises(DataError, match="--format"):
        detect_format(tmp_path / "x.dat")


# A corpus of bad files: (name, content, schema, message, row, column)
BAD = [
    (
        "missing column",
        "user,thing\nu,i\n",
        EventSchema("user", "item"),
        "missing column 'item'",
        None,
        "item",
    ),
    ("empty file", "", EventSchema(), "empty", None, None),
    ("header only", "user_id,item_id\n", EventSchema(), "no rows", None, None),
    ("missing user", "user_id,item_id\nu,i\n,j\n", EventSchema(), "missing value", 2, "user_id"),
    (
        "bad weight",
        "user_id,item_id,w\nu,i,1\nu,j,2\nv,k,abc\n",
        EventSchema(weight_col="w"),
        "not a finite number",
        3,
        "w",
    ),
    (
        "infinite weight",
        "user_id,item_id,w\nu,i,inf\n",
        EventSchema(weight_col="w"),
        "not a finite number",
        1,
        "w",
    ),
    (
        "bad time",
        "user_id,item_id,t\nu,i,2024-01-01\nv,j,yesterday\n",
        EventSchema(time_col="t"),
        "unparsable timestamp",
        2,
        "t",
    ),
    (
        "unknown event",
        "user_id,item_id,e\nu,i,view\nv,j,wishlist\n",
        EventSchema(event_col="e", event_weights={"view": 1}),
        "without a weight",
        2,
        "e",
    ),
    ("malformed line", "user_id,item_id\nu,i\nv\n", EventSchema(), "malformed line", None, None),
]


@pytest.mark.parametrize(
    ("content", "schema", "message", "row", "column"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_files_name_file_row_and_column(
    write_file: Callable[[str, str], Path],
    content: str,
    schema: EventSchema,
    message: str,
    row: int | None,
    column: str | None,
) -> None:
    path = write_file("bad.csv", content)
    with pytest.raises(DataError, match=message) as caught:
        load_events(path, schema)
    error = caught.value
    assert error.path == str(path)
    assert str(path) in str(error)
    assert error.row == row
    assert error.column == column
    if row is not None:
        assert f"row {row} (line {row + 1})" in str(error)


def test_malformed_line_is_located(write_file: Callable[[str, str], Path]) -> None:
    path = write_file("bad.csv", "user_id,item_id\nu,i\nv\nw,k\n")
    with pytest.raises(DataError) as caught:
        load_events(path, EventSchema())
    assert caught.value.line == 3


def test_skip_policy_drops_and_counts_invalid_rows(write_file: Callable[[str, str], Path]) -> None:
    content = "user_id,item_id,w\nu,i,1\n,j,1\nv,k,abc\nv\nw,m,2\n"
    events = load_events(write_file("e.csv", content), EventSchema(weight_col="w"), policy="skip")
    assert events.users.to_pylist() == ["u", "w"]
    assert events.skipped == {
        "user_id: missing value": 1,
        "w: not a finite number": 1,
        "malformed line": 1,
    }
    assert events.rows_read == 5


def test_skip_policy_with_nothing_left_says_why(write_file: Callable[[str, str], Path]) -> None:
    with pytest.raises(DataError, match=r"no usable rows \(2 x user_id: missing value"):
        load_events(write_file("e.csv", "user_id,item_id\n,i\n,j\n"), EventSchema(), policy="skip")


def test_corrupt_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "e.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode())[:30])
    with pytest.raises(DataError, match=str(path)):
        load_events(path, SCHEMA)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found|cannot read"):
        load_events(tmp_path / "nope.csv", EventSchema())


MIDNIGHT_UTC = 1_790_812_800  # 2026-10-01T00:00:00Z


@pytest.mark.parametrize(
    "times",
    [
        ["2026-10-01T00:00:00+00:00", "2026-10-01T02:00:00+02:00"],  # every row with an offset
        ["2026-10-01T00:00:00Z", "2026-09-30T19:00:00-05:00"],
        ["2026-10-01T00:00:00.250+00:00", "2026-10-01T00:00:00.999Z"],  # fractions: floored
        ["2026-10-01T02:00:00+02:00", "2026-10-01 00:00:00"],  # offsets on some rows only
        ["2026-10-01 01:00:00+0100", "2026-10-01T00:00"],
    ],
    ids=["offsets", "zulu-and-negative", "fractions", "mixed", "compact-offset"],
)
def test_times_with_utc_offsets_are_read_as_the_instant_they_name(
    write_file: Callable[[str, str], Path], times: list[str]
) -> None:
    """Exports often carry offsets; a time without one is UTC."""
    rows = "".join(f"u{n},i{n},{t}\n" for n, t in enumerate(times))
    events = load_events(
        write_file("e.csv", "user_id,item_id,ts\n" + rows), EventSchema(time_col="ts")
    )
    assert events.timestamp is not None
    assert events.timestamp.tolist() == [MIDNIGHT_UTC] * len(times)


def test_an_unreadable_time_among_offsets_is_still_named(
    write_file: Callable[[str, str], Path],
) -> None:
    text = (
        "user_id,item_id,ts\nu,i,2026-10-01T00:00:00+02:00\nv,j,2026-10-01\nw,k,2026-13-01T00:00Z\n"
    )
    with pytest.raises(DataError, match=r"row 3 .*unparsable timestamp.*2026-13-01"):
        load_events(write_file("e.csv", text), EventSchema(time_col="ts"))
