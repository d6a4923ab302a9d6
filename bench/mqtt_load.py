"""The MQTT benchmark's client processes: publishers, idle connections, a counting subscriber.

Each runs in a process of its own (forked by ``bench/mqtt_scenarios.py``) and drives many
connections from one thread with non-blocking sockets and a ``selectors`` loop, sending
packets from ``bench/mqtt_codec.py`` as raw bytes, so that one process can push far more
than a client library would (one paho process tops out near 30 k messages/s here):

- ``publish_main``: every message of every connection encoded before the start, then sent
  as fast as the broker takes them, at most ``inflight`` unacknowledged (QoS 1) per
  connection; counts PUBACKs.
- ``paced_main``: messages at a fixed rate, encoded when due and stamped with the
  wall-clock time they were due; each PUBACK is timed from that moment (so a stalled broker,
  or a late generator, shows up as latency, not as fewer samples).
- ``idle_main``: connections that connect and then only keep alive.
- ``subscriber_main``: one subscription; counts deliveries and, with ``timed``, takes each
  one's receive time minus the timestamp in its payload.

A message is one line-protocol point, ``m,device=<id> v=<float> <ns timestamp>``, published
to ``devices/<id>/telemetry``; timestamps are unique per device so a store keeps every message.
"""

from __future__ import annotations

import selectors
import socket
import time
import traceback
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from bench import mqtt_codec as codec
from bench.common import own_cpu_seconds

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
CONNECT_BATCH = 16  # handshakes in flight per process; 4 processes stay under a backlog of 100
REFILL = 0.25  # share of the window that must be free before a connection sends again
ACK_FIRST, ACK_LEN = b"\x40" * 65536, b"\x02" * 65536  # a recv holds < 65,536 PUBACKs


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
            c: Conn = key.data
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


def _fail(tally: Tally) -> None:
    tally.errors.append(traceback.format_exc(limit=5))


# -- publishing as fast as the broker takes it -------------------------------------------------


def encode_messages(plan: Plan, c: Conn, count: int, total_conns: int, t0_ns: int) -> None:
    """``count`` PUBLISH packets of connection ``c``, back to back in one buffer.

    Message *i* of connection *g* has timestamp ``t0_ns + (i * total_conns + g)`` µs: unique
    across all devices, so a store keeps every message as a point of its own.
    """
    device, g = c.client.client_id, c.index
    packets = [
        codec.publish(
            c.topic,
            plan.line(device, ((i * 7 + g) % 10000) / 100, t0_ns + (i * total_conns + g) * 1000),
            qos=plan.qos,
            packet_id=i % 65535 + 1,
            version=plan.version,
        )
        for i in range(count)
    ]
    c.data = memoryview(b"".join(packets))
    c.offsets = [0, *accumulate(len(p) for p in packets)]
    c.n = c.stop_n = count


def _fill(c: Conn, plan: Plan) -> bool:
    """Send what the window allows; True if the socket is full and more is waiting.

    Once all that was sent is written, waits until a quarter of the window is free again
    (or the last messages are left): fewer, larger writes cost the generator less CPU.
    """
    top = c.stop_n if plan.qos == 0 else min(c.stop_n, c.acked + c.refused + plan.inflight)
    waiting = top < c.stop_n and top - c.sent_top < REFILL * plan.inflight
    if waiting and c.pos == c.offsets[c.sent_top]:
        return False
    c.sent_top = top
    end = c.offsets[top]
    while c.pos < end:
        try:
            c.pos += c.sock.send(c.data[c.pos : end])
        except BlockingIOError:
            return True
        except OSError as exc:
            c.error = c.error or repr(exc)
            return False
    return False


def _read_acks(c: Conn) -> None:
    """Count the PUBACKs received; a run of plain 4-byte PUBACKs is counted without a loop."""
    try:
        data = c.sock.recv(262144)
    except BlockingIOError:
        return
    except OSError as exc:
        data, c.error = b"", c.error or repr(exc)
    if not data:
        c.error = c.error or "connection closed by the broker"
        return
    if c.buf:
        data = bytes(c.buf) + data
    whole = len(data) // 4
    if data[0 : 4 * whole : 4] == ACK_FIRST[:whole] and data[1 : 4 * whole : 4] == ACK_LEN[:whole]:
        c.acked += whole
        c.buf = bytearray(data[4 * whole :])
        return
    packets, used = codec.split(data)
    c.buf = bytearray(data[used:])
    _count_acks(c, data, packets)


