"""MQTT load on Motes' broker and, in the same run, on Mosquitto (and the Python brokers).

    python bench/mqtt.py                                  # Motes vs Mosquitto, 3 rounds, all
    python bench/mqtt.py --target mosquitto --quick       # smoke run (< 1 min)
    python bench/mqtt.py --target brokers --conns 20 --idle-conns 2000 --messages 200000
                                                          # Mosquitto vs amqtt vs mqttools

Targets (``--target``, comma-separated; ``both`` = mosquitto,motes, ``brokers`` =
mosquitto,amqtt,mqttools, ``all``), each started fresh every round on free loopback ports
(``bench/mqtt_brokers.py``); rounds alternate the order of the targets and the tables give
medians. Scenarios (``--scenario``, in this order on each fresh broker):

  idle        --idle-conns connections connect (CONNECT, keep-alive 60) and stay idle:
              broker RSS (process + children) before and after, bytes per connection;
              how long the broker stays busy after the last CONNACK, its CPU once quiet
  throughput  --conns connections in --procs processes publish --messages QoS 1 messages
              (at most --inflight unacked each) as fast as they are acked; a counting
              subscriber on devices/+/telemetry (Motes: the store's count) checks none is lost
  latency     --rate messages/s for --latency-seconds, timed from each message's due time
              to its PUBACK, to the counting subscriber and (Motes) to the latest-value query

The publishers are raw non-blocking sockets with packets encoded up front
(``bench/mqtt_load.py``, ``bench/mqtt_codec.py``). Each message is one line-protocol point
``m,device=<id> v=<float> <ns timestamp>`` on topic ``devices/<id>/telemetry``, client id =
device id. amqtt and mqttools run from their own virtualenv (``--venv``). Prints markdown
tables (``--json``: JSON), saves ``bench/results/<timestamp>-mqtt.json``; exits 1 if a broker
lost a message. ``docs/benchmarks.md`` ("MQTT") explains the figures.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from bench import mqtt_brokers, mqtt_report
from bench.ingest_query import git_commit, log, warn
from bench.mqtt_scenarios import OTHERS_BUSY, SCENARIOS, wait_quiet

TARGETS = ("mosquitto", "motes", "amqtt", "mqttools")
ALIASES = {
    "both": ["mosquitto", "motes"],
    "brokers": ["mosquitto", "amqtt", "mqttools"],
    "all": list(TARGETS),
}
SCENARIO_ORDER = ("idle", "throughput", "latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = p.add_argument
    add("--target", default="both", help="mosquitto,motes,amqtt,mqttools | both | brokers | all")
    add("--scenario", default="all", help="throughput,idle,latency | all (default all)")
    add("--rounds", type=int, default=3, help="rounds per target (default 3; medians reported)")
    add("--procs", type=int, default=4, help="load generator processes (default 4)")
    add("--conns", type=int, default=100, help="publishing connections (default 100)")
    add("--inflight", type=int, default=100, help="unacked QoS 1 messages per connection (100)")
    add("--messages", type=int, default=1_000_000, help="throughput: messages in all (1,000,000)")
    add("--duration", type=float, default=15.0, help="throughput: stop sending after (15 s)")
    add("--qos", type=int, choices=(0, 1), default=1, help="QoS of the publishes (default 1)")
    add("--mqtt-version", choices=("3.1.1", "5"), default="3.1.1", help="protocol (3.1.1)")
    add("--idle-conns", type=int, default=10_000, help="idle: connections (default 10,000)")
    add("--idle-settle", type=float, default=2.0, help="idle: wait before measuring RSS (2 s)")
    add("--rate", type=float, default=5000.0, help="latency: messages/s (default 5,000)")
    add("--latency-seconds", type=float, default=10.0, help="latency: duration (default 10 s)")
    add("--probe-interval", type=float, default=0.005, help="Motes probe: pause between polls")
    add(
        "--motes-subscriber",
        choices=("none", "latency", "all"),
        default="latency",
        help="scenarios in which a counting subscriber (operator token) also runs on Motes",
    )
    add("--mosquitto-max-queued", type=int, default=0, help="max_queued_messages (0: no limit)")
    add("--mosquitto-max-inflight", type=int, default=20, help="max_inflight_messages (20)")
    add("--venv", default=str(mqtt_brokers.VENV), help="virtualenv of amqtt and mqttools")
    add("--quick", action="store_true", help="smoke run: 1 round, small loads")
    add("--json", action="store_true", help="print the results as JSON instead of tables")
    add("--no-save", action="store_true", help="do not write bench/results/*-mqtt.json")
    args = p.parse_args(argv)
    if args.quick:  # where not given
        quick = {"rounds": 1, "messages": 200_000, "idle_conns": 1000, "latency_seconds": 3.0}
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    args.targets = _names(p, args.target, ALIASES, TARGETS)
    args.scenarios = _names(p, args.scenario, {"all": list(SCENARIO_ORDER)}, SCENARIO_ORDER)
    args.scenarios = [s for s in SCENARIO_ORDER if s in args.scenarios]
    args.mqtt_version = 5 if args.mqtt_version == "5" else 4
    args.devices = max(args.conns, args.idle_conns if "idle" in args.scenarios else 0)  # Motes
    if min(args.rounds, args.procs, args.conns, args.inflight, args.messages) < 1:
        p.error("--rounds, --procs, --conns, --inflight and --messages must be at least 1")
    return args


def _names(p: argparse.ArgumentParser, text: str, aliases: dict[str, list[str]], known: Any) -> Any:
    out: list[str] = []
    for name in text.split(","):
        for n in aliases.get(name.strip(), [name.strip()]):
            if n not in known:
                p.error(f"unknown name {n!r}: choose from {', '.join([*known, *aliases])}")
            if n not in out:
                out.append(n)
    return out


def raise_fd_limit() -> int:
    """Soft open-files limit up to the hard one (inherited by the brokers started here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_round(args: argparse.Namespace, name: str, results: mqtt_report.Results) -> str | None:
    """Every scenario on a fresh ``name`` broker; the reason if it cannot run here."""
    started = time.monotonic()
    try:
        broker = mqtt_brokers.start(name, args)
    except mqtt_brokers.Unavailable as exc:
        return str(exc)
    except Exception as exc:  # this round of this target is lost, the others go on
        log(f"{name} did not start: {exc!r}")
        return None
    log(f"{name}: started in {time.monotonic() - started:.1f}s ({broker.settings})")
    try:
        for scenario in args.scenarios:
            waited, others = wait_quiet(broker)
            if waited > 1.5:
                log(f"{name}: waited {waited:.0f}s for the broker to go quiet")
            if others > OTHERS_BUSY:
                log(f"warning: other processes use {others:.0%} of a core: figures will suffer")
            fig = SCENARIOS[scenario](broker, args)
            fig.update(quiet_wait_s=waited, others_cpu_pct=100 * others)
            results.setdefault(name, {}).setdefault(scenario, []).append(fig)
            log(f"{name} {scenario}: {summary(scenario, fig)}")
            for error in fig.get("errors", []):
                log(f"  error: {error.strip()}")
    except Exception:
        log(f"{name} failed:\n{traceback.format_exc()}\n{broker.log_tail()}")
    finally:
        broker.close()
    return None


def summary(scenario: str, f: dict[str, Any]) -> str:
    if scenario == "throughput":
        return (
            f"{f['rate']:,.0f} msg/s (QoS {f['qos']}), sent {f['sent']:,}, "
            f"acked {f['acked']:,}, delivered {f['delivered']:,}, lost {f['lost']:,}; "
            f"broker {f['broker_cpu_us_per_msg']:.1f} µs CPU/msg, generator CPU "
            f"{f['generator_cpu_pct']:.0f} %"
        )
    if scenario == "idle":
        return (
            f"{f['connections']:,}/{f['asked']:,} connected ({f['connect_per_s']:,.0f}/s), RSS "
            f"{f['rss_before'] / 1e6:.1f} -> {f['rss_after'] / 1e6:.1f} MB = "
            f"{f['bytes_per_connection']:,.0f} bytes/conn, dropped {f['dropped_while_idle']}"
        )
    parts = [f"{f['sent_per_s']:,.0f} msg/s sent"]
    for key, what in (("puback", "PUBACK"), ("subscriber", "subscriber"), ("query", "query")):
        if f"{key}_p50_ms" in f:
            parts.append(
                f"{what} p50/p99 {f[f'{key}_p50_ms']:.2f}/{f[f'{key}_p99_ms']:.2f} ms "
                f"({f[f'{key}_samples']:,})"
            )
    return "; ".join([*parts, f"broker CPU {f['broker_cpu_pct']:.0f} %"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit()
    if args.idle_conns + 100 > fds and "idle" in args.scenarios:
        log(f"warning: open-files limit {fds} is below --idle-conns {args.idle_conns}")
    started = time.monotonic()
    results: mqtt_report.Results = {}
    unavailable: dict[str, str] = {}
    for r in range(args.rounds):
        order = args.targets if r % 2 == 0 else args.targets[::-1]
        for name in order:
            if name in unavailable:
                continue
            log(f"round {r + 1}/{args.rounds}: {name}")
            reason = run_round(args, name, results)
            if reason:
                unavailable[name] = reason
                log(f"{name}: not measured: {reason}")
    return report(args, results, unavailable, started)


def report(
    args: argparse.Namespace,
    results: mqtt_report.Results,
    unavailable: dict[str, str],
    started: float,
) -> int:
    tables = {s: mqtt_report.table(results, s) for s in args.scenarios}
    lost = sum(
        r.get("lost", 0) + r.get("subscriber_lost", 0)
        for t in results.values()
        for s in t.values()
        for r in s
    )
    payload = {
        "benchmark": "mqtt",
        "config": {k: v for k, v in vars(args).items()},
        "git_commit": git_commit(),
        "duration_s": round(time.monotonic() - started, 1),
        "unavailable": unavailable,
        "medians": mqtt_report.medians(results),
        "results": results,
        "tables": tables,
    }
    if args.json:
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"\n{notes(args)}\n")
        for scenario in args.scenarios:
            if tables[scenario]:
                print(f"{tables[scenario]}\n")
        for name, reason in unavailable.items():
            print(f"- {name}: not measured: {reason}")
        others = max(
            (r.get("others_cpu_pct", 0.0) for t in results.values() for s in t.values() for r in s),
            default=0.0,
        )
        if others > 100 * OTHERS_BUSY:
            print(
                f"- WARNING: other processes used up to {others:.0f} % of a core before a "
                "scenario started: the figures are not from a quiet machine"
            )
    if lost:
        warn(f"{lost:,} messages a broker took were not delivered or stored (see the tables)")
    if not args.no_save:
        log(f"results saved to {mqtt_report.save_json(payload)}")
    return 1 if lost or not results else 0


def notes(args: argparse.Namespace) -> str:
    return (
        f"{args.rounds} round(s) per target, fresh broker each round, targets alternating; "
        f"load generator: {args.procs} processes, raw sockets. throughput: {args.conns} "
        f"connections, {args.messages:,} messages (stop after {args.duration:.0f} s), "
        f"≤{args.inflight} in flight each; idle: {args.idle_conns:,} connections; latency: "
        f"{args.rate:,.0f} msg/s for {args.latency_seconds:.0f} s. Mosquitto: "
        f"max_queued_messages {args.mosquitto_max_queued}, max_inflight_messages "
        f"{args.mosquitto_max_inflight}. Medians over rounds; counts summed over rounds."
    )


if __name__ == "__main__":
    sys.exit(main())
