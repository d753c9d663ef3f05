"""Running the server until it is told to stop, and stopping without losing a request.

Kubernetes sends SIGTERM once the pod's preStop delay is over, by when the endpoints
controller and kube-proxy have stopped sending it new connections. What still arrives comes on
connections clients keep alive, and requests in flight. So on SIGTERM the server first drains:
/readyz answers 503 and each response closes its connection (clients reconnect elsewhere),
for `drain_seconds`; then it closes the listener and the idle connections, and gives requests
in flight `shutdown_timeout` seconds to finish. A second signal ends the drain at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .app import start_draining

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        log.warning("serving on %s:%d", host, port)
        for signum in SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        stop.clear()
        start_draining(app)
        log.warning("stopping: draining for %.1fs", drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), drain_seconds)
    finally:
        # Closes the listener and idle connections, then waits for the requests in flight.
        await runner.cleanup()
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
    log.warning("stopped")