def _count_acks(c: Conn, data: bytes, packets: list[tuple[int, int, int]]) -> None:
    for first, start, end in packets:
        if first & 0xF0 == codec.PUBACK:
            if codec.ack_reason(data, start, end) >= 0x80:
                c.refused += 1
            else:
                c.acked += 1
        elif first == codec.DISCONNECT_TYPE:
            c.error = f"DISCONNECT from the broker, reason {data[start] if end > start else 0}"


def _done(c: Conn, plan: Plan) -> bool:
    if c.error is not None:
        return True
    if plan.qos == 0:
        return c.pos >= c.offsets[c.stop_n]
    return c.acked + c.refused >= c.stop_n


def _pump(conns: list[Conn], plan: Plan, duration_s: float, drain_s: float) -> float:
    """Send every connection's messages; stop sending new ones after ``duration_s``.

    Returns the time the last connection finished (all its messages acknowledged, or for
    QoS 0 written to the socket), or when the ``drain_s`` wait for late acks ran out.
    """
    sel = selectors.DefaultSelector()
    start = finished = time.perf_counter()
    live: set[Conn] = set()
    for c in conns:
        c.want_write = _fill(c, plan)
        if _done(c, plan):
            finished = time.perf_counter()
            continue
        sel.register(c.sock, READ | (WRITE if c.want_write else 0), c)
        live.add(c)
    stop_at, frozen = start + duration_s, False
    while live:
        now = time.perf_counter()
        if not frozen and now >= stop_at:  # finish the message being written, send no more
            frozen, stop_at = True, now + drain_s
            for c in live:
                c.stop_n = min(c.stop_n, bisect_left(c.offsets, c.pos))
        elif frozen and now >= stop_at:
            break
        for key, mask in sel.select(timeout=0.2):
            c = key.data
            if mask & READ:
                _read_acks(c)
            want = c.error is None and _fill(c, plan)
            if _done(c, plan):
                finished = time.perf_counter()
                sel.unregister(c.sock)
                live.discard(c)
            elif want != c.want_write:
                c.want_write = want
                sel.modify(c.sock, READ | (WRITE if want else 0), c)
        for c in [c for c in live if frozen and _done(c, plan)]:
            sel.unregister(c.sock)
            live.discard(c)
    sel.close()
    return finished if not live else time.perf_counter()


def publish_main(
    plan: Plan,
    clients: list[tuple[int, Client]],
    total_conns: int,
    per_conn: int,
    t0: int,
    duration_s: float,
    barrier: Barrier,
    out: Any,
) -> None:
    """A publisher process (forked): connect, encode, wait for the others, send, report."""
    tally, conns = Tally(), []
    try:
        t = time.perf_counter()
        conns = open_connections(plan, clients, tally.errors)
        tally.connected, tally.connect_s = len(conns), time.perf_counter() - t
        for c in conns:
            encode_messages(plan, c, per_conn, total_conns, t0)
    except Exception:
        _fail(tally)
    barrier.wait()
    try:
        tally.started, cpu0 = time.perf_counter(), own_cpu_seconds()
        tally.finished = _pump(conns, plan, duration_s, drain_s=10.0)
        tally.cpu_s = own_cpu_seconds() - cpu0
        for c in conns:
            tally.sent += bisect_right(c.offsets, c.pos) - 1
            tally.acked += c.acked
            tally.refused += c.refused
            if c.error:
                tally.errors.append(f"{c.client.client_id}: {c.error}")
    except Exception:
        _fail(tally)
    out.put(tally)
    close_all(conns)


# -- publishing at a fixed rate ----------------------------------------------------------------


def _queue_message(c: Conn, plan: Plan, due: float, wall_ns: int, value: float) -> None:
    """Message due at ``due`` (perf_counter), stamped with that moment's wall-clock time."""
    ts = max(wall_ns, c.last_ts + 1)  # unique within the device
    c.last_ts = ts
    pid = 0
    if plan.qos:
        c.next_id = pid = c.next_id % 65535 + 1
    pkt = codec.publish(
        c.topic,
        plan.line(c.client.client_id, value, ts),
        qos=plan.qos,
        packet_id=pid,
        version=plan.version,
    )
    c.queue.append((pid, due, pkt))


