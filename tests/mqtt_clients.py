"""Real MQTT clients for the tests: paho-mqtt (3.1.1 and 5) and mosquitto_pub/_sub."""

from __future__ import annotations

import queue
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V311, V5 = 4, 5


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any = None


@dataclass
class Paho:
    """A paho client on its network thread, with what it saw queued for the test."""

    port: int
    client_id: str
    username: str | None
    password: str | None
    version: int = V5
    transport: str = "tcp"
    tls_ca: str | None = None
    client: mqtt.Client = field(init=False)
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    acks: dict[int, int] = field(default_factory=dict)
    connack: queue.Queue[tuple[int, bool]] = field(default_factory=queue.Queue)
    disconnects: queue.Queue[int] = field(default_factory=queue.Queue)
    granted: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    _acked: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        protocol = mqtt.MQTTv5 if self.version == V5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {}
        if self.version == V311:
            kwargs["clean_session"] = True
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport=self.transport,  # type: ignore[arg-type]
            reconnect_on_failure=False,
            **kwargs,
        )
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls_ca is not None:
            self.client.tls_set(ca_certs=self.tls_ca)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    # callbacks run on paho's thread
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connack.put((int(rc.value), bool(flags.session_present)))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self.messages.put(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain), props))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any = None) -> None:
        with self._acked:
            self.acks[mid] = int(rc.value)
            self._acked.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any = None) -> None:
        self.granted.put([int(x.value) for x in codes])

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.disconnects.put(int(rc.value))

    def connect(
        self,
        keepalive: int = 30,
        clean: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        timeout: float = 10,
    ) -> tuple[int, bool]:
        """Connect and wait for CONNACK: (reason code, session present)."""
        if will is not None:
            self.client.will_set(*will)
        if self.transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        props = None
        kwargs: dict[str, Any] = {}
        if self.version == V5:
            kwargs["clean_start"] = clean
            if session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
            kwargs["properties"] = props
        elif not clean:
            self.client._clean_session = False
        self.client.connect("127.0.0.1", self.port, keepalive, **kwargs)
        self.client.loop_start()
        return self.connack.get(timeout=timeout)

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, **props: Any
    ) -> int:
        """Publish and, for QoS 1/2, wait for the broker's answer: the reason code (3.1.1: 0)."""
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        if qos == 0:
            return 0
        with self._acked:
            self._acked.wait_for(lambda: info.mid in self.acks, timeout=10)
        assert info.mid in self.acks, f"no acknowledgement for {topic}"
        return self.acks[info.mid]

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic_filter, qos)
        return self.granted.get(timeout=10)

    def next(self, timeout: float = 5) -> Received:
        return self.messages.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            got = self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {got.topic}: {got.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._release()

    def _release(self) -> None:
        # paho keeps a socket pair to wake its loop and leaves it open after loop_stop
        for name in ("_sockpairR", "_sockpairW"):
            sock = getattr(self.client, name, None)
            if sock is not None:
                sock.close()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (the will fires)."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()
        self._release()


def mosquitto(
    tool: str, port: int, *args: str, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    """Run mosquitto_pub or mosquitto_sub against the broker on ``port``."""
    return subprocess.run(
        [tool, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
