"""The broker core against hand-made hooks and raw sockets: QoS 2 resends and store
failures, sessions and identities, SUBSCRIBE ordering and sessions that end mid-check."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from motes.mqtt import packets as pk
from motes.mqtt.broker import Broker, BrokerLimits
from motes.mqtt.models import Identity, Message, Session


class FakeHooks:
    """user name = device id; a device touches only devices/{id}/...; telemetry is 'stored'
    by whatever ``store`` does with ``done``."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []
        self.store: Callable[[pk.Publish, Any], None] = self._ok
        self.subscribe_delay = 0.0
        self.streams = False  # telemetry through stream() runs instead of on_publish
        self.runs: list[list[bytes]] = []
        self.run_store: Callable[[list[bytes], Any], None] = lambda payloads, done: done(None)

    def _ok(self, p: pk.Publish, done: Any) -> None:
        self.stored.append((p.topic, p.payload))
        done(0, None)

    async def authenticate(self, connect: pk.Connect, remote: str) -> Identity:
        user = connect.username or ""
        return Identity("org1", f"device {user}", user, owner=f"device:{user}")

    def may_publish(self, identity: Identity, topic: str) -> bool:
        return topic.split("/")[:2] == ["devices", identity.device]

    def may_subscribe(self, identity: Identity, topic_filter: str) -> bool | Awaitable[bool]:
        ok = topic_filter.split("/")[:2] == ["devices", identity.device]
        if not self.subscribe_delay:
            return ok

        async def later() -> bool:
            await asyncio.sleep(self.subscribe_delay)
            return ok

        return later()

    def on_publish(self, identity: Identity, publish: pk.Publish, done: Any) -> bool:
        if publish.topic.endswith("/telemetry"):
            self.store(publish, done)
            return True
        return False

    def stream(self, identity: Identity, topic: str) -> FakeStream | None:
        if self.streams and topic.endswith("/telemetry") and self.may_publish(identity, topic):
            return FakeStream(self)
        return None  # every publish through on_publish

    def on_denied(self, identity: Identity, topic: str, reason: str) -> None:
        pass

    def on_connected(self, session: Session) -> None:
        pass

    def on_subscribed(self, session: Session, filters: list[str]) -> None:
        pass

    def on_disconnected(self, session: Session, reason: str, will: bool) -> None:
        pass


class FakeStream:
    def __init__(self, hooks: FakeHooks) -> None:
        self.hooks = hooks

    def submit(self, payloads: list[bytes], done: Any) -> None:
        self.hooks.runs.append(payloads)
        self.hooks.run_store(payloads, done)


def _s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect311(client_id: str, user: str, clean: bool) -> bytes:
    body = _s("MQTT") + bytes([4, 0xC0 | (0x02 if clean else 0)]) + (60).to_bytes(2, "big")
    body += _s(client_id) + _s(user) + _s("pw")
    return bytes([0x10, len(body)]) + body


def publish(topic: str, payload: bytes, qos: int, packet_id: int, dup: bool = False) -> bytes:
    body = _s(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (0x08 if dup else 0) | qos << 1, len(body)]) + body


def subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _s(topic_filter) + bytes([qos])
    return bytes([0x82, len(body)]) + body


def unsubscribe(packet_id: int, topic_filter: str) -> bytes:
    body = packet_id.to_bytes(2, "big") + _s(topic_filter)
    return bytes([0xA2, len(body)]) + body


async def read_packet(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(2), timeout)
    assert head[1] < 128
    return head + await reader.readexactly(head[1])


async def start(hooks: FakeHooks, **limits: Any) -> tuple[Broker, int]:
    broker = Broker(hooks, BrokerLimits(**limits))  # type: ignore[arg-type]
    server = await broker.listen("127.0.0.1", 0)
    return broker, server.sockets[0].getsockname()[1]


async def open_client(
    port: int, client_id: str, user: str, clean: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect311(client_id, user, clean))
    connack = await read_packet(reader)
    return reader, writer, connack