def _flush(c: Conn, plan: Plan) -> bool:
    """Move queued messages into the send buffer (within the window) and send; True if full."""
    while c.queue and (plan.qos == 0 or len(c.outstanding) < plan.inflight):
        pid, due, pkt = c.queue.popleft()
        if plan.qos:
            c.outstanding[pid] = due
        c.outbuf += pkt
        c.n += 1
    if c.outbuf and c.error is None:
        try:
            del c.outbuf[: c.sock.send(c.outbuf)]
        except BlockingIOError:
            pass
        except OSError as exc:
            c.error = c.error or repr(exc)
    return bool(c.outbuf) and c.error is None


def _take_acks(c: Conn, data: bytes, packets: list[tuple[int, int, int]], tally: Tally) -> None:
    now = time.perf_counter()
    for first, start, end in packets:
        if first & 0xF0 == codec.PUBACK:
            due = c.outstanding.pop(codec.packet_id(data, start), None)
            if due is None:
                continue
            if codec.ack_reason(data, start, end) >= 0x80:
                c.refused += 1
            else:
                c.acked += 1
                tally.latencies_s.append(now - due)
        elif first == codec.DISCONNECT_TYPE:
            c.error = "DISCONNECT from the broker"


def _watch_writes(sel: selectors.BaseSelector, c: Conn, plan: Plan) -> None:
    want = _flush(c, plan)
    if want != c.want_write:
        c.want_write = want
        sel.modify(c.sock, READ | (WRITE if want else 0), c)


def _pace(conns: list[Conn], plan: Plan, rate: float, seconds: float, tally: Tally) -> None:
    """``rate * seconds`` messages, message *k* due at ``start + k / rate``, round robin."""
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, READ, c)
    total, k, give_up = int(rate * seconds), 0, None
    start, start_ns = time.perf_counter(), time.time_ns()
    while conns:
        now = time.perf_counter()
        due_n = min(total, int((now - start) * rate) + 1)
        touched = set()
        while k < due_n:
            c = conns[k % len(conns)]
            due = k / rate
            _queue_message(c, plan, start + due, start_ns + int(due * 1e9), (k % 1000) / 10)
            touched.add(c)
            k += 1
        for c in touched:
            _watch_writes(sel, c, plan)
        if k >= total:
            live = [c for c in conns if c.error is None]
            if not tally.sent_until and not any(c.queue or c.outbuf for c in live):
                tally.sent_until = now  # the last message written
            if not any(c.queue or c.outstanding or c.outbuf for c in live):
                break
            give_up = give_up or now + 10.0
            if now >= give_up:
                break
        timeout = max(0.0, start + k / rate - time.perf_counter()) if k < total else 0.05
        for key, mask in sel.select(timeout):
            c = key.data
            if mask & READ:
                data, packets = c.receive()
                _take_acks(c, data, packets, tally)
            if c.error is not None:
                sel.unregister(c.sock)
                conns = [x for x in conns if x is not c]
                continue
            _watch_writes(sel, c, plan)
    tally.finished = time.perf_counter()
    sel.close()


def paced_main(
    plan: Plan,
    clients: list[tuple[int, Client]],
    rate: float,
    seconds: float,
    barrier: Barrier,
    out: Any,
) -> None:
    """A fixed-rate publisher process (forked): each PUBACK timed from its message's due time."""
    tally, conns = Tally(), []
    try:
        conns = open_connections(plan, clients, tally.errors)
        tally.connected = len(conns)
    except Exception:
        _fail(tally)
    barrier.wait()
    try:
        tally.started, cpu0 = time.perf_counter(), own_cpu_seconds()
        _pace(list(conns), plan, rate, seconds, tally)
        tally.cpu_s = own_cpu_seconds() - cpu0
        for c in conns:
            tally.sent += c.n
            tally.acked += c.acked
            tally.refused += c.refused
            if c.error:
                tally.errors.append(f"{c.client.client_id}: {c.error}")
    except Exception:
        _fail(tally)
    out.put(tally)
    close_all(conns)


# -- idle connections --------------------------------------------------------------------------


def idle_main(
    plan: Plan, clients: list[tuple[int, Client]], ready: Any, release: Event, out: Any
) -> None:
    """Connect, report, then only answer keep-alive until ``release``; report who was dropped."""
    tally, conns = Tally(), []
    try:
        t = time.perf_counter()
        conns = open_connections(plan, clients, tally.errors)
        tally.connected, tally.connect_s = len(conns), time.perf_counter() - t
    except Exception:
        _fail(tally)
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
    tally.sent = len(dropped)  # the idle scenario's "sent": connections lost while idle
    out.put(tally)
    close_all(conns)


