"""One duration parser for the operator: Go's syntax, as the CRD's patterns write it."""

from __future__ import annotations

import pytest

from shopping_guide_operator.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1h30", "90", "ten minutes", "1d", "", "-5s", "1h 30m"])
def test_durations_need_a_unit_on_every_number(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_are_strings_as_the_crd_says() -> None:
    with pytest.raises(ValueError, match="a string with units"):
        parse_duration(45)  # type: ignore[arg-type]
