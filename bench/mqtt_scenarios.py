"""The MQTT benchmark's three measurements, each on a broker from ``bench/mqtt_brokers.py``.

Each returns a flat dict of figures (numbers, so that rounds can be reduced to medians):

- ``throughput``: ``--conns`` connections in ``--procs`` publisher processes send
  ``--messages`` QoS 1 messages (at most ``--inflight`` unacked per connection) as fast as
  the broker acks them. Delivered = what a counting subscriber on ``devices/+/telemetry``
  received (Mosquitto and the Python brokers) or the points in the store afterwards, counted
  with ``fn=count`` over the messages' time range (Motes). lost = acked - delivered.
- ``idle``: ``--idle-conns`` connections connect and stay idle; the broker's RSS (process
  and children) before and after, per connection.
- ``latency``: ``--rate`` messages/s for ``--latency-seconds`` from ``--conns`` connections.
  publish -> PUBACK is timed from each message's due time. publish -> visible: with a
  subscriber, receive time - the send time in the payload; on Motes, a probe polls the
  latest-value query of every device and, for each value newer than the last it saw,
  takes the answer's arrival time - the value's timestamp (the send time): an upper bound,
  late by up to one poll (interval + round trip, both reported).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import threading
import time
from argparse import Namespace
from typing import Any

import httpx
import orjson

from bench.common import RssSampler, percentile_ms, tree_cpu_seconds
from bench.mqtt_brokers import Broker, Motes
from bench.mqtt_load import (
    Client,
    Plan,
    SubTally,
    Tally,
    idle_main,
    paced_main,
    publish_main,
    subscriber_main,
)

CTX = mp.get_context("fork")
TOPIC_FILTER = "devices/+/telemetry"
HOUR_NS = 3_600_000_000_000
PAUSE_S = 0.002  # the throughput subscriber's pause after a small read (subscriber_main)


def plan_for(broker: Broker, args: Namespace) -> Plan:
    return Plan(
        "127.0.0.1",
        broker.port,
        version=broker.version or args.mqtt_version,
        qos=min(args.qos, broker.max_qos),
        inflight=args.inflight,
    )


def wait_quiet(broker: Broker, busy: float = 0.05, max_s: float = 30.0) -> float:
    """Wait until the broker uses under ``busy`` of a core for a second (at most ``max_s``).

    So that one scenario's aftermath (10,000 disconnects, a backlog of writes) does not land
    in the next one's figures. Returns the seconds waited.
    """
    start = time.monotonic()
    last = tree_cpu_seconds(broker.pid)
    while time.monotonic() - start < max_s:
        time.sleep(1.0)
        now = tree_cpu_seconds(broker.pid)
        if now - last < busy:
            break
        last = now
    return time.monotonic() - start


def chunks(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous, nearly equal, non-empty slices."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, lo = [], 0
    for p in range(parts):
        hi = lo + size + (p < extra)
        out.append(items[lo:hi])
        lo = hi
    return out


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


def _start(target: Any, groups: list[list[Any]], args_of: Any) -> tuple[list[Any], Any, Any]:
    """One forked process per group, ``target(*args_of(group), barrier, queue)``."""
    barrier, out = CTX.Barrier(len(groups) + 1), CTX.Queue()
    procs = [
        CTX.Process(target=target, args=(*args_of(g), barrier, out), daemon=True) for g in groups
    ]
    for p in procs:
        p.start()
    return procs, barrier, out


def _merge(tallies: list[Tally]) -> Tally:
    t = Tally(started=min(x.started for x in tallies), finished=max(x.finished for x in tallies))
    for x in tallies:
        t.connected += x.connected
        t.sent += x.sent
        t.acked += x.acked
        t.refused += x.refused
        t.cpu_s += x.cpu_s
        t.connect_s = max(t.connect_s, x.connect_s)
        t.sent_until = max(t.sent_until, x.sent_until)
        t.errors += x.errors
        t.latencies_s += x.latencies_s
    return t


def _errors(t: Tally, sub: SubTally | None = None) -> list[str]:
    return (t.errors + (sub.errors if sub else []))[:5]


def subscriber_for(broker: Broker, args: Namespace, scenario: str) -> Subscriber | None:
    """The counting subscriber, where the scenario counts or times deliveries with one."""
    if broker.has_store and args.motes_subscriber not in (scenario, "all"):
        return None
    plan = plan_for(broker, args)
    streams = scenario == "throughput" and (broker.streams_to_subscriber or plan.qos == 0)
    return Subscriber(plan, broker.subscriber(), scenario == "latency", PAUSE_S if streams else 0)


# -- throughput --------------------------------------------------------------------------------


def throughput(broker: Broker, args: Namespace) -> dict[str, Any]:
    plan = plan_for(broker, args)
    clients = list(enumerate(broker.clients(args.conns)))
    per_conn = max(1, args.messages // args.conns)
    t0 = time.time_ns() - 2 * HOUR_NS  # before the latency scenario's points
    sub = subscriber_for(broker, args, "throughput")
    procs, barrier, out = _start(
        publish_main,
        chunks(clients, args.procs),
        lambda g: (plan, g, args.conns, per_conn, t0, args.duration),
    )
    cpu0 = tree_cpu_seconds(broker.pid)
    with RssSampler(broker.pid) as rss:
        barrier.wait()
        t = _merge([out.get(timeout=600.0) for _ in procs])
        if sub is not None:
            sub.wait_for(t.acked if plan.qos else t.sent)
    broker_cpu = tree_cpu_seconds(broker.pid) - cpu0
    for p in procs:
        p.join(30.0)
    fig = _publish_figures(plan, t, args)
    handled = t.acked if plan.qos else t.sent  # what the broker took
    s = sub.stop() if sub is not None else None
    if s is not None:
        fig.update(
            subscriber_delivered=s.delivered,
            subscriber_lost=handled - s.delivered,
            subscriber_per_s=s.delivered / (s.last - t.started) if s.last > t.started else 0.0,
            duplicates=s.duplicates,
            subscriber_cpu_s=s.cpu_s,
        )
    if s is not None and not plan.qos and s.last > t.started:  # QoS 0: busy till delivered
        fig["generator_cpu_pct"] = 100 * t.cpu_s / (s.last - t.started)
    if isinstance(broker, Motes):
        stored = broker.count(t0, t0 + (per_conn * args.conns + 1) * 1000 + 1_000_000)
        delivered, delivered_per_s = stored, stored / fig["wall_s"] if fig["wall_s"] else 0.0
    else:
        delivered, delivered_per_s = fig["subscriber_delivered"], fig["subscriber_per_s"]
    fig.update(
        delivered=delivered,
        lost=max(0, handled - delivered),
        delivered_per_s=delivered_per_s,
        # through the broker: acked/s at QoS 1 (on Motes: stored, durable); QoS 0 has no
        # acks and the sockets' buffers hide the broker's pace, so the subscriber's rate
        rate=fig["published_per_s"] if plan.qos else delivered_per_s,
        broker_cpu_s=broker_cpu,
        broker_cpu_us_per_msg=1e6 * broker_cpu / handled if handled else 0.0,
        broker_max_rss=rss.max_rss,
        errors=_errors(t, s),
    )
    return fig


def _publish_figures(plan: Plan, t: Tally, args: Namespace) -> dict[str, Any]:
    wall = t.finished - t.started
    return {
        "qos": plan.qos,
        "mqtt_version": "5" if plan.version == 5 else "3.1.1",
        "connections": t.connected,
        "procs": args.procs,
        "sent": t.sent,
        "acked": t.acked,
        "refused": t.refused,
        "unacked": t.sent - t.acked - t.refused if plan.qos else 0,
        "wall_s": wall,
        "published_per_s": (t.acked if plan.qos else t.sent) / wall if wall > 0 else 0.0,
        "generator_cpu_pct": 100 * t.cpu_s / wall if wall > 0 else 0.0,
    }


# -- idle connections --------------------------------------------------------------------------


def _steady_rss(broker: Broker) -> int:
    """Median of 5 RSS samples 0.2 s apart."""
    samples = []
    for _ in range(5):
        samples.append(broker.rss())
        time.sleep(0.2)
    return int(statistics.median(samples))


def idle(broker: Broker, args: Namespace) -> dict[str, Any]:
    plan = plan_for(broker, args)
    clients = list(enumerate(broker.clients(args.idle_conns)))
    time.sleep(1.0)
    before = _steady_rss(broker)
    ready, release, out = CTX.Queue(), CTX.Event(), CTX.Queue()
    groups = chunks(clients, args.procs)
    procs = [
        CTX.Process(target=idle_main, args=(plan, g, ready, release, out), daemon=True)
        for g in groups
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    t = _merge([ready.get(timeout=900.0) for _ in procs])
    connect_wall = time.perf_counter() - started
    time.sleep(args.idle_settle)
    cpu0, hold0 = tree_cpu_seconds(broker.pid), time.perf_counter()
    after = _steady_rss(broker)
    time.sleep(1.0)
    idle_cpu = (tree_cpu_seconds(broker.pid) - cpu0) / (time.perf_counter() - hold0)
    release.set()
    finals = _merge([out.get(timeout=120.0) for _ in procs])
    for p in procs:
        p.join(30.0)
    return {
        "asked": len(clients),
        "connections": t.connected,
        "refused": len(clients) - t.connected,
        "dropped_while_idle": finals.sent,
        "connect_per_s": t.connected / connect_wall if connect_wall > 0 else 0.0,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": (after - before) / t.connected if t.connected else 0.0,
        "broker_idle_cpu_pct": 100 * idle_cpu,
        "errors": (t.errors + finals.errors)[:5],
    }


# -- latency -----------------------------------------------------------------------------------


class LatestProbe(threading.Thread):
    """Polls Motes' latest values of every device; times each value it had not seen yet."""

    def __init__(self, broker: Motes, interval_s: float) -> None:
        super().__init__(name="latest-probe", daemon=True)
        self.url, self.params, self.headers = broker.latest_params()
        self.interval = interval_s
        self.seen: dict[str, int] = {}
        self.samples_s: list[float] = []
        self.round_trips_s: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.client = httpx.Client(headers=self.headers, timeout=10.0)
        self.since_ns = time.time_ns()
        self._poll(record=False)  # what is there already is not new

    def _poll(self, record: bool) -> None:
        sent = time.time_ns()
        resp = self.client.get(self.url, params=self.params)
        arrived = time.time_ns()
        if resp.status_code != 200:
            self.errors.append(f"latest: {resp.status_code} {resp.text[:200]}")
            return
        self.round_trips_s.append((arrived - sent) / 1e9)
        for series in orjson.loads(resp.content)["series"]:
            field = series["fields"].get("v")
            device = series["tags"].get("device")
            if field is None or device is None:
                continue
            ts = int(field["time"])
            if record and ts > self.seen.get(device, 0) and ts >= self.since_ns:
                self.samples_s.append((arrived - ts) / 1e9)
            self.seen[device] = max(ts, self.seen.get(device, 0))

    def run(self) -> None:
        self.since_ns = time.time_ns()
        while not self.stop.is_set():
            try:
                self._poll(record=True)
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
            self.stop.wait(self.interval)
        self.client.close()