def test_qos2_resend_after_a_failed_store_is_stored_not_just_pubrec_ed() -> None:
    """3.1.1, persistent session: the store fails, the connection is closed unacknowledged
    (docs: 'the client resends'). The resend must be stored; a resend answered PUBREC
    without being stored would be an acknowledged loss."""

    async def run() -> None:
        hooks = FakeHooks()
        fail_once = [True]

        def store(p: pk.Publish, done: Any) -> None:
            if fail_once[0]:
                fail_once[0] = False
                done(pk.UNSPECIFIED_ERROR, "disk full")
                return
            hooks._ok(p, done)

        hooks.store = store
        broker, port = await start(hooks)
        reader, writer, connack = await open_client(port, "c1", "d1", clean=False)
        assert connack == b"\x20\x02\x00\x00"
        writer.write(publish("devices/d1/telemetry", b"m v=1", 2, 7))
        assert await reader.read(100) == b""  # closed, no PUBREC: fine
        writer.close()
        reader, writer, connack = await open_client(port, "c1", "d1", clean=False)
        assert connack == b"\x20\x02\x01\x00"  # session present
        writer.write(publish("devices/d1/telemetry", b"m v=1", 2, 7, dup=True))
        assert await read_packet(reader) == b"\x50\x02\x00\x07"  # PUBREC
        assert hooks.stored == [("devices/d1/telemetry", b"m v=1")], "PUBREC'd but not stored"
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_qos2_resend_on_a_new_connection_waits_for_the_original_store() -> None:
    """The first connection's QoS 2 publish is still being stored when the client reconnects
    and resends it (DUP). PUBREC must not leave before the store is durable, though the
    id is already in the session's ``incoming_qos2``."""

    async def run() -> None:
        hooks = FakeHooks()
        held: list[Any] = []
        hooks.store = lambda p, done: held.append(done)  # never durable during the test
        broker, port = await start(hooks)
        reader, writer, _ = await open_client(port, "c2", "d1", clean=False)
        writer.write(publish("devices/d1/telemetry", b"m v=1", 2, 9))
        await asyncio.sleep(0.1)
        assert held
        writer.close()
        await asyncio.sleep(0.1)
        reader, writer, connack = await open_client(port, "c2", "d1", clean=False)
        assert connack[2] == 1
        writer.write(publish("devices/d1/telemetry", b"m v=1", 2, 9, dup=True))
        try:
            got = await read_packet(reader, timeout=0.5)
        except TimeoutError:
            got = b""
        assert got != b"\x50\x02\x00\x09", "PUBREC sent while the message is not durable"
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_a_persistent_session_is_not_inherited_by_another_identity() -> None:
    """Session key = mount|client id: device d2 connecting with the client id device d1 used
    gets d1's persistent session, its subscriptions (devices/d1/#) and d1's queued messages,
    though d2 may never subscribe to them itself."""

    async def run() -> None:
        hooks = FakeHooks()
        broker, port = await start(hooks)
        reader, writer, _ = await open_client(port, "shared-id", "d1", clean=False)
        writer.write(subscribe(1, "devices/d1/#"))
        assert (await read_packet(reader))[0] == 0x90
        writer.close()
        await asyncio.sleep(0.1)
        # something for d1 while it is away (queued in its session)
        r1, w1, _ = await open_client(port, "pub", "d1", clean=True)
        w1.write(publish("devices/d1/secret", b"for d1 only", 1, 1))
        await read_packet(r1)
        reader, writer, connack = await open_client(port, "shared-id", "d2", clean=False)
        leaked = b""
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):  # refused, closed
            leaked = await read_packet(reader, timeout=0.5)
        assert connack[2] == 0, "d2 was handed d1's session (session present)"
        assert connack[3] == 0x05, "d2 must be refused (not authorized), not given a session"
        assert b"for d1 only" not in leaked, "d2 received d1's message"
        writer.close()
        w1.close()
        await broker.stop()

    asyncio.run(run())


def test_subscribe_answered_after_the_session_ended_leaves_no_subscription() -> None:
    """SUBSCRIBE runs as a task; when its ACL check awaits and the client leaves meanwhile
    (clean session: the session ends), the task still adds the subscription to the tree: an
    orphan that no end_session removes (and that a later session with the same key inherits
    in routing without having it in session.subscriptions)."""

    async def run() -> None:
        hooks = FakeHooks()
        hooks.subscribe_delay = 0.2
        broker, port = await start(hooks)
        _reader, writer, _ = await open_client(port, "c3", "d1", clean=True)
        writer.write(subscribe(1, "devices/d1/#"))
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(0.4)
        assert not broker.sessions
        assert broker.tree.count == 0, "a subscription of an ended session is still routed"
        await broker.stop()

    asyncio.run(run())


