"""What the broker core deals in: messages, sessions, and the hooks the platform provides.

Errors::

    MqttError
    ├── Refused          CONNECT refused (reason code: bad credentials, not authorized, ...)
    └── MalformedPacket  (packets.py) bytes that are not MQTT; the connection is closed

The broker core (broker.py) knows MQTT and nothing of Motes; ``Hooks`` is where Motes
plugs in: who a client is, what it may touch, and which publishes are stored before they
are acknowledged.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from motes.mqtt.packets import Connect, Publish
from motes.mqtt.topics import Subscription


class MqttError(Exception):
    pass


class Refused(MqttError):
    """CONNECT refused with an MQTT 5 reason code (mapped for 3.1.1 clients)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(slots=True)
class Identity:
    """Who is connected: set by ``Hooks.authenticate``; ``mount`` is the client's topic space."""

    mount: str
    label: str  # for logs and $SYS-free statistics, e.g. "device d1" or "token ops"
    device: str | None = None
    context: Any = None  # the platform's own (principal, org, bucket ...)
    owner: str = ""  # who the credentials belong to: a session is only ever theirs


@dataclass(slots=True)
class Message:
    """An application message on its way through the broker (topic without mount)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[int, Any]
    expires_at: float | None = None  # monotonic seconds
    publisher: str | None = None  # session key, for no-local
    on_ack: Callable[[], None] | None = None  # platform messages: the subscriber has it

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(slots=True)
class Outgoing:
    message: Message
    qos: int
    retain: bool
    properties: dict[int, Any]
    packet_id: int = 0
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent


@dataclass
class Session:
    """State that outlives a connection when the client asks for it (clean start off)."""

    key: str
    client_id: str
    identity: Identity
    version: int
    expiry_seconds: int  # 0: ends with the connection
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by filter given
    inflight: OrderedDict[int, Outgoing] = field(default_factory=OrderedDict)
    queue: deque[Outgoing] = field(default_factory=deque)
    # QoS 2 publishes by packet id: a list of (connection, slot) waiting for the store to
    # finish (a resend must not get PUBREC before the original is durable), None once stored
    incoming_qos2: dict[int, list[Any] | None] = field(default_factory=dict)
    connection: Any = None  # Connection while connected
    disconnected_at: float = 0.0
    receive_maximum: int = 65535  # the client's
    max_packet: int = 268_435_460
    next_id: int = 0
    dropped: int = 0
    will_timer: Any = None  # a delayed will waiting to be published

    def packet_id(self) -> int:
        for _ in range(65535):
            self.next_id = self.next_id % 65535 + 1
            if self.next_id not in self.inflight:
                return self.next_id
        raise MqttError("no free packet identifier")

    def expired(self, now: float) -> bool:
        return self.connection is None and now - self.disconnected_at >= self.expiry_seconds


#: how a run of publishes ended: None if every one is durable, else one (code, reason) each
RunResult = list[tuple[int, str | None]] | None


class Stream(Protocol):
    """A topic whose plain publishes the platform stores in runs (:meth:`Hooks.stream`)."""

    def submit(self, payloads: list[bytes], done: Callable[[RunResult], None]) -> None:
        """Store these payloads, published in this order; ``done`` runs once they are all
        durable (``None``) or with one ``(code, reason)`` per payload."""


class Hooks(Protocol):
    """The platform side of the broker (Motes: motes/mqtt/platform.py)."""

    async def authenticate(self, connect: Connect, remote: str) -> Identity: ...

    def may_publish(self, identity: Identity, topic: str) -> bool | Awaitable[bool]: ...

    def may_subscribe(self, identity: Identity, topic_filter: str) -> bool | Awaitable[bool]: ...

    def on_publish(
        self, identity: Identity, publish: Publish, done: Callable[[int, str | None], None]
    ) -> bool:
        """False: plain pub/sub. True: the platform stores it and calls ``done(code,
        reason)``; the publish is acknowledged (and routed) only then, with code 0 once
        durable or an error code."""

    def stream(self, identity: Identity, topic: str) -> Stream | None:
        """The hot path of a stored topic: a connection hands back-to-back publishes to
        ``topic`` (QoS 0 or 1, not retained, no properties) to the stream together, as
        ``on_publish`` would have stored them one by one. Asked once per connection and
        topic, so the answer must not change while the identity holds: None keeps the topic
        on ``on_publish``."""

    def on_denied(self, identity: Identity, topic: str, reason: str) -> None: ...

    def on_connected(self, session: Session) -> None: ...

    def on_subscribed(self, session: Session, filters: list[str]) -> None: ...

    def on_disconnected(self, session: Session, reason: str, will: bool) -> None: ...


def monotonic() -> float:
    return time.monotonic()
