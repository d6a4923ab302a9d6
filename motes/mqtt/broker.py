"""The broker: sessions, routing, retained messages, will messages, $SYS statistics.

    broker = Broker(hooks, BrokerLimits())
    await broker.listen("127.0.0.1", 1883)              # TCP; ssl=context for TLS
    broker.publish(mount, Message("devices/d1/commands/c1", b"{}", 1, False, {}))
    await broker.stop()

Connections (connection.py) parse packets and call in here; ``Hooks`` (models.py) decide who
may connect, what each client may touch, and which publishes are stored before they are
acknowledged. Sessions and retained messages live in memory: a restart ends them (what the
platform stored before acknowledging survives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from motes import __version__
from motes.mqtt import packets as pk
from motes.mqtt.models import Hooks, Message, Outgoing, Session, monotonic
from motes.mqtt.topics import SubscriptionTree, TopicIndex

log = logging.getLogger("motes.mqtt")


@dataclass
class BrokerLimits:
    max_packet_bytes: int = 32 * 1024 * 1024
    receive_maximum: int = 1024  # unacknowledged QoS 1/2 publishes a client may have with us
    max_queued: int = 10_000  # messages kept per session while offline or slow
    session_expiry_max: int = 7 * 24 * 3600
    connect_timeout: float = 10.0
    max_connections: int = 100_000
    max_pending_auth: int = 256
    topic_alias_maximum: int = 64
    max_subscriptions: int = 1_000  # per session
    max_retained: int = 100_000  # per org
    max_retained_bytes: int = 64 * 1024 * 1024  # per org
    max_sessions_per_owner: int = 1_000  # one device, token or user
    sys_interval: float = 10.0


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    received: int = 0
    sent: int = 0
    publish_received: int = 0
    publish_sent: int = 0
    publish_dropped: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    refused: int = 0
    malformed: int = 0


class Broker:
    def __init__(self, hooks: Hooks, limits: BrokerLimits | None = None) -> None:
        self.hooks = hooks
        self.limits = limits or BrokerLimits()
        self.sessions: dict[str, Session] = {}
        self.connections: set[Any] = set()
        self.tree = SubscriptionTree()
        self.retained: dict[str, TopicIndex[Message]] = {}  # mount -> topic -> message
        self.retained_bytes: dict[str, int] = {}
        self.owner_sessions: dict[str, int] = {}
        self.stats = Stats()
        self.auth_slots = asyncio.Semaphore(self.limits.max_pending_auth)
        self._servers: list[asyncio.AbstractServer] = []
        self._ticker: asyncio.Task[None] | None = None
        self._share_turn: dict[str, int] = {}
        self._last_sys = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the broker holds until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle ------------------------------------------------------------------------

    async def listen(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> asyncio.AbstractServer:
        from motes.mqtt.connection import Connection

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl_context, backlog=4096
        )
        self._servers.append(server)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever())
        return server

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self.connections):
            conn.shutdown(pk.SERVER_SHUTTING_DOWN, "server shutting down")
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.tick(monotonic())
            except Exception:  # the broker must outlive a bug in housekeeping
                log.exception("MQTT housekeeping failed")

    def tick(self, now: float) -> None:
        """Keep-alive, connect timeouts, session expiry, $SYS statistics."""
        for conn in list(self.connections):
            conn.check_timeouts(now)
        for key, session in list(self.sessions.items()):
            if session.expired(now):
                self.end_session(key)
        if now - self._last_sys >= self.limits.sys_interval:
            self._last_sys = now
            self.publish_sys()

    # -- sessions -------------------------------------------------------------------------

    def end_session(self, key: str) -> None:
        session = self.sessions.pop(key, None)
        if session is None:
            return
        owner = session.identity.owner
        self.owner_sessions[owner] = self.owner_sessions.get(owner, 1) - 1
        if self.owner_sessions[owner] <= 0:
            del self.owner_sessions[owner]
        for sub in session.subscriptions.values():
            self.tree.remove(self.internal(session.identity.mount, sub.filter), key, sub.group)

    def subscribe(self, session: Session, given: str, sub: Any) -> bool:
        old = session.subscriptions.get(given)
        if old is not None and old.group != sub.group:
            self.tree.remove(
                self.internal(session.identity.mount, old.filter), session.key, old.group
            )
        session.subscriptions[given] = sub
        return self.tree.add(self.internal(session.identity.mount, sub.filter), sub)

    def unsubscribe(self, session: Session, given: str) -> bool:
        sub = session.subscriptions.pop(given, None)
        if sub is None:
            return False
        return self.tree.remove(
            self.internal(session.identity.mount, sub.filter), session.key, sub.group
        )

    @staticmethod
    def internal(mount: str, topic: str) -> str:
        """The broker-wide name of a client's topic or filter: its org's, except $SYS."""
        return topic if topic.startswith("$SYS") else f"{mount}/{topic}"

    # -- routing --------------------------------------------------------------------------

    def has_subscribers(self, mount: str, topic: str) -> bool:
        plain, shared = self.tree.match(self.internal(mount, topic))
        return bool(plain or shared)

    def publish(self, mount: str, message: Message) -> int:
        """Route a message to the subscribers of its topic in ``mount``; keep it if retained.
        Answers how many sessions got it."""
        if message.retain:
            self.keep_retained(mount, message)
        plain, shared = self.tree.match(self.internal(mount, message.topic))
        sessions = self.sessions
        count = 0
        for sub in plain:
            session = sessions.get(sub.client)
            if session is not None and self.deliver(session, message, sub, False):
                count += 1
        for group, members in shared.items():
            count += self._deliver_shared(group, members, message)
        return count

    def _deliver_shared(self, group: str, members: list[Any], message: Message) -> int:
        """One member of the group gets it: round robin over the connected ones."""
        online = [
            s for s in members if (x := self.sessions.get(s.client)) and x.connection is not None
        ]
        pool = online or members
        turn = self._share_turn.get(group, 0)
        self._share_turn[group] = turn + 1
        sub = pool[turn % len(pool)]
        session = self.sessions.get(sub.client)
        return int(session is not None and self.deliver(session, message, sub, False))

    def deliver(self, session: Session, message: Message, sub: Any, retained: bool) -> bool:
        if sub.no_local and message.publisher == session.key:
            return False
        qos = min(message.qos, sub.qos)
        props = message.properties
        if sub.identifier is not None:
            props = {**props, pk.SUBSCRIPTION_ID: [sub.identifier]}
        retain = message.retain and (retained or sub.retain_as_published)
        out = Outgoing(message, qos, retain, props)
        conn = session.connection
        if conn is not None and not session.queue and conn.can_send(qos):
            conn.send_message(out)
            return True
        if qos == 0 and conn is None:
            return False  # QoS 0 is not kept for offline clients
        if len(session.queue) >= self.limits.max_queued:
            session.queue.popleft()
            session.dropped += 1
            self.stats.publish_dropped += 1
            if session.dropped in (1, 100, 10_000) or session.dropped % 100_000 == 0:
                log.warning(
                    "session %s queue full (%d): dropped %d oldest message(s)",
                    session.client_id, self.limits.max_queued, session.dropped,
                )  # fmt: skip
        session.queue.append(out)
        return True

    # -- retained messages ----------------------------------------------------------------

    def keep_retained(self, mount: str, message: Message) -> None:
        topics = self.retained.get(mount)
        if topics is None:
            topics = self.retained[mount] = TopicIndex()
        old = topics.get(message.topic)
        growth = len(message.payload) - (len(old.payload) if old else 0)
        size = self.retained_bytes.get(mount, 0)
        if message.payload and (
            (old is None and len(topics) >= self.limits.max_retained)
            or (growth > 0 and size + growth > self.limits.max_retained_bytes)
        ):
            log.warning(
                "org %s keeps %d retained messages (%d bytes): not keeping more",
                mount, len(topics), size,
            )  # fmt: skip
            return
        if message.payload:
            self.retained_bytes[mount] = size + growth
            topics.set(message.topic, Message(
                message.topic, message.payload, message.qos, True, message.properties,
                message.expires_at,
            ))  # fmt: skip
        elif old is not None:  # an empty retained message clears the topic
            self.retained_bytes[mount] = size - len(old.payload)
            topics.pop(message.topic)

    def send_retained(self, session: Session, sub: Any) -> None:
        mount = "" if sub.filter.startswith("$SYS") else session.identity.mount
        now = monotonic()
        topics = self.retained.get(mount)
        if topics is None:
            return
        for topic, message in topics.match(sub.filter):
            if message.expired(now):
                topics.pop(topic)
                self.retained_bytes[mount] -= len(message.payload)
            else:
                self.deliver(session, message, sub, True)

    # -- $SYS -----------------------------------------------------------------------------

    def publish_sys(self) -> None:
        s = self.stats
        connected = sum(1 for c in self.connections if c.session is not None)
        values = {
            "version": f"motes {__version__}",
            "uptime": f"{int(time.time() - s.started)} seconds",
            "clients/connected": connected,
            "clients/total": len(self.sessions),
            "clients/disconnected": sum(1 for x in self.sessions.values() if x.connection is None),
            "subscriptions/count": self.tree.count,
            "retained messages/count": sum(len(t) for t in self.retained.values()),
            "messages/received": s.received,
            "messages/sent": s.sent,
            "publish/messages/received": s.publish_received,
            "publish/messages/sent": s.publish_sent,
            "publish/messages/dropped": s.publish_dropped,
            "bytes/received": s.bytes_received,
            "bytes/sent": s.bytes_sent,
            "connections/refused": s.refused,
            "packets/malformed": s.malformed,
        }
        for name, value in values.items():
            message = Message(f"$SYS/broker/{name}", str(value).encode(), 0, True, {})
            self.publish("", message)
