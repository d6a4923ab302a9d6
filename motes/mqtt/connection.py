"""One client connection: bytes in, packets out, the MQTT flows in between.

Everything a connection reads in one go is parsed and answered together and written in one
write per event-loop turn. Publishes the platform stores (telemetry) are acknowledged only
once durable; their acknowledgements leave in the order the publishes came, even when a
later plain publish is answered first (``_acks``). A client with ``receive_maximum``
unacknowledged publishes is not read from until some are acknowledged: TCP pushes back.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import sys
from array import array
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from motes.mqtt import packets as pk
from motes.mqtt.models import (
    Identity,
    Message,
    Outgoing,
    Refused,
    RunResult,
    Session,
    Stream,
    monotonic,
)
from motes.mqtt.topics import Subscription, TopicError, check_filter, check_name

if TYPE_CHECKING:
    from motes.mqtt.broker import Broker

log = logging.getLogger("motes.mqtt")

_FORWARDED = (
    pk.PAYLOAD_FORMAT, pk.CONTENT_TYPE, pk.RESPONSE_TOPIC, pk.CORRELATION_DATA, pk.USER_PROPERTY
)  # fmt: skip
MAX_CLIENT_ID = 256
SERVER_FAILURES = frozenset(
    {pk.UNSPECIFIED_ERROR, pk.IMPLEMENTATION_SPECIFIC_ERROR, pk.SERVER_BUSY, pk.QUOTA_EXCEEDED}
)


class _Slot:
    """An acknowledgement owed to the client, sent when it and every earlier one is ready.

    A run's slot (``kind`` RUN) stands for the PUBACKs of a run of publishes handed to a
    stream together: ``packet_ids`` (0 for a QoS 0 publish), and ``codes`` if not all were
    stored."""

    __slots__ = ("code", "codes", "kind", "packet_id", "packet_ids", "ready", "reason")

    def __init__(self, kind: int, packet_id: int) -> None:
        self.kind = kind
        self.packet_id = packet_id
        self.code = 0
        self.reason: str | None = None
        self.ready = False
        self.packet_ids: list[int] = []
        self.codes: RunResult = None

    def owed(self) -> int:
        """How many acknowledgements this slot stands for."""
        if self.kind != RUN:
            return 1
        return len(self.packet_ids) - self.packet_ids.count(0)


RUN = -1  # the kind of a run's slot
MAX_STREAMS = 16  # topics per connection whose stream is remembered


class Connection(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: Any = None
        self.remote = "?"
        self.version = 0
        self.session: Session | None = None
        self.identity: Identity | None = None
        self.keep_alive = 0
        self.will: pk.Will | None = None
        self.closing = False
        self._connecting = False
        self._held = False  # a SUBSCRIBE is being checked: later packets wait, in order
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._acks: deque[_Slot] = deque()
        self._owed = 0  # acknowledgements the slots in _acks stand for
        self._streams: dict[bytes, Stream | None] = {}  # by topic: runs of publishes go there
        self._read_paused = False
        self._write_paused = False
        self._aliases: dict[int, str] = {}
        self._opened = monotonic()
        self._last_rx = self._opened
        self._clean_exit = False
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if len(self.broker.connections) >= self.broker.limits.max_connections:
            self.broker.stats.refused += 1
            transport.close()
            self.closing = True
            return
        self.broker.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._last_rx = monotonic()
        self.broker.stats.bytes_received += len(data)
        if self.closing:
            return
        self._buf += data
        if self._connecting or self._held:
            if len(self._buf) > 1_048_576:
                self._pause_reading()
            return
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.broker.connections.discard(self)
        session = self.session
        if session is None or session.connection is not self:
            return
        self._detach(session, "connection closed" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        """The client does not read what we send: stop reading what it sends (its acks and
        answers would pile up in our write buffer otherwise)."""
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.session is not None:
            self._drain()
        self._maybe_resume()

    # -- reading --------------------------------------------------------------------------

    def _process(self) -> None:
        broker = self.broker
        if self.session is not None and self._buf[0] in _RUN_FIRST and not self._held:
            self._runs()
            if not self._buf:
                self._flush()
                return
        try:
            frames, used = pk.split(self._buf, broker.limits.max_packet_bytes)
        except pk.MalformedPacket as exc:
            self._malformed(exc)
            return
        if used:
            del self._buf[:used]
        for first, body in frames:
            if self.closing:
                break
            broker.stats.received += 1
            try:
                if self.session is None:
                    self._first_packet(first, body)
                    if self._connecting:  # the rest waits for the CONNECT to be checked
                        self._buf[0:0] = b"".join(
                            _reframe(f, b) for f, b in _after(frames, first, body)
                        )
                        break
                    continue
                if first >> 4 == pk.PUBLISH:
                    self._publish(pk.decode_publish(first & 0x0F, body, self.version))
                else:
                    self._handle(pk.decode(first, body, self.version))
                    if self._held:  # the rest waits for the SUBSCRIBE to be answered
                        self._buf[0:0] = b"".join(
                            _reframe(f, b) for f, b in _after(frames, first, body)
                        )
                        break
            except pk.MalformedPacket as exc:
                self._malformed(exc)
                break
        self._flush()

    def _runs(self) -> None:
        """The hot path: back-to-back plain publishes (QoS 0/1, no retain, no properties) to
        topics with a stream go to it as runs, one acknowledgement slot per run. Stops at
        the first packet that is anything else (or incomplete), which the general path then
        takes, so every check it makes still applies to it."""
        buf = self._buf
        n = len(buf)
        pos = 0
        streams = self._streams
        v5 = self.version == 5
        max_size = self.broker.limits.max_packet_bytes
        limit = self.broker.limits.receive_maximum
        stream: Stream | None = None
        topic: bytes | None = None
        payloads: list[bytes] = []
        ids: list[int] = []
        while pos + 4 < n:
            first = buf[pos]
            if first not in _RUN_FIRST:
                break
            i = pos + 1
            byte = buf[i]
            length = byte & 0x7F
            i += 1
            if byte & 0x80:
                byte = buf[i]
                length |= (byte & 0x7F) << 7
                i += 1
                if byte & 0x80:
                    if i >= n:
                        break
                    byte = buf[i]
                    length |= (byte & 0x7F) << 14
                    i += 1
                    if byte & 0x80:
                        break  # 4-byte lengths (and errors) take the general path
            end = i + length
            if end > n or length + i - pos > max_size or length < 2:
                break
            start = named = i + 2 + (buf[i] << 8 | buf[i + 1])
            packet_id = 0
            if first != 0x30:
                if start + 2 > end:
                    break
                packet_id = buf[start] << 8 | buf[start + 1]
                if not packet_id or self._owed + len(ids) >= limit:
                    break  # (runs cut earlier are in _owed already)
                start += 2
            if v5:
                if start >= end or buf[start]:
                    break  # properties: the general path
                start += 1
            if start > end:
                break
            name = bytes(buf[i + 2 : named])
            if name != topic:
                target = streams[name] if name in streams else self._stream(name)
                if target is None:
                    break
                if stream is not None and topic is not None and payloads:
                    self._run(stream, topic, payloads, ids)
                    payloads, ids = [], []
                stream, topic = target, name
            payloads.append(bytes(buf[start:end]))
            ids.append(packet_id)
            pos = end
        if stream is not None and topic is not None and payloads:
            self._run(stream, topic, payloads, ids)
        if pos:
            del buf[:pos]

    def _stream(self, name: bytes) -> Stream | None:
        """The stream of topic ``name`` (remembered per connection), None if it has none."""
        assert self.identity is not None
        stream = None
        try:
            topic = name.decode()
            check_name(topic)
        except (UnicodeDecodeError, TopicError):
            topic = ""  # the general path refuses it with the right reason
        if topic and not topic.startswith("$"):
            stream = self.broker.hooks.stream(self.identity, topic)
        if len(self._streams) < MAX_STREAMS:
            self._streams[name] = stream
        return stream

    def _run(self, stream: Stream, topic: bytes, payloads: list[bytes], ids: list[int]) -> None:
        stats = self.broker.stats
        stats.received += len(ids)
        stats.publish_received += len(ids)
        slot = _Slot(RUN, 0)
        slot.packet_ids = ids
        owed = slot.owed()
        if owed:
            self._acks.append(slot)
            self._owed += owed
            if self._owed >= self.broker.limits.receive_maximum:
                self._pause_reading()
        stream.submit(payloads, _RunDone(self, topic, payloads, slot))

    def _run_stored(
        self, topic: bytes, payloads: list[bytes], slot: _Slot, codes: RunResult
    ) -> None:
        """A run is stored (``codes`` None) or settled publish by publish: route what was
        stored to subscribers, then its acknowledgements are ready."""
        session = self.session
        if codes is not None and self.version < 5:
            failed = next((c for c in codes if c[0] in SERVER_FAILURES), None)
            if failed is not None:  # nothing acknowledged: the client sends them again
                self.shutdown(failed[0], failed[1] or "the server could not store the messages")
                return
        if session is not None:
            mount = session.identity.mount
            name = topic.decode()
            broker = self.broker
            if broker.has_subscribers(mount, name):
                for n, payload in enumerate(payloads):
                    if codes is None or codes[n][0] < 0x80:
                        qos = 1 if slot.packet_ids[n] else 0
                        broker.publish(
                            mount, Message(name, payload, qos, False, {}, None, session.key)
                        )
        if slot.packet_ids:
            slot.codes = codes
            self._ready(slot, 0, None)

    def _first_packet(self, first: int, body: bytes) -> None:
        if first >> 4 != pk.CONNECT:
            raise pk.MalformedPacket("the first packet must be CONNECT", pk.PROTOCOL_ERROR)
        packet = pk.decode(first, body, 0)
        assert isinstance(packet, pk.Connect)
        self.version = packet.version
        self._connecting = True
        self._pause_reading()
        self.broker.spawn(self._connect(packet))

    def _handle(self, packet: pk.Packet) -> None:
        if isinstance(packet, pk.Ack):
            self._ack_received(packet)
        elif isinstance(packet, pk.Subscribe):
            self._held = True
            self._pause_reading()
            self.broker.spawn(self._subscribe(packet))
        elif isinstance(packet, pk.Unsubscribe):
            self._unsubscribe(packet)
        elif isinstance(packet, pk.Simple):
            if packet.kind == pk.PINGREQ:
                self._send(pk.PINGRESP_PACKET)
            else:
                self.shutdown(
                    pk.BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported"
                )
        elif isinstance(packet, pk.Disconnect):
            self._disconnect(packet)
        else:
            raise pk.MalformedPacket("a second CONNECT", pk.PROTOCOL_ERROR)

    def _malformed(self, exc: pk.MalformedPacket) -> None:
        self.broker.stats.malformed += 1
        who = self.identity.label if self.identity else "unauthenticated client"
        log.info("MQTT %s (%s): %s; closing", who, self.remote, exc)
        if self.identity is not None:
            self.broker.hooks.on_denied(self.identity, "", f"malformed packet: {exc}")
        self.shutdown(exc.code, str(exc))

    # -- CONNECT --------------------------------------------------------------------------

    async def _connect(self, packet: pk.Connect) -> None:
        broker = self.broker
        try:
            async with broker.auth_slots:
                if self.closing:
                    return
                client_id = self._client_id(packet)
                identity = await broker.hooks.authenticate(packet, self.remote)
                held = broker.sessions.get(f"{identity.mount}|{client_id}")
                if held is not None and held.identity.owner != identity.owner:
                    # another identity's session (its subscriptions, queue, commands)
                    raise Refused(pk.NOT_AUTHORIZED, "client identifier in use by another identity")
                owned = broker.owner_sessions.get(identity.owner, 0)
                if held is None and owned >= broker.limits.max_sessions_per_owner:
                    raise Refused(pk.QUOTA_EXCEEDED, f"{owned} sessions already: end some first")
                if packet.will is not None:
                    self._check_will(identity, packet.will)
                    allowed = broker.hooks.may_publish(identity, packet.will.topic)
                    if inspect.isawaitable(allowed):
                        allowed = await allowed
                    if not allowed:
                        raise Refused(
                            pk.NOT_AUTHORIZED, f"will topic {packet.will.topic!r} not allowed"
                        )
        except Refused as exc:
            broker.stats.refused += 1
            log.info("MQTT CONNECT refused (%s): %s", self.remote, exc)
            reason = {pk.REASON_STRING: str(exc)[:200]} if self.version == 5 else {}
            self._send(pk.encode_connack(False, exc.code, self.version, reason))
            self._flush()
            self._close()
            return
        except Exception:
            log.exception("MQTT CONNECT failed (%s)", self.remote)
            self._send(pk.encode_connack(False, pk.UNSPECIFIED_ERROR, self.version, {}))
            self._flush()
            self._close()
            return
        if self.closing:
            return
        self._start_session(packet, client_id, identity)
        self._connecting = False
        self._resume_reading()
        if self._buf:
            self._process()

    def _client_id(self, packet: pk.Connect) -> str:
        if len(packet.client_id) > MAX_CLIENT_ID:
            raise Refused(pk.CLIENT_IDENTIFIER_NOT_VALID, "client identifier too long")
        if packet.client_id:
            return packet.client_id
        if not packet.clean_start and packet.version < 5:
            raise Refused(
                pk.CLIENT_IDENTIFIER_NOT_VALID, "empty client identifier needs clean session"
            )
        return "auto-" + secrets.token_hex(8)

    @staticmethod
    def _check_will(identity: Identity, will: pk.Will) -> None:
        try:
            check_name(will.topic)
        except TopicError as exc:
            raise Refused(pk.TOPIC_NAME_INVALID, f"will topic: {exc}") from None

    def _start_session(self, packet: pk.Connect, client_id: str, identity: Identity) -> None:
        broker = self.broker
        limits = broker.limits
        key = f"{identity.mount}|{client_id}"
        props = packet.properties
        if packet.version == 5:
            expiry = min(props.get(pk.SESSION_EXPIRY, 0), limits.session_expiry_max)
        else:
            expiry = 0 if packet.clean_start else limits.session_expiry_max
        session = broker.sessions.get(key)
        if session is not None and session.connection is not None:
            session.connection.taken_over()
            session = broker.sessions.get(key)  # a session that ended with it is gone
        present = session is not None and not packet.clean_start
        if session is not None and not present:
            broker.end_session(key)
            session = None
        if session is None:
            session = Session(key, client_id, identity, packet.version, expiry)
            broker.sessions[key] = session
            broker.owner_sessions[identity.owner] = broker.owner_sessions.get(identity.owner, 0) + 1
        session.identity = identity
        session.version = packet.version
        session.expiry_seconds = expiry
        session.receive_maximum = props.get(pk.RECEIVE_MAXIMUM, 65535) or 65535
        session.max_packet = props.get(pk.MAXIMUM_PACKET_SIZE, 268_435_460)
        session.connection = self
        if session.will_timer is not None:
            session.will_timer.cancel()
            session.will_timer = None
        self.session = session
        self.identity = identity
        self.keep_alive = packet.keep_alive
        self.will = packet.will
        ack: dict[int, Any] = {}
        if packet.version == 5:
            ack = {
                pk.RECEIVE_MAXIMUM: limits.receive_maximum,
                pk.TOPIC_ALIAS_MAXIMUM: limits.topic_alias_maximum,
                pk.MAXIMUM_PACKET_SIZE: limits.max_packet_bytes,
                pk.RETAIN_AVAILABLE: 1,
                pk.WILDCARD_AVAILABLE: 1,
                pk.SUBSCRIPTION_ID_AVAILABLE: 1,
                pk.SHARED_AVAILABLE: 1,
            }
            if not packet.client_id:
                ack[pk.ASSIGNED_CLIENT_ID] = client_id
            if expiry != props.get(pk.SESSION_EXPIRY, 0):
                ack[pk.SESSION_EXPIRY] = expiry
        self._send(pk.encode_connack(present, pk.SUCCESS, packet.version, ack))
        if present:
            for out in session.inflight.values():  # resend what the client has not acked
                self._write_message(out, dup=True)
        self._drain()
        broker.hooks.on_connected(session)

    def taken_over(self) -> None:
        self._detach_reason = "taken over by a new connection"
        self.shutdown(pk.SESSION_TAKEN_OVER, "another connection took over the session")

    # -- PUBLISH (client -> broker) -------------------------------------------------------

    def _publish(self, p: pk.Publish) -> None:
        session = self.session
        assert session is not None and self.identity is not None
        self.broker.stats.publish_received += 1
        topic = p.topic
        if self.version == 5 and pk.TOPIC_ALIAS in p.properties:
            topic = self._alias(p)
        try:
            check_name(topic)
            if topic.startswith("$"):
                raise TopicError(f"topic {topic!r}: clients may not publish to $ topics")
        except TopicError as exc:
            raise pk.MalformedPacket(str(exc), pk.TOPIC_NAME_INVALID) from None
        p.topic = topic
        slot = None
        if p.qos:
            if p.qos == 2 and p.packet_id in session.incoming_qos2:
                slot = self._slot(pk.PUBREC, p.packet_id)
                waiting = session.incoming_qos2[p.packet_id]
                if waiting is None:
                    self._ready(slot, 0, None)  # a resend of one we have: PUBREC again
                else:
                    waiting.append((self, slot))  # PUBREC once the original is durable
                return
            if self._owed >= self.broker.limits.receive_maximum and self.version == 5:
                raise pk.MalformedPacket("receive maximum exceeded", pk.RECEIVE_MAXIMUM_EXCEEDED)
            slot = self._slot(pk.PUBACK if p.qos == 1 else pk.PUBREC, p.packet_id)
            if p.qos == 2:
                session.incoming_qos2[p.packet_id] = []
        allowed = self.broker.hooks.may_publish(self.identity, topic)
        if allowed is True or allowed is False:
            self._publish_allowed(p, allowed, slot)
        else:
            self.broker.spawn(self._publish_checked(p, allowed, slot))

    def _alias(self, p: pk.Publish) -> str:
        alias = p.properties.pop(pk.TOPIC_ALIAS)
        if not 0 < alias <= self.broker.limits.topic_alias_maximum:
            raise pk.MalformedPacket(f"topic alias {alias} out of range", pk.TOPIC_ALIAS_INVALID)
        if p.topic:
            self._aliases[alias] = p.topic
            return p.topic
        topic = self._aliases.get(alias)
        if topic is None:
            raise pk.MalformedPacket(f"topic alias {alias} was never set", pk.PROTOCOL_ERROR)
        return topic

    async def _publish_checked(
        self, p: pk.Publish, allowed: Awaitable[bool], slot: _Slot | None
    ) -> None:
        try:
            ok = await allowed
        except Exception:
            log.exception("MQTT publish check failed")
            ok = False
        self._publish_allowed(p, ok, slot)

    def _publish_allowed(self, p: pk.Publish, allowed: bool, slot: _Slot | None) -> None:
        identity = self.identity
        assert identity is not None and self.session is not None
        if not allowed:
            self.broker.hooks.on_denied(identity, p.topic, "not authorized to publish here")
            self._refuse(p, slot, pk.NOT_AUTHORIZED, f"not authorized to publish to {p.topic!r}")
            return
        received = monotonic() if pk.MESSAGE_EXPIRY in p.properties else 0.0
        # one small object per publish carries it to its completion (no closure cells)
        done = _Done(self, p, received, slot)
        if not self.broker.hooks.on_publish(identity, p, done):
            routed = self.broker.publish(identity.mount, self._message(p, received))
            if slot is not None:
                self._ready(
                    slot, 0 if routed or self.version < 5 else pk.NO_MATCHING_SUBSCRIBERS, None
                )
            return

    def _stored(
        self, p: pk.Publish, received: float, slot: _Slot | None, code: int, reason: str | None
    ) -> None:
        waiting = self._qos2_settled(p, code < 0x80)
        if code < 0x80:
            for conn, other in waiting:
                conn._ready(other, code, reason)
            mount = self.session.identity.mount if self.session else ""
            broker = self.broker
            # most telemetry has no subscriber: no message object, no routing
            if p.retain or broker.has_subscribers(mount, p.topic):
                broker.publish(mount, self._message(p, received))
            if slot is not None:
                self._ready(slot, code, reason)
        elif code in SERVER_FAILURES and self.version < 5:
            # nothing durable and 3.1.1 has no negative ack: close unacknowledged, so the
            # client sends it again on its next connection
            self.shutdown(code, reason or "the server could not store the message")
        else:
            self._refuse(p, slot, code, reason)

    def _qos2_settled(self, p: pk.Publish, stored: bool) -> list[Any]:
        """A QoS 2 publish is stored (kept as such until PUBREL) or not (forgotten: a resend
        is stored anew); answers the resends that waited for it."""
        session = self.session
        if p.qos != 2 or session is None:
            return []
        waiting = session.incoming_qos2.get(p.packet_id) or []
        if stored:
            session.incoming_qos2[p.packet_id] = None
        else:
            session.incoming_qos2.pop(p.packet_id, None)
            for conn, _ in waiting:
                conn.shutdown(pk.IMPLEMENTATION_SPECIFIC_ERROR, "the message was not stored")
        return list(waiting)

    def _refuse(self, p: pk.Publish, slot: _Slot | None, code: int, reason: str | None) -> None:
        self._qos2_settled(p, False)
        if slot is None:
            return
        # 3.1.1 has no negative acknowledgement: acknowledge (the refusal is recorded where
        # the device's owner sees it), or the client would resend the same message forever
        self._ready(slot, code if self.version == 5 else 0, reason)

    def _message(self, p: pk.Publish, received: float) -> Message:
        props = p.properties
        expires = None
        forwarded = {k: props[k] for k in _FORWARDED if k in props} if props else {}
        if pk.MESSAGE_EXPIRY in props:
            expires = received + props[pk.MESSAGE_EXPIRY]
        assert self.session is not None
        return Message(p.topic, p.payload, p.qos, p.retain, forwarded, expires, self.session.key)

    def _slot(self, kind: int, packet_id: int) -> _Slot:
        slot = _Slot(kind, packet_id)
        self._acks.append(slot)
        self._owed += 1
        if self._owed >= self.broker.limits.receive_maximum:
            self._pause_reading()
        return slot

    def _ready(self, slot: _Slot, code: int, reason: str | None) -> None:
        slot.ready = True
        slot.code = code
        slot.reason = reason
        acks = self._acks
        version = self.version
        while acks and acks[0].ready:
            done = acks.popleft()
            if done.kind == RUN:
                self._owed -= done.owed()
                self._send(_run_acks(done, version))
            else:
                self._owed -= 1
                self._send(
                    pk.encode_ack(done.kind, done.packet_id, version, done.code, done.reason)
                )
        if self._owed < self.broker.limits.receive_maximum // 2:
            self._maybe_resume()
        self._schedule_flush()

    # -- acknowledgements of what we sent --------------------------------------------------

    def _ack_received(self, ack: pk.Ack) -> None:
        session = self.session
        assert session is not None
        if ack.kind == pk.PUBREL:
            known = session.incoming_qos2.pop(ack.packet_id, False) is not False
            code = 0 if known else pk.PACKET_IDENTIFIER_NOT_FOUND  # 3.1.1: plain PUBCOMP
            self._send(pk.encode_ack(pk.PUBCOMP, ack.packet_id, self.version, code))
            return
        out = session.inflight.get(ack.packet_id)
        if out is None:
            if ack.kind == pk.PUBREC:  # not ours (any more): tell a v5 client
                self._send(
                    pk.encode_ack(
                        pk.PUBREL, ack.packet_id, self.version, pk.PACKET_IDENTIFIER_NOT_FOUND
                    )
                )
            return
        if ack.kind == pk.PUBREC and out.qos == 2:
            if ack.code >= 0x80:
                del session.inflight[ack.packet_id]
            else:
                out.released = True
                self._send(pk.encode_ack(pk.PUBREL, ack.packet_id, self.version))
                return
        elif (ack.kind == pk.PUBACK and out.qos == 1) or (ack.kind == pk.PUBCOMP and out.qos == 2):
            del session.inflight[ack.packet_id]
        else:
            raise pk.MalformedPacket(
                f"{pk.NAMES[ack.kind]} for a QoS {out.qos} message", pk.PROTOCOL_ERROR
            )
        if out.message.on_ack is not None:
            out.message.on_ack()
        self._drain()

    # -- sending --------------------------------------------------------------------------

    def can_send(self, qos: int) -> bool:
        session = self.session
        if self.closing or self._write_paused or session is None:
            return False
        return qos == 0 or len(session.inflight) < session.receive_maximum

    def send_message(self, out: Outgoing) -> None:
        session = self.session
        assert session is not None
        if out.qos:
            out.packet_id = session.packet_id()
            session.inflight[out.packet_id] = out
        self._write_message(out, dup=False)

    def _write_message(self, out: Outgoing, dup: bool) -> None:
        session = self.session
        assert session is not None
        message = out.message
        props = out.properties
        if message.expires_at is not None and self.version == 5:
            left = max(0, int(message.expires_at - monotonic()))
            props = {**props, pk.MESSAGE_EXPIRY: left}
        if out.released:
            self._send(pk.encode_ack(pk.PUBREL, out.packet_id, self.version))
            return
        data = pk.encode_publish(
            message.topic,
            message.payload,
            out.qos,
            out.retain,
            dup,
            out.packet_id,
            self.version,
            props,
        )
        if (
            len(data) > session.max_packet
        ):  # the client said it cannot take it: drop (MQTT 5 3.1.2.25)
            session.inflight.pop(out.packet_id, None)
            self.broker.stats.publish_dropped += 1
            return
        self.broker.stats.publish_sent += 1
        self._send(data)

    def _drain(self) -> None:
        """Send queued messages while the client's window has room."""
        session = self.session
        if session is None:
            return
        queue = session.queue
        now = monotonic()
        while queue and self.can_send(queue[0].qos):
            out = queue.popleft()
            if out.message.expired(now):
                continue
            self.send_message(out)

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_pending and self._out:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._out or self.transport is None or self.transport.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        stats = self.broker.stats
        stats.bytes_sent += len(data)
        stats.sent += 1
        self.transport.write(data)

    # -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------

    async def _subscribe(self, packet: pk.Subscribe) -> None:
        """Answer a SUBSCRIBE; what the client sent after it waits until then (in order)."""
        try:
            await self._subscribe_checked(packet)
        except Exception:
            log.exception("MQTT SUBSCRIBE failed (%s)", self.remote)
            self.shutdown(pk.IMPLEMENTATION_SPECIFIC_ERROR, "the subscription could not be made")
        finally:
            self._held = False
            if not self.closing:
                self._maybe_resume()
                if self._buf:
                    self._process()

    async def _subscribe_checked(self, packet: pk.Subscribe) -> None:
        session, identity = self.session, self.identity
        assert session is not None and identity is not None
        sub_id = (packet.properties.get(pk.SUBSCRIPTION_ID) or [None])[0]
        if sub_id == 0:
            self.shutdown(pk.PROTOCOL_ERROR, "subscription identifier 0")
            return
        codes: list[int] = []
        granted: list[tuple[Subscription, bool]] = []
        limit = self.broker.limits.max_subscriptions
        for given, options in packet.filters:
            if given not in session.subscriptions and len(session.subscriptions) >= limit:
                codes.append(pk.QUOTA_EXCEEDED)  # 0x80 for 3.1.1 clients
                continue
            code, sub = await self._subscription(given, options, sub_id)
            if self.closing or self.broker.sessions.get(session.key) is not session:
                return  # the session ended while we checked: nothing may outlive it
            codes.append(code)
            if sub is not None:
                granted.append((sub, self.broker.subscribe(session, given, sub)))
        self._send(pk.encode_suback(packet.packet_id, codes, self.version))
        for sub, new in granted:
            if sub.group is None and (
                sub.retain_handling == 0 or (sub.retain_handling == 1 and new)
            ):
                self.broker.send_retained(session, sub)
        self._flush()
        if granted:
            self.broker.hooks.on_subscribed(session, [s.filter for s, _ in granted])

    async def _subscription(
        self, given: str, options: int, sub_id: int | None
    ) -> tuple[int, Subscription | None]:
        assert self.session is not None and self.identity is not None
        try:
            check_filter(given)
            sub = Subscription.from_options(self.session.key, given, options, sub_id)
            check_filter(sub.filter)
        except TopicError as exc:
            self.broker.hooks.on_denied(self.identity, given, f"invalid topic filter: {exc}")
            return pk.TOPIC_FILTER_INVALID, None
        if sub.group is not None and sub.no_local:
            self.shutdown(pk.PROTOCOL_ERROR, "no-local on a shared subscription")
            return pk.PROTOCOL_ERROR, None
        if sub.filter.startswith("$") and not sub.filter.startswith("$SYS"):
            return pk.TOPIC_FILTER_INVALID, None
        allowed = self.broker.hooks.may_subscribe(self.identity, sub.filter)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            self.broker.hooks.on_denied(self.identity, given, "not authorized to subscribe")
            return pk.NOT_AUTHORIZED, None
        return sub.qos, sub

    def _unsubscribe(self, packet: pk.Unsubscribe) -> None:
        assert self.session is not None
        codes = [0 if self.broker.unsubscribe(self.session, f) else 0x11 for f in packet.filters]
        self._send(pk.encode_unsuback(packet.packet_id, codes, self.version))

    # -- ending ---------------------------------------------------------------------------

    def _disconnect(self, packet: pk.Disconnect) -> None:
        session = self.session
        assert session is not None
        if self.version == 5 and pk.SESSION_EXPIRY in packet.properties:
            session.expiry_seconds = min(
                packet.properties[pk.SESSION_EXPIRY], self.broker.limits.session_expiry_max
            )
        self._clean_exit = packet.code != pk.DISCONNECT_WITH_WILL
        self._detach_reason = "disconnected" if self._clean_exit else "disconnected with will"
        self._close()

    def check_timeouts(self, now: float) -> None:
        if self.closing:
            return
        if self.session is None:
            # a CONNECT being checked gets longer (it may wait for a free check), not forever
            limit = self.broker.limits.connect_timeout * (3 if self._connecting else 1)
            if now - self._opened > limit:
                log.info("MQTT %s: no session after %ss; closing", self.remote, limit)
                self._close()
        elif self._read_paused:
            self._last_rx = now  # we stopped reading (back-pressure): its silence is ours
        elif self.keep_alive and now - self._last_rx > self.keep_alive * 1.5:
            self._detach_reason = "keep-alive timeout"
            self.shutdown(pk.KEEP_ALIVE_TIMEOUT, "keep-alive timeout")

    def shutdown(self, code: int, reason: str) -> None:
        """Close with a reason: MQTT 5 clients get a DISCONNECT first (after CONNACK only)."""
        if self.closing:
            return
        if self.version == 5 and self.session is not None:
            self._send(pk.encode_disconnect(code, reason))
        elif self.session is None and code == pk.UNSUPPORTED_PROTOCOL_VERSION:
            # MQTT-3.1.2-2: CONNACK 0x01, in the 3.1.1 shape every version reads
            self._send(pk.encode_connack(False, code, 4, {}))
        self._flush()
        self._close()

    def _close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        session = self.session
        if session is not None and session.connection is self:
            self._detach(session, getattr(self, "_detach_reason", "connection closed"))

    def _detach(self, session: Session, reason: str) -> None:
        broker = self.broker
        session.connection = None
        session.disconnected_at = monotonic()
        will = self.will if not self._clean_exit else None
        self.will = None
        if will is not None:
            self._schedule_will(session, will)
        if session.expiry_seconds == 0:
            broker.end_session(session.key)
        broker.hooks.on_disconnected(session, reason, will is not None)

    def _schedule_will(self, session: Session, will: pk.Will) -> None:
        delay = min(will.properties.get(pk.WILL_DELAY, 0), session.expiry_seconds)
        props = {k: will.properties[k] for k in _FORWARDED if k in will.properties}
        expires = None
        if pk.MESSAGE_EXPIRY in will.properties:
            expires = monotonic() + will.properties[pk.MESSAGE_EXPIRY]
        message = Message(
            will.topic, will.payload, will.qos, will.retain, props, expires, session.key
        )
        mount = session.identity.mount
        publish = pk.Publish(will.topic, will.payload, will.qos, will.retain, False, 0, props)

        def route(code: int, reason: str | None) -> None:
            if code < 0x80:
                self.broker.publish(mount, message)

        def send() -> None:
            session.will_timer = None
            # a will on a stored topic (telemetry, a channel) is stored like any publish
            if not self.broker.hooks.on_publish(session.identity, publish, route):
                self.broker.publish(mount, message)

        if delay:
            session.will_timer = self._loop.call_later(delay, send)
        else:
            send()

    def _maybe_resume(self) -> None:
        """Read again unless something still holds reading back."""
        if (
            self._read_paused
            and not (self._connecting or self._held or self._write_paused)
            and self._owed < self.broker.limits.receive_maximum
        ):
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closing:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closing:
            self._read_paused = False
            self.transport.resume_reading()


