"""The MQTT benchmark's three measurements, each on a broker from ``bench/mqtt_brokers.py``.

Each returns a flat dict of figures (numbers, so that rounds can be reduced to medians):

- ``throughput``: ``--conns`` connections in ``--procs`` publisher processes send
  ``--messages`` QoS 1 messages (at most ``--inflight`` unacked per connection) as fast as
  the broker acks them. Delivered = what a counting subscriber on ``devices/+/telemetry``
  received (Mosquitto and the Python brokers) or the points in the store afterwards, counted
  with ``fn=count`` over the messages' time range (Motes). lost = acked - delivered.
- ``idle``: ``--idle-conns`` connections connect and stay idle; the broker's RSS (process
  and children) before and after, per connection.
- ``latency``: ``--rate`` messages/s for ``--latency-seconds`` from ``--conns`` connections,
  timed from each message's due time (its payload timestamp) to its PUBACK, to its arrival
  at the counting subscriber, and on Motes to its showing in the latest-value query
  (``bench/mqtt_probe.py``).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from argparse import Namespace
from typing import Any

import psutil

from bench.common import RssSampler, percentile_ms, tree_cpu_seconds
from bench.mqtt_brokers import Broker, Motes
from bench.mqtt_conn import Plan, Tally, idle_main
from bench.mqtt_load import paced_main, publish_main
from bench.mqtt_probe import LatestProbe
from bench.mqtt_subscriber import Subscriber, SubTally

CTX = mp.get_context("fork")
HOUR_NS = 3_600_000_000_000
OTHERS_BUSY = 0.2  # share of a core the rest of the machine may use before a scenario
PAUSE_S = 0.002  # the throughput subscriber's pause after a small read (subscriber_main)


def plan_for(broker: Broker, args: Namespace) -> Plan:
    return Plan(
        "127.0.0.1",
        broker.port,
        version=broker.version or args.mqtt_version,
        qos=min(args.qos, broker.max_qos),
        inflight=args.inflight,
    )


def _machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_quiet(broker: Broker, busy: float = 0.05, max_s: float = 30.0) -> tuple[float, float]:
    """Wait (at most ``max_s``) for a second in which the broker used under ``busy`` of a core.

    And the rest of the machine under ``OTHERS_BUSY``, so that one scenario's aftermath
    (10,000 disconnects, a backlog of writes) does not land in the next one's figures.
    Returns the seconds waited and the share of a core that the rest of the machine used in
    the last second (other work skews every figure).
    """
    start = time.monotonic()
    last, machine = tree_cpu_seconds(broker.pid), _machine_busy_s()
    others = 0.0
    while time.monotonic() - start < max_s:
        time.sleep(1.0)
        now, busy_now = tree_cpu_seconds(broker.pid), _machine_busy_s()
        others = max(0.0, (busy_now - machine) - (now - last))
        if now - last < busy and others < OTHERS_BUSY:
            break
        last, machine = now, busy_now
    return time.monotonic() - start, others


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
        t.dropped += x.dropped
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
            subscriber_lost=max(0, handled - s.delivered),
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
    # what the connects left to do (status writes, ...) is not idling: wait for it, and
    # report how long it took
    aftermath, _ = wait_quiet(broker, max_s=60.0)
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
        "dropped_while_idle": finals.dropped,
        "connect_per_s": t.connected / connect_wall if connect_wall > 0 else 0.0,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": (after - before) / t.connected if t.connected else 0.0,
        "broker_idle_cpu_pct": 100 * idle_cpu,
        "quiet_after_connects_s": args.idle_settle + aftermath,
        "errors": (t.errors + finals.errors)[:5],
    }


# -- latency -----------------------------------------------------------------------------------


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
        fig.update(_percentiles("query_lower", probe.lower_s))
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
