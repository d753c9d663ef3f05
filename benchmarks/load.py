"""An open-loop HTTP load generator: requests leave on a fixed Poisson schedule whatever the
server does, and each latency counts from the request's scheduled time, so a server that falls
behind is charged for the whole wait (no coordinated omission, unlike a closed-loop client).

wrk2 would do this but is not packaged; this client is plain asyncio protocols over HTTP/1.1
keep-alive connections (one request in flight per connection, more connections opened as
needed), cheap enough at a few thousand requests per second to leave the server its CPUs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)  # seconds, scheduled -> answered
    errors: int = 0  # non-2xx answers and broken connections
    late_sends: list[float] = field(default_factory=list)  # seconds behind the schedule


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled = 0.0
        self.expected: int | None = None  # total response bytes once the headers are in
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled, self.expected = scheduled, None
        self.buffer.clear()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.expected is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split()[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            self.expected = end + 4 + length
        if len(self.buffer) >= self.expected:
            self.pool.answered(self, time.perf_counter(), 200 <= self.status < 300)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.backlog: deque[tuple[bytes, float]] = deque()
        self.opening = 0
        self.outcome = Outcome()
        self.all_sent = False
        self.done = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self), self.host, self.port
            )
        finally:
            self.opening -= 1
        self._next(connection)

    def submit(self, request: bytes, scheduled: float) -> None:
        if self.idle:
            connection = self.idle.pop()
            self.outcome.late_sends.append(time.perf_counter() - scheduled)
            self.busy.add(connection)
            connection.send(request, scheduled)
            return
        self.backlog.append((request, scheduled))
        if len(self.busy) + len(self.idle) + self.opening < self.limit:
            asyncio.get_running_loop().create_task(self.open())

    def _next(self, connection: _Connection) -> None:
        if self.backlog:
            request, scheduled = self.backlog.popleft()
            self.busy.add(connection)
            connection.send(request, scheduled)
        else:
            self.idle.append(connection)
            self.check_done()

    def answered(self, connection: _Connection, now: float, ok: bool) -> None:
        self.busy.discard(connection)
        self.outcome.latencies.append(now - connection.scheduled)
        if not ok:
            self.outcome.errors += 1
        self._next(connection)

    def lost(self, connection: _Connection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            self.outcome.errors += 1
        if connection in self.idle:
            self.idle.remove(connection)
        self.check_done()

    def check_done(self) -> None:
        if self.all_sent and not self.busy and not self.backlog:
            self.done.set()


async def open_loop(
    host: str,
    port: int,
    request: Callable[[int], bytes],
    rate: float,
    seconds: float,
    *,
    seed: int = 0,
    warm_connections: int = 32,
    max_connections: int = 1024,
) -> Outcome:
    """`rate` requests per second for `seconds`, Poisson arrivals; request(n) is the n-th
    request's bytes."""
    pool = _Pool(host, port, max_connections)
    await asyncio.gather(*(pool.open() for _ in range(warm_connections)))
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * seconds * 1.2) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    start = time.perf_counter()
    for n, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pool.submit(request(n), start + float(at))
    pool.all_sent = True
    pool.check_done()
    try:
        await asyncio.wait_for(pool.done.wait(), timeout=60)
    except TimeoutError:
        pool.outcome.errors += len(pool.busy) + len(pool.backlog)
    for connection in [*pool.idle, *pool.busy]:
        if connection.transport is not None:
            connection.transport.close()
    return pool.outcome
