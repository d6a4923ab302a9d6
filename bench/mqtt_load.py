"""The MQTT benchmark's publisher processes.

Each runs in a process of its own (forked by ``bench/mqtt_scenarios.py``) and drives its
share of the connections (``bench/mqtt_conn.py``) from one thread with non-blocking sockets
and a ``selectors`` loop, sending packets from ``bench/mqtt_codec.py`` as raw bytes, so that
one process can push far more than a client library would (one paho process tops out near
30 k messages/s here):

- ``publish_main``: every message of every connection encoded before the start, then sent
  as fast as the broker takes them, at most ``inflight`` unacknowledged (QoS 1) per
  connection; counts PUBACKs.
- ``paced_main``: messages at a fixed rate, encoded when due and stamped with the
  wall-clock time they were due; each PUBACK is timed from that moment (so a stalled broker,
  or a late generator, shows up as latency, not as fewer samples).

A message is one line-protocol point, ``m,device=<id> v=<float> <ns timestamp>``, published
to ``devices/<id>/telemetry``; timestamps are unique per device so a store keeps every message.
"""

from __future__ import annotations

import selectors
import time
from bisect import bisect_left, bisect_right
from itertools import accumulate
from multiprocessing.synchronize import Barrier
from typing import Any

from bench import mqtt_codec as codec
from bench.common import own_cpu_seconds
from bench.mqtt_conn import (
    READ,
    WRITE,
    Client,
    Conn,
    Plan,
    Tally,
    close_all,
    connect_all,
    open_connections,
    record_failure,
)

REFILL = 0.25  # share of the window that must be free before a connection sends again
ACK_FIRST, ACK_LEN = b"\x40" * 65536, b"\x02" * 65536  # a recv holds < 65,536 PUBACKs


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
        conns = connect_all(plan, clients, tally)
        for c in conns:
            encode_messages(plan, c, per_conn, total_conns, t0)
    except Exception:
        record_failure(tally.errors)
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
        record_failure(tally.errors)
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
        record_failure(tally.errors)
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
        record_failure(tally.errors)
    out.put(tally)
    close_all(conns)
