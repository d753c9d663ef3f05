"""The Online Retail sample ships with the project, intact and attributed."""

from __future__ import annotations

import hashlib

from tests.conftest import ONLINE_RETAIL

SHA256 = "739d09cf7344ad81b9a8e28db9cd32a427fc20ad9b87d5854713d53015a80a4b"


def test_the_sample_is_the_published_file() -> None:
    assert hashlib.sha256(ONLINE_RETAIL.read_bytes()).hexdigest() == SHA256


def test_the_sample_carries_its_attribution_and_checksum() -> None:
    readme = (ONLINE_RETAIL.parent / "README.md").read_text()
    assert "https://doi.org/10.24432/C5BW33" in readme
    assert "CC BY 4.0" in readme
    assert SHA256 in readme
