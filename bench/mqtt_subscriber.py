"""The MQTT benchmark's counting subscriber: one subscription, every delivery counted.

Runs in a process of its own (``Subscriber`` starts it before the publishers),
acknowledges every QoS 1 delivery and, in the latency scenario, takes each one's receive
time minus the timestamp in its payload (the wall-clock time the message was due).
"""

from __future__ import annotations

import multiprocessing as mp
import selectors
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

from bench import mqtt_codec as codec
from bench.common import own_cpu_seconds
from bench.mqtt_conn import READ, Client, Conn, Plan, close_all, open_connections, record_failure

CTX = mp.get_context("fork")
TOPIC_FILTER = "devices/+/telemetry"


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
        record_failure(tally.errors)
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
        while c.outbuf and c.error is None and not stop.is_set():  # acks: read promptly
            try:
                del c.outbuf[: c.sock.send(c.outbuf)]
            except BlockingIOError:
                time.sleep(0.0005)
        if pause_s and len(data) < 65536:
            time.sleep(pause_s)
    if c.error:
        tally.errors.append(c.error)
    sel.close()


class Subscriber:
    """The counting subscriber process, ready (subscribed) once constructed."""

    def __init__(self, plan: Plan, client: Client, timed: bool, pause_s: float = 0.0) -> None:
        self.ready, self.stop_event = CTX.Event(), CTX.Event()
        self.progress, self.out = CTX.RawArray("d", 2), CTX.Queue()
        args = (plan, client, TOPIC_FILTER, timed, pause_s)
        self.proc = CTX.Process(
            target=subscriber_main,
            args=(*args, self.ready, self.stop_event, self.progress, self.out),
            daemon=True,
        )
        self.proc.start()
        if not self.ready.wait(60.0):
            raise RuntimeError("the counting subscriber did not subscribe within 60 s")

    def wait_for(self, expected: int, quiet_s: float = 3.0, max_s: float = 60.0) -> None:
        """Until ``expected`` deliveries arrived, or none for ``quiet_s`` seconds."""
        deadline = time.monotonic() + max_s
        last, since = -1.0, time.monotonic()
        while time.monotonic() < deadline and self.progress[0] < expected:
            if self.progress[0] != last:
                last, since = self.progress[0], time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.05)

    def stop(self) -> SubTally:
        self.stop_event.set()
        tally: SubTally = self.out.get(timeout=60.0)
        self.proc.join(10.0)
        return tally
