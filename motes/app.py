"""The one wiring function: ``create_app(settings)`` builds stores and services, mounts routes.

app = create_app(Settings(data_dir=Path("motes-data")))
uvicorn.run(app)      # or motes.server.serve(settings)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from motes import __version__, apispec
from motes.http import HANDLED, JSONResponse, error_response
from motes.mqtt import hooks_api as mqtt_hooks_api
from motes.mqtt.server import MqttServer
from motes.registry import api as registry_api
from motes.registry import api_access, api_auth, api_commands, api_devices, api_orgs
from motes.registry.crypto import load_master_key
from motes.registry.service import Registry
from motes.settings import Settings
from motes.telemetry import api as telemetry_api
from motes.telemetry import influxql, query_api
from motes.telemetry.service import TelemetryService
from motes.telemetry.store.duckdb import DuckDBStore
from motes.telemetry.writer import GroupCommitWriter

log = logging.getLogger("motes")


@apispec.operation(
    "Readiness",
    ["health"],
    responses={
        status: {
            "application/json": {
                "type": "object",
                "required": ["name", "status", "message", "version", "checks"],
                "properties": {
                    "name": {"const": "motes"},
                    "status": {"enum": ["pass", "fail"]},
                    "message": {"type": "string"},
                    "version": {"type": "string"},
                    "checks": {"type": "array"},
                },
            }
        }
        for status in (200, 503)
    },
    errors=(),
    auth=False,
    description="200 once ready for queries and writes, 503 while starting.",
)
async def health(request: Request) -> Response:
    ready = getattr(request.app.state, "ready", False)
    body: dict[str, object] = {
        "name": "motes",
        "status": "pass" if ready else "fail",
        "message": "ready for queries and writes" if ready else "starting",
        "version": __version__,
        "checks": [],
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@apispec.operation(
    "Liveness (InfluxDB ping)",
    ["health", "influxdb"],
    responses={204: None},
    errors=(),
    auth=False,
    description="Answers GET and HEAD with header `X-Influxdb-Version`.",
)
async def ping(request: Request) -> Response:
    return Response(status_code=204, headers={"X-Influxdb-Version": f"motes-{__version__}"})


def create_app(settings: Settings) -> Starlette:
    """The ASGI app; stores open and the writer starts in its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _open(app, settings)
        flusher = asyncio.create_task(_flush_seen(app))
        sweeper = asyncio.create_task(_sweep(app))
        mqtt = MqttServer(settings, app.state.registry, app.state.telemetry)
        app.state.mqtt = mqtt
        try:
            await mqtt.start()
            yield
        finally:
            flusher.cancel()
            sweeper.cancel()
            await mqtt.stop()
            _close(app)

    async def mqtt_websocket(websocket: WebSocket) -> None:
        await websocket.app.state.mqtt.websocket(websocket)

    routes: list[Any] = [
        Route("/health", health, methods=["GET"]),
        Route("/ping", ping, methods=["GET", "HEAD"]),
        *telemetry_api.routes,
        *query_api.routes,
        *influxql.routes,
        *registry_api.routes,
        *api_auth.routes,
        *api_orgs.routes,
        *api_devices.routes,
        *api_commands.routes,
        *api_access.routes,
        *mqtt_hooks_api.routes,
        *apispec.routes,
        WebSocketRoute("/mqtt", mqtt_websocket),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            **dict.fromkeys(HANDLED, error_response),
            Exception: error_response,
            404: _not_found,
            405: _not_allowed,
        },
    )
    app.state.settings = settings
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    from motes.http import error_body

    return JSONResponse(error_body("not found", f"no route {request.url.path}"), status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    from motes.http import error_body

    message = f"method {request.method} not allowed on {request.url.path}"
    return JSONResponse(error_body("method not allowed", message), status_code=405)


def _open(app: Starlette, settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry.open(
        settings.registry_sqlalchemy_url,
        master_key=load_master_key(settings.secret_key, settings.secret_key_path),
        default_bucket=settings.init_bucket,
        access_seconds=settings.access_token_seconds,
        refresh_seconds=settings.refresh_token_seconds,
    )
    created = registry.bootstrap(
        settings.init_org,
        settings.init_bucket,
        settings.init_token,
        settings.init_admin_email,
        settings.init_admin_password,
    )
    if created is not None:
        _announce_token(settings, created)
    store = DuckDBStore(
        settings.telemetry_path,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        compact_rows=settings.compact_rows,
    )
    service: TelemetryService | None = None

    def maintain(idle: bool) -> None:
        if service is not None:
            service.maintain(idle, registry.all_buckets)

    writer = GroupCommitWriter(
        store, max_queued_points=settings.write_queue_points, maintenance=maintain
    )
    service = TelemetryService(store, writer, registry.schema)
    writer.start()
    app.state.registry = registry
    app.state.telemetry = service
    # everything loaded so far lives as long as the process: keep the collector from
    # walking it again on every full collection (those pauses showed as p99 latency)
    gc.collect()
    gc.freeze()
    # the MQTT hot path allocates a few short-lived objects per message; at the default
    # threshold (700) the young generation is collected thousands of times a second
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    app.state.ready = True


def _announce_token(settings: Settings, token: str) -> None:
    if settings.init_token:
        return
    path = settings.token_path
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    print(f"Motes created the operator token (shown once, also in {path}, mode 0600):\n{token}")


def _close(app: Starlette) -> None:
    app.state.ready = False
    gc.unfreeze()  # let interpreter shutdown release them cleanly
    service: TelemetryService | None = getattr(app.state, "telemetry", None)
    if service is not None:
        service.writer.stop()
        service.store.close()
    registry: Registry | None = getattr(app.state, "registry", None)
    if registry is not None:
        registry.devices.flush_seen()
        registry.close()


SEEN_FLUSH_SECONDS = 5.0
GC_YOUNG_THRESHOLD = 50_000


async def _flush_seen(app: Starlette) -> None:
    """Write devices' last-seen times every few seconds instead of on every request."""
    while True:
        await asyncio.sleep(SEEN_FLUSH_SECONDS)
        registry: Registry | None = getattr(app.state, "registry", None)
        if registry is not None:
            try:
                await run_in_threadpool(registry.devices.flush_seen)
            except Exception:  # a busy database must not end the loop; retried next time
                log.exception("writing last-seen times failed")


SWEEP_SECONDS = 2.0


async def _sweep(app: Starlette) -> None:
    """Expire commands past their time and move device statuses, every few seconds."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        registry: Registry | None = getattr(app.state, "registry", None)
        if registry is not None:
            try:
                await run_in_threadpool(registry.commands.expire_due)
                await run_in_threadpool(registry.devices.sweep_status)
            except Exception:  # a busy database must not end the loop; retried next time
                log.exception("expiring commands or sweeping device status failed")