def test_subscribe_then_unsubscribe_in_one_read_ends_unsubscribed() -> None:
    """SUBSCRIBE is handled in a task, UNSUBSCRIBE inline: sent back to back, the UNSUBSCRIBE
    runs first and the subscription survives it (and UNSUBACK overtakes SUBACK)."""

    async def run() -> None:
        hooks = FakeHooks()
        broker, port = await start(hooks)
        reader, writer, _ = await open_client(port, "c4", "d1", clean=True)
        writer.write(subscribe(1, "devices/d1/x") + unsubscribe(2, "devices/d1/x"))
        first = await read_packet(reader)
        await read_packet(reader)
        assert first[0] == 0x90, "UNSUBACK came before the SUBACK of the earlier SUBSCRIBE"
        assert broker.tree.count == 0, "still subscribed after UNSUBSCRIBE"
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_retained_messages_are_capped_in_bytes_per_org() -> None:
    broker = Broker(FakeHooks(), BrokerLimits(max_retained_bytes=1000))
    for i in range(5):
        broker.keep_retained("org1", Message(f"devices/d1/r{i}", b"x" * 300, 0, True, {}))
    assert len(broker.retained["org1"]) == 3  # the fourth would pass 1,000 bytes
    broker.keep_retained("org1", Message("devices/d1/r0", b"", 0, True, {}))  # cleared
    assert broker.retained_bytes["org1"] == 600
    broker.keep_retained("org1", Message("devices/d1/r9", b"y" * 300, 0, True, {}))
    assert set(broker.retained["org1"]) == {"devices/d1/r1", "devices/d1/r2", "devices/d1/r9"}
    broker.keep_retained("other", Message("devices/d1/r0", b"z" * 900, 0, True, {}))
    assert "devices/d1/r0" in broker.retained["other"]  # another org has its own budget


def test_sessions_per_owner_are_capped() -> None:
    async def run() -> None:
        hooks = FakeHooks()
        broker, port = await start(hooks, max_sessions_per_owner=2)
        conns = []
        for i in range(2):
            conns.append(await open_client(port, f"s{i}", "d1", clean=False))
            assert conns[-1][2][3] == 0
        _, third_writer, connack = await open_client(port, "s2", "d1", clean=False)
        assert connack[3] != 0  # refused: quota (3.1.1 shows it as server unavailable/5)
        _, again_writer, again = await open_client(port, "s0", "d1", clean=False)
        assert again[3] == 0  # its own existing session is fine
        for _, writer, _ in conns:
            writer.close()
        third_writer.close()
        again_writer.close()
        await broker.stop()

    asyncio.run(run())


# -- runs: back-to-back publishes handed to a stream together ------------------------------------


def connect5(client_id: str, user: str) -> bytes:
    return pk.encode_connect(client_id, user, "pw", 60, True, 5)


