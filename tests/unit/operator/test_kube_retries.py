"""Which failed requests ApiCluster repeats, how often, and how long it waits in between."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from shopping_guide_operator.kube import MAX_WAIT, ApiError, ConflictError, with_retries


def refusal(status: int, retry_after: str | None = None) -> ApiException:
    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"kind": "Status", "message": f"said {status}"})
    exc.headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return exc


class Server:
    """Fails with each of `failures` in turn, then answers."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.slept: list[float] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"

    def run(self, idempotent: bool) -> str:
        jitter: Callable[[], float] = lambda: 1.0  # noqa: E731 - the most jitter
        return with_retries(self, idempotent, self.slept.append, jitter)


def test_throttling_waits_for_retry_after() -> None:
    server = Server(refusal(429, "2"))
    assert server.run(idempotent=True) == "ok"
    assert (server.calls, server.slept) == (2, [2.0])


def test_a_long_retry_after_is_capped() -> None:
    server = Server(refusal(429, "3600"))
    server.run(idempotent=True)
    assert server.slept == [MAX_WAIT]


def test_server_errors_back_off_exponentially_with_jitter_three_attempts_at_most() -> None:
    server = Server(refusal(503), refusal(500), refusal(504))
    with pytest.raises(ApiError) as raised:
        server.run(idempotent=True)
    assert (raised.value.status, raised.value.message) == (504, "said 504")
    assert server.calls == 3
    assert server.slept == pytest.approx([0.3, 0.6])  # 0.2s, 0.4s, plus half of each


def test_connection_failures_and_timeouts_of_reads_are_retried() -> None:
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out")  # type: ignore[arg-type]
    server = Server(timeout, urllib3.exceptions.ProtocolError("reset"))
    assert server.run(idempotent=True) == "ok"
    assert server.calls == 3


def test_a_create_is_not_repeated_when_it_may_have_happened() -> None:
    for failure in (
        refusal(500),
        refusal(504),
        urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"),  # type: ignore[arg-type]
    ):
        server = Server(failure)
        with pytest.raises((ApiError, urllib3.exceptions.HTTPError)):
            server.run(idempotent=False)
        assert server.calls == 1


def test_a_create_is_repeated_when_it_surely_did_not_happen() -> None:
    never_connected = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "/api",
        urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    )
    server = Server(refusal(429, "1"), never_connected)
    assert server.run(idempotent=False) == "ok"
    assert server.calls == 3


def test_client_errors_are_not_retried_and_409_is_a_conflict() -> None:
    server = Server(refusal(409))
    with pytest.raises(ConflictError):
        server.run(idempotent=True)
    server = Server(refusal(422))
    with pytest.raises(ApiError) as raised:
        server.run(idempotent=True)
    assert not isinstance(raised.value, ConflictError)
    assert server.calls == 1
