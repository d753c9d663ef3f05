"""Running the server until it is told to stop, and stopping without losing a request.

Kubernetes sends SIGTERM once the pod's preStop delay is over, by when the endpoints
controller and kube-proxy have stopped sending it new connections. What still arrives comes on
connections clients keep alive, and requests in flight. So on SIGTERM the server first drains:
/readyz answers 503 and each response closes its connection (clients reconnect elsewhere),
for `drain_seconds`; then it stops taking connections, closes the listener and the idle
connections, and gives requests in flight `shutdown_timeout` seconds to finish. A second
signal ends the drain at once.

Closing a listening socket resets every connection the kernel has completed but the server
has not accepted yet, and each of those clients has already sent its request: under steady
reconnects (every answer of the drain says `Connection: close`) that lost 9 to 26 requests per
stop of two workers. So before the listener closes, a socket filter makes the kernel drop new
connection attempts (their clients retry, and meet a closed port, which a client can handle:
nothing was sent), the server accepts what is queued, and reads those requests. The filter
drops SYNs only: a handshake under way completes, for its client counts itself connected once
it has sent the last ACK and sends its request; dropping that ACK too left the connection
half-open until the listener closed and reset it (a request lost in 3 of 32 stops of two
workers with their CPUs contended; none in 50 since).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import socket
import struct

from aiohttp import web

from .app import start_draining

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Once new connections are dropped: how long handshakes under way get to join the queue of
# completed connections (a round trip or so), how long that queue may take to be accepted, and
# then how long their requests get to arrive before idle connections are closed.
HANDSHAKE_SECONDS = 0.05
ACCEPT_TIMEOUT_SECONDS = 1.0
FIRST_REQUEST_SECONDS = 0.05


def _bpf(code: int, jt: int, jf: int, k: int) -> int:
    return int.from_bytes(struct.pack("=HBBI", code, jt, jf, k), "little")


# A classic BPF program: load the TCP flags (a listener's filter sees the packet from its TCP
# header on), drop a packet with SYN set, keep any other whole.
_DROP_SYN = (ctypes.c_uint64 * 4)(
    _bpf(0x30, 0, 0, 13),  # ldb [13]
    _bpf(0x45, 0, 1, 0x02),  # jset #SYN: next, else skip one
    _bpf(0x06, 0, 0, 0),  # ret #0: drop
    _bpf(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep all of it
)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


def listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket, created here so that the drain can reach it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server(
        (host, port), family=family, backlog=1024, reuse_port=reuse_port,
        dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
    )  # fmt: skip
    sock.setblocking(False)
    return sock


def _program() -> bytes:
    """`struct sock_fprog` for SO_ATTACH_FILTER: the length, and where the program is."""
    return struct.pack("@HP", len(_DROP_SYN), ctypes.addressof(_DROP_SYN))


def _drop_new_connections(sock: socket.socket) -> bool:
    """A filter on a listening socket sees each SYN and handshake ACK (Linux `tcp_filter`):
    dropping the SYNs stops new connections and leaves the queued ones, and those whose
    handshake is under way, as they are."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _program())
    except OSError as exc:
        log.warning("could not stop taking connections before closing the listener: %s", exc)
        return False
    return True


def _accept_queue(sock: socket.socket) -> int:
    """Connections waiting to be accepted: Linux reports them as a listener's tcpi_unacked."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:
        return 0
    return int(struct.unpack_from("=I", info, 24)[0])


async def _stop_taking_connections(sock: socket.socket) -> None:
    if not _drop_new_connections(sock):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ACCEPT_TIMEOUT_SECONDS
    await asyncio.sleep(HANDSHAKE_SECONDS)
    while _accept_queue(sock) and loop.time() < deadline:
        await asyncio.sleep(0.005)
    await asyncio.sleep(FIRST_REQUEST_SECONDS)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    drain_seconds: float,
    shutdown_timeout: float,
    reuse_port: bool = False,
) -> None:
    """`reuse_port`: listen beside the other workers of a pod on the same port (workers.py)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    sock = listener(host, port, reuse_port)
    try:
        await web.SockSite(runner, sock).start()
        log.warning("serving on %s:%d", host, port)
        for signum in SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        stop.clear()
        start_draining(app)
        log.warning("stopping: draining for %.1fs", drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), drain_seconds)
        await _stop_taking_connections(sock)
    finally:
        # Closes the listener and idle connections, then waits for the requests in flight.
        await runner.cleanup()
        sock.close()
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
    log.warning("stopped")
