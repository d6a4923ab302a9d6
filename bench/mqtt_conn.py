"""Connections of the MQTT benchmark's client processes, and the idle-connection process.

``bench/mqtt_load.py`` (publishers) and ``bench/mqtt_subscriber.py`` (the counting
subscriber) build on these: a ``Plan`` says how to talk to the broker, a ``Client`` who a
connection is (client id = device id), a ``Conn`` is one non-blocking socket with its buffers,
and ``open_connections`` connects many at a time. ``idle_main`` is the idle scenario's
process: connections that connect and then only keep alive. Packets come from
``bench/mqtt_codec.py``, sent as raw bytes.
"""

from __future__ import annotations

import selectors
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

from bench import mqtt_codec as codec

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CONNECT_BATCH = 16  # handshakes in flight per process; 4 processes stay under a backlog of 100


@dataclass(frozen=True)
class Client:
    """One connection's identity: client id = device id; credentials if the broker wants them."""

    client_id: str
    username: str | None = None
    password: str | None = None

    @property
    def topic(self) -> str:
        return f"devices/{self.client_id}/telemetry"


@dataclass(frozen=True)
class Plan:
    """How every connection of a measurement talks to the broker."""

    host: str
    port: int
    version: int = codec.V311
    qos: int = 1
    keepalive: int = 60
    inflight: int = 100
    measurement: str = "m"

    def line(self, device: str, value: float, ts_ns: int) -> bytes:
        return f"{self.measurement},device={device} v={value} {ts_ns}".encode()


@dataclass
class Tally:
    """What one process's connections did; times are ``perf_counter`` (system-wide monotonic)."""

    connected: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0  # PUBACKs with an MQTT 5 error reason
    dropped: int = 0  # idle connections the broker closed
    started: float = 0.0
    finished: float = 0.0
    sent_until: float = 0.0  # paced: when the last message was written
    connect_s: float = 0.0
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


class Conn:
    """A connected socket, its receive buffer and, when publishing, its messages."""

    __slots__ = (
        "acked",
        "buf",
        "client",
        "data",
        "error",
        "index",
        "last_ts",
        "n",
        "next_id",
        "offsets",
        "outbuf",
        "outstanding",
        "pos",
        "queue",
        "refused",
        "sent_top",
        "sock",
        "stop_n",
        "topic",
        "want_write",
    )

    def __init__(self, index: int, client: Client, sock: socket.socket) -> None:
        self.index, self.client, self.sock = index, client, sock
        self.topic = codec.string(client.topic)
        self.buf = bytearray()
        self.error: str | None = None
        self.data = memoryview(b"")
        self.offsets: list[int] = [0]
        self.n = self.stop_n = self.pos = self.acked = self.refused = self.sent_top = 0
        self.want_write = False
        # paced publishing
        self.last_ts, self.next_id = 0, 0
        self.queue: deque[tuple[int, float, bytes]] = deque()
        self.outstanding: dict[int, float] = {}
        self.outbuf = bytearray()

    def receive(self) -> tuple[bytes, list[tuple[int, int, int]]]:
        """The bytes received and the complete packets in them (offsets into those bytes)."""
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return b"", []
        except OSError as exc:
            data, self.error = b"", self.error or repr(exc)
        if not data:
            self.error = self.error or "connection closed by the broker"
            return b"", []
        if self.buf:
            data = bytes(self.buf) + data
        packets, used = codec.split(data)
        self.buf = bytearray(data[used:])
        return data, packets


# -- connecting -------------------------------------------------------------------------------


def open_connections(
    plan: Plan, clients: list[tuple[int, Client]], errors: list[str]
) -> list[Conn]:
    """Connect ``clients`` (index, identity), ``CONNECT_BATCH`` handshakes at a time."""
    conns: list[Conn] = []
    for lo in range(0, len(clients), CONNECT_BATCH):
        group = []
        for index, client in clients[lo : lo + CONNECT_BATCH]:
            try:
                sock = socket.create_connection((plan.host, plan.port), timeout=30.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pkt = codec.connect(
                    client.client_id,
                    client.username,
                    client.password,
                    keepalive=plan.keepalive,
                    version=plan.version,
                )
                sock.sendall(pkt)
                sock.setblocking(False)
            except OSError as exc:
                errors.append(f"{client.client_id}: connect: {exc!r}")
                continue
            group.append(Conn(index, client, sock))
        conns += _await_connacks(group, errors)
    return conns


def _await_connacks(group: list[Conn], errors: list[str], timeout: float = 60.0) -> list[Conn]:
    """The connections of ``group`` whose CONNACK accepted them; the others are closed."""
    sel = selectors.DefaultSelector()
    for c in group:
        sel.register(c.sock, READ, c)
    ok: list[Conn] = []
    waiting = len(group)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, _mask in sel.select(timeout=1.0):
            c = key.data
            data, packets = c.receive()
            if not packets and c.error is None:
                continue
            sel.unregister(c.sock)
            waiting -= 1
            code = codec.connack_code(data, packets[0][1], packets[0][2]) if packets else None
            if packets and packets[0][0] == codec.CONNACK and code == 0:
                ok.append(c)
            else:
                errors.append(f"{c.client.client_id}: refused (CONNACK {code}, {c.error})")
                c.sock.close()
    for key in list(sel.get_map().values()):
        errors.append(f"{key.data.client.client_id}: no CONNACK within {timeout:.0f}s")
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return ok


def close_all(conns: list[Conn]) -> None:
    """DISCONNECT (best effort) and close."""
    for c in conns:
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(1.0)
            c.sock.sendall(codec.DISCONNECT)
        except OSError:
            pass
        c.sock.close()


def record_failure(errors: list[str]) -> None:
    """The current exception's traceback, as one of ``errors``."""
    errors.append(traceback.format_exc(limit=5))


# -- idle connections --------------------------------------------------------------------------


def connect_all(plan: Plan, clients: list[tuple[int, Client]], tally: Tally) -> list[Conn]:
    """Open the clients' connections, counting them and the time taken in ``tally``."""
    t = time.perf_counter()
    conns = open_connections(plan, clients, tally.errors)
    tally.connected, tally.connect_s = len(conns), time.perf_counter() - t
    return conns


def idle_main(
    plan: Plan, clients: list[tuple[int, Client]], ready: Any, release: Event, out: Any
) -> None:
    """Connect, report, then only answer keep-alive until ``release``; report who was dropped."""
    tally, conns = Tally(), []
    try:
        conns = connect_all(plan, clients, tally)
    except Exception:
        record_failure(tally.errors)
    ready.put(tally)
    last_ping = time.monotonic()
    while not release.wait(1.0):
        if time.monotonic() - last_ping >= plan.keepalive / 2:
            last_ping = time.monotonic()
            for c in conns:
                c.receive()  # the last PINGRESP
                try:
                    c.sock.send(codec.PINGREQ)
                except OSError as exc:
                    c.error = c.error or repr(exc)
    for c in conns:
        c.receive()
    dropped = [c for c in conns if c.error is not None]
    tally.errors += [f"{c.client.client_id}: {c.error}" for c in dropped[:5]]
    tally.dropped = len(dropped)
    out.put(tally)
    close_all(conns)