class _Done:
    """``done(code, reason)`` for a publish the platform stores."""

    __slots__ = ("conn", "publish", "received", "slot")

    def __init__(self, conn: Connection, publish: pk.Publish, received: float, slot: _Slot | None):
        self.conn = conn
        self.publish = publish
        self.received = received
        self.slot = slot

    def __call__(self, code: int, reason: str | None) -> None:
        self.conn._stored(self.publish, self.received, self.slot, code, reason)


class _RunDone:
    """``done(codes)`` for a run of publishes handed to a stream."""

    __slots__ = ("conn", "payloads", "slot", "topic")

    def __init__(self, conn: Connection, topic: bytes, payloads: list[bytes], slot: _Slot):
        self.conn = conn
        self.topic = topic
        self.payloads = payloads
        self.slot = slot

    def __call__(self, codes: RunResult) -> None:
        self.conn._run_stored(self.topic, self.payloads, self.slot, codes)


_RUN_FIRST = frozenset({0x30, 0x32, 0x3A})  # PUBLISH QoS 0, QoS 1, QoS 1 resent; no retain


def _run_acks(slot: _Slot, version: int) -> bytes:
    """The PUBACKs of a run's QoS 1 publishes, in order."""
    ids = slot.packet_ids
    if slot.codes is None:  # 0x40 0x02 and the packet id: one 32-bit big-endian word each
        acks = array("I", [0x40020000 | i for i in ids if i])
        if sys.byteorder == "little":
            acks.byteswap()
        return acks.tobytes()
    return b"".join(
        [
            pk.encode_ack(pk.PUBACK, i, version, code if version == 5 else 0, reason)
            for i, (code, reason) in zip(ids, slot.codes, strict=True)
            if i
        ]
    )


def _reframe(first: int, body: bytes) -> bytes:
    return bytes((first,)) + pk.varint(len(body)) + body


def _after(frames: list[tuple[int, bytes]], first: int, body: bytes) -> list[tuple[int, bytes]]:
    """The frames after the given one (they wait in the buffer until CONNECT is checked)."""
    for i, frame in enumerate(frames):
        if frame[0] == first and frame[1] is body:
            return frames[i + 1 :]
    return []
