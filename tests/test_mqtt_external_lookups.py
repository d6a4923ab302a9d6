"""External-broker mode's device look-ups (motes/mqtt/external.py): done in a thread, in the
order the messages came, and a reconnect while one is running loses nothing of the new
connection."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from motes.mqtt import packets as pk
from motes.mqtt.external import ExternalBroker


class FakeWriter:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    def pubacks(self) -> list[int]:
        return [int.from_bytes(d[2:4], "big") for d in self.out if d[0] == 0x40]


class StoringHooks:
    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def on_publish(self, identity: Any, p: pk.Publish, done: Any) -> bool:
        self.stored.append(p.payload)
        done(0, None)
        return True

    def _bucket(self, org: str, bucket: Any) -> Any:
        return None


def publish(device: str, payload: bytes, packet_id: int) -> pk.Publish:
    return pk.Publish(f"devices/{device}/telemetry", payload, 1, False, False, packet_id, {})


def consumer() -> tuple[threading.Event, StoringHooks, ExternalBroker]:
    """A consumer whose look-up of device "slow" waits until the event is set."""
    gate = threading.Event()

    def locate(kind: str, ident: str) -> Any:
        if ident == "slow":
            gate.wait(5)
        return ("org1", None)

    hooks = StoringHooks()
    return gate, hooks, ExternalBroker("mqtt://127.0.0.1:1", hooks, locate)  # type: ignore[arg-type]


def test_messages_are_stored_in_order_while_a_device_is_looked_up() -> None:
    async def run() -> None:
        gate, hooks, ext = consumer()
        writer = FakeWriter()
        ext._writer = writer  # type: ignore[assignment]
        ext._publish(publish("slow", b"1", 1))
        ext._publish(publish("fast", b"2", 2))  # waits behind the look-up of "slow"
        await asyncio.sleep(0.05)
        assert hooks.stored == [] and writer.pubacks() == []
        gate.set()
        await asyncio.sleep(0.2)
        assert hooks.stored == [b"1", b"2"]
        assert writer.pubacks() == [1, 2]

    asyncio.run(run())


def test_a_reconnect_during_a_look_up_loses_nothing_of_the_new_connection() -> None:
    """The old connection's message is dropped unacknowledged (the broker sends it again);
    the new connection's messages are all stored and acknowledged."""

    async def run() -> None:
        gate, hooks, ext = consumer()
        old = FakeWriter()
        ext._writer = old  # type: ignore[assignment]
        ext._publish(publish("slow", b"old", 1))
        await asyncio.sleep(0.05)  # the look-up of "slow" is in its thread
        ext._disconnected()  # the connection drops ...
        new = FakeWriter()
        ext._writer = new  # type: ignore[assignment]  # ... and comes back
        for n, device in enumerate(["a", "b", "c"], 1):
            ext._publish(publish(device, device.encode(), n))
        gate.set()
        await asyncio.sleep(0.3)
        ext._publish(publish("a", b"d", 4))
        await asyncio.sleep(0.1)
        assert hooks.stored == [b"a", b"b", b"c", b"d"]
        assert new.pubacks() == [1, 2, 3, 4] and old.pubacks() == []
        assert not new.closed

    asyncio.run(run())