# -- the counting subscriber -------------------------------------------------------------------


@dataclass
class SubTally:
    """Deliveries the subscriber saw; with ``timed``, each one's age (receive - payload time)."""

    delivered: int = 0
    duplicates: int = 0
    first: float = 0.0
    last: float = 0.0
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


def _subscribe(c: Conn, plan: Plan, topic_filter: str) -> None:
    """SUBSCRIBE and wait for the SUBACK (blocking); refuse to count if it was not granted."""
    c.sock.setblocking(True)
    c.sock.settimeout(30.0)
    c.sock.sendall(codec.subscribe(topic_filter, qos=plan.qos, version=plan.version))
    packets: list[tuple[int, int, int]] = []
    while not packets:
        data, packets = c.receive()
        if c.error:
            raise RuntimeError(f"subscribe: {c.error}")
    first, _start, end = packets[0]
    if first != codec.SUBACK or data[end - 1] >= 0x80:
        raise RuntimeError(f"SUBSCRIBE {topic_filter} refused: {data!r}")
    if data[end - 1] < plan.qos:
        raise RuntimeError(f"SUBSCRIBE granted QoS {data[end - 1]}, asked for {plan.qos}")
    c.sock.setblocking(False)


def _deliveries(
    c: Conn,
    plan: Plan,
    data: bytes,
    packets: list[tuple[int, int, int]],
    tally: SubTally,
    timed: bool,
) -> None:
    now_ns = time.time_ns()
    acks = []
    for first, start, end in packets:
        if first & 0xF0 != codec.PUBLISH:
            continue
        tally.delivered += 1
        if first & 0x08:
            tally.duplicates += 1
        p = start + 2 + ((data[start] << 8) | data[start + 1])
        if first & 0x06:
            acks.append(b"\x40\x02" + data[p : p + 2])
            p += 2
        if timed:
            ts = int(data[data.rindex(b" ", p, end) + 1 : end])
            tally.latencies_s.append((now_ns - ts) / 1e9)
    if acks:
        c.outbuf += b"".join(acks)


def subscriber_main(
    plan: Plan,
    client: Client,
    topic_filter: str,
    timed: bool,
    pause_s: float,
    ready: Event,
    stop: Event,
    progress: Any,
    out: Any,
) -> None:
    """Count deliveries (PUBACK each at QoS 1) until ``stop``; ``progress`` = [count, last].

    With ``pause_s``, waits that long after a read of less than 64 KiB so that deliveries
    pile up (fewer, larger reads: the subscriber shares the CPU with the broker). Only for
    brokers that do not wait for the subscriber's PUBACKs, or its pauses would be the limit.
    """
    tally, conns = SubTally(), []
    try:
        conns = open_connections(plan, [(0, client)], tally.errors)
        if not conns:
            raise RuntimeError(f"subscriber could not connect: {tally.errors}")
        c = conns[0]
        _subscribe(c, plan, topic_filter)
        ready.set()
        cpu0 = own_cpu_seconds()
        _count_deliveries(c, plan, timed, pause_s, stop, progress, tally)
        tally.cpu_s = own_cpu_seconds() - cpu0
    except Exception:
        _fail(tally)
        ready.set()
    out.put(tally)
    close_all(conns)


def _count_deliveries(
    c: Conn, plan: Plan, timed: bool, pause_s: float, stop: Event, progress: Any, tally: SubTally
) -> None:
    sel = selectors.DefaultSelector()
    sel.register(c.sock, READ, c)
    while not stop.is_set() and c.error is None:
        if not sel.select(timeout=0.1):
            continue
        data, packets = c.receive()
        if packets:
            _deliveries(c, plan, data, packets, tally, timed)
            tally.last = time.perf_counter()
            tally.first = tally.first or tally.last
            progress[0], progress[1] = tally.delivered, tally.last
        while c.outbuf and c.error is None:  # acks: the broker reads them promptly
            try:
                del c.outbuf[: c.sock.send(c.outbuf)]
            except BlockingIOError:
                time.sleep(0.0005)
        if pause_s and len(data) < 65536:
            time.sleep(pause_s)
    if c.error:
        tally.errors.append(c.error)
    sel.close()