async def open_client5(
    port: int, client_id: str, user: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An MQTT 5 client, connected (CONNACK read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect5(client_id, user))
    assert (await read_packet(reader))[0] == 0x20
    return reader, writer


async def read_all(reader: asyncio.StreamReader, timeout: float = 1.0) -> bytes:
    """What arrives until the connection is closed or ``timeout`` passes without data."""
    got = b""
    with contextlib.suppress(TimeoutError):
        while data := await asyncio.wait_for(reader.read(65536), timeout):
            got += data
    return got


def test_runs_and_single_publishes_are_acked_in_publish_order() -> None:
    """Telemetry runs, a PINGREQ and publishes after it (the general path) in one write:
    every PUBACK in publish order, the runs' payloads in order, QoS 0 without an ack."""

    async def run() -> None:
        hooks = FakeHooks()
        hooks.streams = True
        held: list[Any] = []
        hooks.run_store = lambda payloads, done: held.append(done)  # durable later
        broker, port = await start(hooks)
        reader, writer, _ = await open_client(port, "c", "d1", clean=True)
        t = "devices/d1/telemetry"
        writer.write(
            publish(t, b"a", 1, 1) + publish(t, b"b", 0, 0) + publish(t, b"c", 1, 2)
            + bytes([0xC0, 0])  # PINGREQ
            + publish(t, b"d", 1, 3) + publish("devices/d1/other", b"e", 1, 4)
        )  # fmt: skip
        assert await read_packet(reader) == b"\xd0\x00"  # PINGRESP: acks wait for the run
        assert hooks.runs == [[b"a", b"b", b"c"]]
        assert hooks.stored == [("devices/d1/telemetry", b"d")]  # after PINGREQ: one by one
        with contextlib.suppress(TimeoutError):
            early = await read_packet(reader, timeout=0.3)
            raise AssertionError(f"acknowledged before the run was durable: {early!r}")
        held[0](None)
        acks = [await read_packet(reader) for _ in range(4)]
        assert acks == [b"\x40\x02\x00" + bytes([n]) for n in (1, 2, 3, 4)]
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_a_failed_run_closes_a_311_connection_unacknowledged() -> None:
    """3.1.1 has no negative PUBACK: when the store fails, nothing of the run is acked and
    the connection closes, so the client sends the messages again."""

    async def run() -> None:
        hooks = FakeHooks()
        hooks.streams = True
        hooks.run_store = lambda payloads, done: done(
            [(pk.UNSPECIFIED_ERROR, "disk full")] * len(payloads)
        )
        broker, port = await start(hooks)
        reader, writer, _ = await open_client(port, "c", "d1", clean=True)
        t = "devices/d1/telemetry"
        writer.write(publish(t, b"a", 1, 1) + publish(t, b"b", 1, 2))
        assert await read_all(reader) == b""  # closed, no PUBACK
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_a_run_answers_each_v5_publish_with_its_own_reason_code() -> None:
    async def run() -> None:
        hooks = FakeHooks()
        hooks.streams = True
        hooks.run_store = lambda payloads, done: done(
            [(0x99, "bad") if p == b"bad" else (0, None) for p in payloads]
        )
        broker, port = await start(hooks)
        reader, writer = await open_client5(port, "c5", "d1")
        t = "devices/d1/telemetry"
        writer.write(
            b"".join(
                pk.encode_publish(t, p, 1, False, False, n, 5)
                for n, p in enumerate([b"ok", b"bad", b"ok"], 1)
            )
        )
        assert await read_packet(reader) == b"\x40\x02\x00\x01"
        nack = await read_packet(reader)
        assert nack[:5] == b"\x40" + bytes([len(nack) - 2]) + b"\x00\x02\x99"
        assert nack.endswith(b"bad")  # the reason string
        assert await read_packet(reader) == b"\x40\x02\x00\x03"
        writer.close()
        await broker.stop()

    asyncio.run(run())


@pytest.mark.parametrize(
    "topics",
    [["devices/d1/telemetry"], ["devices/d1/telemetry", "devices/d1/x/telemetry"]],
    ids=["one topic", "alternating topics"],
)
def test_runs_count_toward_the_receive_maximum_in_v5(topics: list[str]) -> None:
    """Runs count toward the receive maximum like single publishes: the v5 client that
    sends more unacknowledged QoS 1 publishes than the broker allows is disconnected
    (0x93), and the publishes within the limit are all that reached the platform. A client
    alternating topics cuts a run at every publish: the runs together still count."""

    async def run() -> None:
        hooks = FakeHooks()
        hooks.streams = True
        hooks.run_store = lambda payloads, done: None  # never durable
        broker, port = await start(hooks, receive_maximum=5)
        reader, writer = await open_client5(port, "c5", "d1")
        writer.write(
            b"".join(
                pk.encode_publish(topics[n % len(topics)], b"x", 1, False, False, n, 5)
                for n in range(1, 41)
            )
        )
        got = await read_all(reader)
        assert got[:1] == b"\xe0" and got[2] == pk.RECEIVE_MAXIMUM_EXCEEDED, got
        assert sum(map(len, hooks.runs)) == 5  # the window's worth; the sixth is the error
        writer.close()
        await broker.stop()

    asyncio.run(run())


def test_a_publish_with_an_empty_topic_is_refused_with_its_reason_code() -> None:
    """The run path leaves it to the general path, which answers it (DISCONNECT 0x82 in
    MQTT 5): no exception escapes into the event loop."""

    async def run() -> None:
        hooks = FakeHooks()
        hooks.streams = True
        broker, port = await start(hooks)
        errors: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        reader, writer = await open_client5(port, "c5", "d1")
        writer.write(pk.encode_publish("", b"m v=1", 1, False, False, 1, 5))
        got = await read_all(reader)
        assert got[:1] == b"\xe0" and got[2] == pk.TOPIC_NAME_INVALID, got
        assert not errors, errors[0].get("exception")
        assert hooks.runs == [] and hooks.stored == []
        writer.close()
        await broker.stop()

    asyncio.run(run())
