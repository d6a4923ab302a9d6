"""External-broker mode: Motes consumes device traffic from Mosquitto, EMQX or another broker.

    consumer = ExternalBroker("mqtt://broker:1883", hooks, group="motes", username="motes",
                              password=operator_token)
    await consumer.start()      # connects, subscribes $share/motes/devices/+/telemetry ...
    await consumer.stop()

Several Motes processes subscribe with the same shared-subscription group, so the broker hands
each message to one of them. A message is acknowledged to the broker (PUBACK) only once it is
durable here; a message that could not be stored is not acknowledged, the connection is
dropped and the broker delivers it again. Devices authenticate at the external broker through
Motes' HTTP hooks (hooks_api.py), so the broker has checked who published what before it
reaches us; the topic's device (or channel) id names the org (ids must be unique across orgs
in this mode, which the hooks enforce).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote, urlsplit

from motes.mqtt import packets as pk
from motes.mqtt.models import Identity, Message
from motes.mqtt.platform import Client, MotesHooks
from motes.registry.models import Principal

log = logging.getLogger("motes.mqtt.external")

FILTERS = (
    "devices/+/telemetry",
    "devices/+/telemetry/+",
    "devices/+/attributes",
    "devices/+/commands/+/response",
    "channels/+/messages",
    "channels/+/messages/#",
)
Locate = Callable[[str, str], tuple[str, str | None] | None]  # (kind, id) -> (org, bucket)
IDENTITY_SECONDS = 30.0  # how long a looked-up device or channel is taken as known


def _subject(topic: str) -> tuple[str, str]:
    kind, _, rest = topic.partition("/")
    return kind, rest.partition("/")[0]


class ExternalBroker:
    def __init__(
        self,
        url: str,
        hooks: MotesHooks,
        locate: Locate,
        *,
        group: str = "motes",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keep_alive: int = 30,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"MQTT URL {url!r}: use mqtt://host:port or mqtts://host:port")
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else username
        self.password = unquote(parts.password) if parts.password else password
        self.hooks = hooks
        self.locate = locate
        self.group = group
        self.persistent = client_id is not None  # a stable id keeps the session (and queue)
        self.client_id = client_id or f"motes-{socket.gethostname()}-{os.getpid()}"
        self.keep_alive = keep_alive
        self.connected = asyncio.Event()
        self.received = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._acks: deque[list[Any]] = deque()  # [packet id, ready, code]
        self._next_id = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # (kind, id) -> (valid until, identity or None): the registry is not asked per message
        self._identities: dict[tuple[str, str], tuple[float, Identity | None]] = {}
        self._held: deque[tuple[pk.Publish, list[Any] | None, Any]] = deque()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        self._stopping = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.write(b"\xe0\x00")  # DISCONNECT
                await self._writer.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("external MQTT broker %s:%d: %s", self.host, self.port, exc)
            self._disconnected()
            delay = 0.5 if time.monotonic() - started > 10 else min(delay * 2, 15)
            await asyncio.sleep(delay)

    def _disconnected(self) -> None:
        """Forget the connection's unacknowledged messages: the broker sends them again."""
        self.connected.clear()
        self._writer = None
        self._acks.clear()
        self._held = deque()  # a look-up still running keeps (and drops) the old one

    async def _session(self) -> None:
        context = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context)
        self._writer = writer
        try:
            writer.write(
                pk.encode_connect(
                    self.client_id,
                    self.username,
                    self.password,
                    self.keep_alive,
                    clean_start=not self.persistent,
                )
            )
            buf = bytearray()
            ping = asyncio.create_task(self._ping(writer))
            try:
                await self._read(reader, buf)
            finally:
                ping.cancel()
        finally:
            writer.close()

    async def _ping(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self.keep_alive / 2)
            writer.write(pk.PINGREQ_PACKET)

    async def _read(self, reader: asyncio.StreamReader, buf: bytearray) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            buf += data
            frames, used = pk.split(buf, 256 * 1024 * 1024)
            del buf[:used]
            for first, body in frames:
                self._packet(first, body)

    def _packet(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == pk.CONNACK:
            _, code = pk.decode_connack(body)
            if code:
                raise ConnectionError(f"the broker refused the connection (return code {code})")
            self._subscribe()
            self.connected.set()
            log.info("consuming from %s:%d as %s", self.host, self.port, self.client_id)
        elif kind == pk.PUBLISH:
            self._publish(pk.decode_publish(first & 0x0F, body, 4))
        elif kind == pk.SUBACK:
            refused = [c for c in body[2:] if c >= 0x80]
            if refused:
                raise ConnectionError("the broker refused our subscriptions (check its ACLs)")
        elif kind == pk.PUBREL:  # QoS 2 from the broker: complete it
            self._write(pk.encode_ack(pk.PUBCOMP, int.from_bytes(body[:2], "big"), 4))

    def _subscribe(self) -> None:
        filters = [(f"$share/{self.group}/{f}", 1) for f in FILTERS]
        self._write(pk.encode_subscribe(self._packet_id(), filters))

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _write(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)

    # -- messages -------------------------------------------------------------------------

    def _publish(self, p: pk.Publish) -> None:
        self.received += 1
        slot: list[Any] | None = None
        if p.qos:
            slot = [p.packet_id, False, pk.PUBACK if p.qos == 1 else pk.PUBREC]
            self._acks.append(slot)
        held = (p, slot, self._writer)
        if self._held:  # an earlier one waits for its device to be looked up: after it
            self._held.append(held)
            return
        known, identity = self._known(p.topic)
        if not known:
            self._held.append(held)
            self.spawn(self._look_up_held())
            return
        self._deliver(*held, identity)

    def _known(self, topic: str) -> tuple[bool, Identity | None]:
        """(True, identity) if the topic's device or channel was looked up lately."""
        hit = self._identities.get(_subject(topic))
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    async def _look_up_held(self) -> None:
        """Look the held publishes' devices up in a thread (the registry is a database), then
        deliver them in the order they came. A reconnect gives the new connection a queue of
        its own; this task then finishes the old one without delivering (the broker sends
        those messages again)."""
        held = self._held
        while held:
            p, slot, writer = held[0]
            known, identity = self._known(p.topic)
            if not known:
                try:
                    identity = await asyncio.to_thread(self._identity, p.topic)
                except Exception:
                    log.exception("external MQTT: looking up %r failed", p.topic)
                    held.clear()  # unacknowledged: the broker sends them again
                    if writer is self._writer and writer is not None:
                        writer.close()
                    return
                if identity is not None:  # an unknown id may be created any moment
                    until = time.monotonic() + IDENTITY_SECONDS
                    self._identities[_subject(p.topic)] = (until, identity)
            held.popleft()
            if writer is self._writer:  # else that connection is gone: they come again
                self._deliver(p, slot, writer, identity)

    def _deliver(self, p: pk.Publish, slot: list[Any] | None, writer: Any, identity: Any) -> None:
        if identity is None:
            log.warning(
                "external MQTT: no device or channel for %r; acknowledged, not stored", p.topic
            )
            self._done(slot, True)
            return

        def done(code: int, reason: str | None) -> None:
            self._stored(code, slot, writer)

        if not self.hooks.on_publish(identity, p, done):
            self._done(slot, True)

    def _stored(self, code: int, slot: list[Any] | None, writer: Any) -> None:
        if writer is not self._writer:
            return  # that connection is gone; the broker sends the message again
        if code in (pk.UNSPECIFIED_ERROR, pk.IMPLEMENTATION_SPECIFIC_ERROR):
            log.error(
                "external MQTT: a message could not be stored; reconnecting so it comes again"
            )
            if self._writer is not None:
                self._writer.close()
            return
        self._done(slot, True)

    def _done(self, slot: list[Any] | None, ready: bool) -> None:
        if slot is None:
            return
        slot[1] = ready
        while self._acks and self._acks[0][1]:
            packet_id, _, kind = self._acks.popleft()
            self._write(pk.encode_ack(kind, packet_id, 4))

    def _identity(self, topic: str) -> Identity | None:
        """Who published on ``topic`` (from the registry: run it in a thread)."""
        parts = topic.split("/")
        kind = "device" if parts[0] == "devices" else "channel"
        found = self.locate(kind, parts[1])
        if found is None:
            return None
        org_id, bucket_id = found
        device = parts[1] if kind == "device" else None
        principal = Principal("device" if device else "token", device or "external", org_id,
                              bucket_id=bucket_id)  # fmt: skip
        bucket = None
        if device is not None:
            with contextlib.suppress(Exception):
                bucket = self.hooks._bucket(org_id, bucket_id)
        return Identity(org_id, f"{kind} {parts[1]}", device, Client(principal, bucket))

    # -- downlink (commands) ----------------------------------------------------------------

    def publish(self, mount: str, message: Message) -> int:
        """Send a platform message (a command) to the external broker; 1 if sent."""
        if not self.connected.is_set():
            return 0
        packet_id = self._packet_id() if message.qos else 0
        self._write(
            pk.encode_publish(
                message.topic, message.payload, message.qos, False, False, packet_id, 4
            )
        )
        return 1
