"""Running the platform: ``serve(settings)`` is what ``motes serve`` calls.

uvicorn serves the app; on SIGTERM or SIGINT it stops accepting, finishes in-flight
requests, and the app's lifespan flushes the write queue and closes the stores, so the
process exits 0 with every acknowledged point on disk.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn

from motes.app import create_app
from motes.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown; for us that shutdown, with
    every queued write flushed, is the normal way out, so the process exits 0."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


# DuckDB takes and drops the GIL many times per statement; with Python's default 5 ms switch
# interval the writer thread then waits behind request threads at every step. Measured on the
# ingest benchmark: 2.5M points/s at 5 ms, 2.9M at 0.2 ms.
SWITCH_INTERVAL_SECONDS = 0.0002


def serve(settings: Settings) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1


def work(settings: Settings) -> int:
    """``motes worker``: the app's stores and the external-broker consumer, no HTTP listener;
    SIGTERM/SIGINT stop it the same clean way as the server."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with app.router.lifespan_context(app):
            logging.getLogger("motes").info("worker consuming from %s", settings.mqtt_url)
            await stop.wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0
