"""SIGTERM as kubelet sends it after the preStop delay: the server drains, then stops, and no
request it accepted is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shopping_guide.artifacts import ModelStore
from shopping_guide.serving.app import build_app
from shopping_guide.serving.lifecycle import (
    _SO_ATTACH_FILTER,
    _drop_new_connections,
    _program,
    listener,
    serve,
)
from shopping_guide.serving.registry import Registry
from tests.server.conftest import Models, RoutingDir, free_port

DRAIN_SECONDS = 1.0
# Longer than the drain: still running when the listener closes.
SLOW_SECONDS = DRAIN_SECONDS + 1.0


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_SECONDS)
    return web.json_response({"done": True})


async def _ready(url: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            await asyncio.sleep(0.1)


async def test_sigterm_drains_kept_alive_and_in_flight_requests_then_stops(
    models: Models, tmp_path: Path
) -> None:
    routing = RoutingDir(tmp_path / "routing")
    routing.write({"stable": models.als, "canary": None, "salt": "s1", "generation": 1})
    app = build_app(Registry(ModelStore(models.store), routing.path), reload_interval=0.2)
    app.router.add_get("/slow", _slow)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = asyncio.create_task(
        serve(app, "127.0.0.1", port, drain_seconds=DRAIN_SECONDS, shutdown_timeout=10)
    )
    await _ready(url)
    recommend = url + "/v1/recommendations?user_id=a-user-1&k=2"
    # One connection, kept alive across requests.
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    async with kept:
        async with kept.get(recommend) as response:
            assert response.status == 200
            assert response.headers.get("Connection") != "close"
        async with aiohttp.ClientSession() as other:
            slow = asyncio.create_task(other.get(url + "/slow"))
            await asyncio.sleep(0.2)  # its handler is running

            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.2)
            # Draining: out of the Service, still answering, kept-alive clients told to go.
            async with other.get(url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["draining"] is True
            async with kept.get(recommend) as response:
                assert response.status == 200
                assert response.headers.get("Connection") == "close"

            await asyncio.sleep(DRAIN_SECONDS)
            assert not server.done(), "stopped with a request in flight"
            refused = False
            try:
                async with aiohttp.ClientSession() as late, late.get(url + "/healthz"):
                    pass
            except aiohttp.ClientConnectionError:
                refused = True
            assert refused, "the listener is still open after the drain"
            response = await slow
            assert response.status == 200 and (await response.json())["done"] is True
            response.release()
    await asyncio.wait_for(server, 10)


def test_the_stop_filter_turns_new_connections_away_and_keeps_the_queued_ones() -> None:
    """The listener's filter before it closes: a new connection's SYN is dropped (the client
    times out, having sent nothing), a connection already queued is accepted with its request."""
    sock = listener("127.0.0.1", 0, reuse_port=False)
    address = sock.getsockname()
    queued = socket.create_connection(address, timeout=5)
    queued.sendall(b"GET")
    assert _drop_new_connections(sock)
    late = socket.socket()
    late.settimeout(0.3)
    with pytest.raises(TimeoutError):
        late.connect(address)
    late.close()
    sock.setblocking(True)
    sock.settimeout(5)
    accepted, _ = sock.accept()
    accepted.settimeout(5)
    assert accepted.recv(3) == b"GET"
    # The filter a connection whose handshake ends after the listener took it inherits: only
    # SYNs are dropped, not the ACKs and data of a connection under way.
    accepted.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _program())
    queued.sendall(b" / HTTP/1.1")
    assert accepted.recv(11) == b" / HTTP/1.1"
    for s in (queued, accepted, sock):
        s.close()