def latency(broker: Broker, args: Namespace) -> dict[str, Any]:
    plan = plan_for(broker, args)
    groups = chunks(list(enumerate(broker.clients(args.conns))), args.procs)
    sub = subscriber_for(broker, args, "latency")
    probe = LatestProbe(broker, args.probe_interval) if isinstance(broker, Motes) else None
    rate = args.rate / len(groups)
    procs, barrier, out = _start(
        paced_main, groups, lambda g: (plan, g, rate, args.latency_seconds)
    )
    cpu0 = tree_cpu_seconds(broker.pid)
    barrier.wait()
    began = time.perf_counter()
    if probe is not None:
        probe.start()
    t = _merge([out.get(timeout=600.0) for _ in procs])
    if sub is not None:
        sub.wait_for(t.acked if plan.qos else t.sent, quiet_s=2.0)
    if probe is not None:
        time.sleep(0.2)
        probe.stop.set()
        probe.join()
    broker_cpu = tree_cpu_seconds(broker.pid) - cpu0
    measured = time.perf_counter() - began  # till the last delivery: the broker's CPU time
    s = sub.stop() if sub is not None else None
    for p in procs:
        p.join(30.0)
    sending = (t.sent_until or t.finished) - t.started
    fig: dict[str, Any] = {
        "qos": plan.qos,
        "connections": t.connected,
        "rate_asked": args.rate,
        "sent": t.sent,
        "acked": t.acked,
        "sent_per_s": t.sent / sending if sending > 0 else 0.0,
        "broker_cpu_pct": 100 * broker_cpu / measured,
    }
    fig.update(_percentiles("puback", t.latencies_s))
    if s is not None:
        fig.update(_percentiles("subscriber", s.latencies_s))
        fig["subscriber_lost"] = max(0, (t.acked if plan.qos else t.sent) - s.delivered)
    if probe is not None:
        fig.update(_percentiles("query", probe.samples_s))
        fig["probe_polls"] = len(probe.round_trips_s)
        fig["probe_round_trip_p50_ms"] = percentile_ms(probe.round_trips_s or [0.0], 50)
        fig["probe_interval_ms"] = 1000 * args.probe_interval
    fig["errors"] = (_errors(t, s) + (probe.errors[:3] if probe else []))[:5]
    return fig


def _percentiles(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        f"{name}_p50_ms": percentile_ms(values, 50),
        f"{name}_p99_ms": percentile_ms(values, 99),
        f"{name}_max_ms": 1000 * max(values),
        f"{name}_samples": len(values),
    }


SCENARIOS = {"idle": idle, "throughput": throughput, "latency": latency}
