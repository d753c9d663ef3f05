"""Recommendation ids that say who served them: any pod holding the key attributes feedback.

Behind a Service, the feedback on a list mostly reaches a pod that did not serve it, so a pod's
own memory of what it served cannot attribute it. The id carries the attribution instead: a
format byte, the issue time (seconds), a nonce, the cohort and the model version, followed by
a 128-bit keyed BLAKE2b of all of it under a key every serving pod of a guide shares (a Secret
the operator creates). Clients cannot forge or alter an id without the key;
an id older than the horizon, from another key, or altered in any way counts as `unknown`.
The id is URL-safe base64 without padding, about 70 characters for the trainer's version names.

Keyed BLAKE2b (RFC 7693's MAC mode), not HMAC-SHA256, and a nonce from a counter, not from
os.urandom: an id is issued on the event loop for every answer, and both OpenSSL's HMAC and
getrandom release the GIL, so each handed it to a busy scoring thread and then waited to get it
back. With a scoring thread at work, an HMAC id took 12 us on average and 232 us at p99; a
BLAKE2b one, which keeps the GIL for a short payload, takes 1.9 and 4.9 us. The nonce needs
only to be unique, the MAC makes ids unforgeable: a random prefix per process and a counter.
Ids of format 1 (HMAC-SHA256) still verify until they expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shopping_guide_contracts.routing import Cohort

from ..errors import ShoppingGuideError

log = logging.getLogger(__name__)

FORMAT = 2  # keyed BLAKE2b
HMAC_FORMAT = 1  # HMAC-SHA256: no longer issued, verified until its ids expire
MIN_KEY_BYTES = 32
MAC_BYTES = 16
NONCE_BYTES = 8
# Feedback on a list older than this is not attributed: purchases days later still count.
MAX_AGE_SECONDS = 7 * 24 * 3600.0
# Ids issued a little "in the future" are another pod's clock, not a forgery.
CLOCK_SKEW_SECONDS = 300.0
_HEADER = struct.Struct(">BI8sBB")  # format, issued at, nonce, cohort, version length
_COHORTS: tuple[Cohort, ...] = ("stable", "canary")

Outcome = Literal["verified", "invalid", "expired"]


class AttributionKeyError(ShoppingGuideError, ValueError):
    """An attribution key file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Attribution:
    """What a recommendation id says about the list it names; "unknown" unless verified."""

    outcome: Outcome
    model_version: str = "unknown"
    cohort: str = "unknown"
    issued_at: float | None = None


INVALID = Attribution("invalid")


def load_key(path: Path) -> bytes:
    """The key in a file (a mounted Secret's key), surrounding whitespace removed."""
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise AttributionKeyError(
            f"attribution key {path} holds {len(key)} bytes, at least {MIN_KEY_BYTES} needed"
        )
    return key


class Attributor:
    """Issues and verifies recommendation ids under one key."""

    def __init__(
        self,
        key: bytes,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise AttributionKeyError(f"an attribution key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        # BLAKE2b takes keys of at most 64 bytes: the Secret's bytes hashed to 32.
        self._blake_key = hashlib.blake2b(key, digest_size=32, person=b"sg-attribution").digest()
        self.max_age = max_age
        self.clock = clock
        self._nonces: tuple[int, bytes, itertools.count[int]] | None = None

    @classmethod
    def ephemeral(cls) -> Attributor:
        """A random key of this process only: ids from other processes count as unknown."""
        log.warning(
            "no attribution key file: feedback is attributed only by this process "
            "(give every server of a guide the same --attribution-key-file)"
        )
        return cls(secrets.token_bytes(MIN_KEY_BYTES))

    def _mac(self, payload: bytes) -> bytes:
        if payload[0] == HMAC_FORMAT:
            return hmac.digest(self._key, payload, "sha256")[:MAC_BYTES]
        return hashlib.blake2b(payload, digest_size=MAC_BYTES, key=self._blake_key).digest()

    def _nonce(self) -> bytes:
        """Unique per id: a random prefix of this process, then a counter (from a random
        start, wrapping after 2**32 ids). Drawn per process, since every worker gets its own
        copy of the supervisor's Attributor."""
        if self._nonces is None or self._nonces[0] != os.getpid():
            start = int.from_bytes(secrets.token_bytes(4), "big")
            self._nonces = os.getpid(), secrets.token_bytes(4), itertools.count(start)
        _, prefix, counter = self._nonces
        return prefix + (next(counter) & 0xFFFFFFFF).to_bytes(4, "big")

    def issue(self, model_version: str, cohort: Cohort) -> str:
        version = model_version.encode()
        header = _HEADER.pack(
            FORMAT, int(self.clock()), self._nonce(), _COHORTS.index(cohort), len(version)
        )
        payload = header + version
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def verify(self, token: str) -> Attribution:
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            return INVALID
        if len(raw) < _HEADER.size + MAC_BYTES:
            return INVALID
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return INVALID
        fmt, issued, _, cohort, length = _HEADER.unpack_from(payload)
        if (
            fmt not in (HMAC_FORMAT, FORMAT)
            or cohort >= len(_COHORTS)
            or len(payload) != _HEADER.size + length
        ):
            return INVALID
        age = self.clock() - issued
        if age < -CLOCK_SKEW_SECONDS:
            return INVALID
        if age > self.max_age:
            return Attribution("expired", issued_at=float(issued))
        version = payload[_HEADER.size :].decode()
        return Attribution("verified", version, _COHORTS[cohort], float(issued))
