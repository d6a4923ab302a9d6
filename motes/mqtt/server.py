"""The embedded MQTT listeners of ``motes serve``: TCP, TLS, and WebSocket at ``/mqtt``.

mqtt = MqttServer(settings, registry, telemetry)
await mqtt.start()          # in the app's lifespan, on uvicorn's event loop
...
await mqtt.stop()           # before the writer flushes and the stores close
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from motes.mqtt.broker import Broker, BrokerLimits
from motes.mqtt.connection import Connection
from motes.mqtt.dynsec import DynamicSecurity
from motes.mqtt.external import ExternalBroker
from motes.mqtt.hooks_api import Locator
from motes.mqtt.ingest import Ingest
from motes.mqtt.platform import MotesHooks
from motes.mqtt.rejections import RejectionBuffer
from motes.registry.service import Registry
from motes.settings import Settings
from motes.telemetry.service import TelemetryService

log = logging.getLogger("motes.mqtt")


class MqttServer:
    def __init__(self, settings: Settings, registry: Registry, telemetry: TelemetryService) -> None:
        self.settings = settings
        self.ingest = Ingest(telemetry)
        self.hooks = MotesHooks(registry, self.ingest, settings.init_bucket)
        # refusals reach the device's owner (GET .../rejections), written every 2 s
        self.rejections = RejectionBuffer(registry.rejections.record)
        self.hooks.on_rejection = self.rejections.add
        self._flusher: asyncio.Task[None] | None = None
        self.broker = Broker(
            self.hooks,
            BrokerLimits(
                max_packet_bytes=settings.mqtt_max_packet_bytes,
                max_queued=settings.mqtt_max_queued_messages,
                session_expiry_max=settings.mqtt_session_expiry_seconds,
                max_connections=settings.mqtt_max_connections,
            ),
        )
        self.hooks.broker = self.broker
        self.locator = Locator(registry)
        self.external: ExternalBroker | None = None
        if settings.mqtt_url:
            self.external = ExternalBroker(
                settings.mqtt_url,
                self.hooks,
                self.locator,
                group=settings.mqtt_share_group,
                client_id=settings.mqtt_client_id,
                username=settings.mqtt_service_user,
                password=settings.init_token,
            )
            self.hooks.broker = self.external  # commands go out through the external broker
        self.dynsec: DynamicSecurity | None = None
        if settings.mqtt_dynsec_url:
            password = self.external.password if self.external else settings.init_token
            self.dynsec = DynamicSecurity(
                settings.mqtt_dynsec_url, settings.mqtt_service_user, password
            )
            registry.devices.listen(self.dynsec.device_event)
        self.ports: dict[str, int] = {}
        self._on_command: Callable[[Any], None] | None = None

    async def start(self) -> None:
        s = self.settings
        self._flusher = asyncio.create_task(self.rejections.run())
        if self.dynsec is not None:
            await self.dynsec.start()
        if self.external is not None:
            await self.external.start()
        else:
            if s.mqtt_port:
                await self._listen("mqtt", s.mqtt_port, None)
            if s.mqtt_tls_cert:
                await self._listen("mqtts", s.mqtt_tls_port, self._tls_context())
        commands = getattr(self.hooks.registry, "commands", None)
        if commands is not None:
            loop = asyncio.get_running_loop()
            self._on_command = lambda c: self.hooks.command_created(c, loop)
            commands.listen(self._on_command)

    async def _listen(self, name: str, port: int, context: ssl.SSLContext | None) -> None:
        host = self.settings.http_host
        try:
            server = await self.broker.listen(host, port, context)
        except OSError as exc:
            default = name == "mqtt" and "mqtt_port" not in self.settings.model_fields_set
            if exc.errno == errno.EADDRINUSE and default:
                # another broker (often a system Mosquitto) holds 1883: run without ours
                # rather than refuse to start; an explicit --mqtt-port must bind or fail
                log.warning(
                    "MQTT port %d is in use (another broker?): MQTT over TCP is off; "
                    "set --mqtt-port to another port to enable it",
                    port,
                )
                return
            raise
        self.ports[name] = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("MQTT listening on %s:%d (%s)", host, self.ports[name], name)

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(s.mqtt_tls_cert), str(s.mqtt_tls_key or s.mqtt_tls_cert))
        if s.mqtt_tls_client_ca:
            context.load_verify_locations(str(s.mqtt_tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def stop(self) -> None:
        commands = getattr(self.hooks.registry, "commands", None)
        if commands is not None and self._on_command is not None:
            commands.unlisten(self._on_command)
            self._on_command = None
        if self.dynsec is not None:
            self.hooks.registry.devices.unlisten(self.dynsec.device_event)
        if self.external is not None:
            await self.external.stop()
        if self.dynsec is not None:
            await self.dynsec.stop()
        await self.broker.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.rejections.flush()  # the last ones, closing connections' too
        await asyncio.to_thread(self.hooks.close)

    async def websocket(self, websocket: WebSocket) -> None:
        """MQTT over WebSocket (subprotocol ``mqtt``), on the HTTP port at ``/mqtt``."""
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="mqtt" if "mqtt" in offered else None)
        transport = _WebSocketTransport(websocket)
        conn = Connection(self.broker)
        conn.connection_made(transport)
        sender = asyncio.create_task(transport.pump())
        try:
            while not transport.closed:
                await transport.readable.wait()
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if data is None:  # MQTT travels in binary frames only
                    conn.shutdown(0x81, "MQTT over WebSocket needs binary frames")
                    break
                conn.data_received(data)
        finally:
            conn.connection_lost(None)
            transport.close()
            with contextlib.suppress(Exception):
                await sender


class _WebSocketTransport:
    """Just enough of asyncio.Transport for a Connection over a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closed = False
        self.readable = asyncio.Event()
        self.readable.set()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        client = self.websocket.client
        return (client.host, client.port) if name == "peername" and client else default

    def write(self, data: bytes) -> None:
        if not self.closed:
            self._queue.put_nowait(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.readable.set()
            self._queue.put_nowait(None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    async def pump(self) -> None:
        try:
            while (data := await self._queue.get()) is not None:
                await self.websocket.send_bytes(data)
        finally:
            with contextlib.suppress(Exception):
                await self.websocket.close()
