"""Recommendation ids: any holder of the key reads version and cohort back; nobody else can
make or alter one, and old ones expire."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shopping_guide.serving.attribution import (
    MAX_AGE_SECONDS,
    AttributionKeyError,
    Attributor,
    load_key,
)

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_another_holder_of_the_key_reads_version_and_cohort_back() -> None:
    clock = Clock()
    token = Attributor(KEY, clock=clock).issue("v20261201-115447-a1b2c3", "canary")
    verdict = Attributor(KEY, clock=clock).verify(token)
    assert (verdict.outcome, verdict.model_version, verdict.cohort) == (
        "verified", "v20261201-115447-a1b2c3", "canary",
    )  # fmt: skip
    assert verdict.issued_at == clock.now
    assert len(token) < 80 and token.isascii() and "=" not in token and "/" not in token


def test_ids_are_unique() -> None:
    signer = Attributor(KEY)
    assert len({signer.issue("v1", "stable") for _ in range(1000)}) == 1000


def test_any_altered_byte_or_another_key_makes_it_invalid() -> None:
    signer = Attributor(KEY)
    token = signer.issue("v1", "stable")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for position in range(len(raw)):
        altered = bytearray(raw)
        altered[position] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        assert signer.verify(forged).outcome == "invalid", position
    assert Attributor(b"x" * 32).verify(token).outcome == "invalid"
    assert signer.verify(token).outcome == "verified"


@pytest.mark.parametrize("garbage", ["", "r", "0" * 32, "!!!!", "é" * 40, "a" * 500])
def test_garbage_is_invalid(garbage: str) -> None:
    verdict = Attributor(KEY).verify(garbage)
    assert (verdict.outcome, verdict.model_version, verdict.cohort) == (
        "invalid", "unknown", "unknown",
    )  # fmt: skip


def test_an_old_id_expires_and_one_from_the_future_is_refused() -> None:
    clock = Clock()
    signer = Attributor(KEY, clock=clock)
    token = signer.issue("v1", "stable")
    clock.now += MAX_AGE_SECONDS - 1
    assert signer.verify(token).outcome == "verified"
    clock.now += 2
    assert signer.verify(token).model_version == "unknown"
    assert signer.verify(token).outcome == "expired"
    early = Attributor(KEY, clock=Clock(clock.now + 3600)).issue("v1", "stable")
    assert signer.verify(early).outcome == "invalid"


def test_keys_are_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"  " + KEY + b"\n")
    assert load_key(path) == KEY
    path.write_bytes(b"short\n")
    with pytest.raises(AttributionKeyError, match="at least 32"):
        load_key(path)
    with pytest.raises(AttributionKeyError):
        Attributor(b"short")


def test_ids_of_the_previous_format_still_verify() -> None:
    """Format 1 signed with HMAC-SHA256: lists served before an upgrade keep their feedback."""
    import hmac
    import struct

    clock = Clock()
    payload = struct.pack(">BI8sBB", 1, int(clock.now), b"n" * 8, 1, 2) + b"v1"
    mac = hmac.digest(KEY, payload, "sha256")[:16]
    token = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
    verdict = Attributor(KEY, clock=clock).verify(token)
    assert (verdict.outcome, verdict.model_version, verdict.cohort) == ("verified", "v1", "canary")
    forged = base64.urlsafe_b64encode(payload + bytes(16)).rstrip(b"=").decode()
    assert Attributor(KEY, clock=clock).verify(forged).outcome == "invalid"


def test_copies_in_other_processes_issue_other_ids() -> None:
    """Each worker holds a copy of the supervisor's Attributor: their nonces must differ."""
    import multiprocessing
    import pickle

    signer = Attributor(KEY, clock=Clock())
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        tokens = pool.map(_issue_many, [pickle.dumps(signer)] * 2)
    assert len(set(tokens[0]) | set(tokens[1])) == 2000


def _issue_many(pickled: bytes) -> list[str]:
    import pickle

    signer: Attributor = pickle.loads(pickled)
    return [signer.issue("v1", "stable") for _ in range(1000)]
