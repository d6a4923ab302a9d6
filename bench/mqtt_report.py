"""Markdown tables and the JSON file of ``bench/mqtt.py``: medians over rounds per target."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.report import RESULTS_DIR

MB = 1_000_000
THROUGHPUT_TARGET, IDLE_TARGET_BYTES, P99_TARGET_MS = 100_000, 1_000_000_000, 50.0

# results[target][scenario] = one figures dict per round
Results = dict[str, dict[str, list[dict[str, Any]]]]


def median(rounds: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def total(rounds: list[dict[str, Any]], key: str) -> int | None:
    values = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return int(sum(values)) if values else None


def medians(results: Results) -> dict[str, dict[str, dict[str, float | None]]]:
    """The median of every numeric figure, per target and scenario."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for target, scenarios in results.items():
        out[target] = {}
        for scenario, rounds in scenarios.items():
            keys = {k for r in rounds for k, v in r.items() if isinstance(v, int | float)}
            out[target][scenario] = {k: median(rounds, k) for k in sorted(keys)}
    return out


def _num(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _each(rounds: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rounds if isinstance(r.get(key), int | float)]
    return ", ".join(f"{v / 1000:,.1f} k" for v in vals)


Cell = Callable[[list[dict[str, Any]]], str]


def _rate(key: str) -> Cell:
    def cell(rounds: list[dict[str, Any]]) -> str:
        m = median(rounds, key)
        return "n/a" if m is None else f"{m:,.0f} ({_each(rounds, key)})"

    return cell


def _fig(key: str, digits: int = 0, scale: float = 1.0, unit: str = "") -> Cell:
    def cell(rounds: list[dict[str, Any]]) -> str:
        m = median(rounds, key)
        return "n/a" if m is None else f"{m / scale:,.{digits}f}{unit}"

    return cell


def _pair(a: str, b: str, digits: int = 1) -> Cell:
    def cell(rounds: list[dict[str, Any]]) -> str:
        ma, mb = median(rounds, a), median(rounds, b)
        return "n/a" if ma is None or mb is None else f"{ma:,.{digits}f} / {mb:,.{digits}f}"

    return cell


def _counts(rounds: list[dict[str, Any]]) -> str:
    keys = ("sent", "acked", "delivered", "lost")
    return " / ".join(_num(total(rounds, k)) for k in keys)


def _mode(rounds: list[dict[str, Any]]) -> str:
    r = rounds[-1]
    return f"QoS {r['qos']}, MQTT {r['mqtt_version']}, {r['connections']} conns, {r['procs']} procs"


def _ratio(results: Results, scenario: str, key: str) -> Cell:
    """The median of ``key`` over Mosquitto's (for the ratio after a target's figure)."""
    base = median(results.get("mosquitto", {}).get(scenario, []), key)

    def cell(rounds: list[dict[str, Any]]) -> str:
        m = median(rounds, key)
        return "n/a" if m is None or not base else f"{m / base:.2f}×"

    return cell


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def table(results: Results, scenario: str) -> str:
    """One markdown table: a row per figure, a column per target that ran ``scenario``."""
    targets = [t for t, s in results.items() if s.get(scenario)]
    if not targets:
        return ""
    rows, target_col = ROWS[scenario](results), _targets(results, scenario)
    head = f"| {scenario} | " + " | ".join(targets) + " | target (Motes) |"
    lines = [head, "|---|" + "---:|" * len(targets) + "---|"]
    for i, (label, cell) in enumerate(rows):
        cells = [cell(results[t][scenario]) for t in targets]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target_col.get(i, '')} |")
    return "\n".join(lines)


def _targets(results: Results, scenario: str) -> dict[int, str]:
    """Target text (with a verdict when Motes ran) by row index."""
    motes = results.get("motes", {}).get(scenario) or []
    if scenario == "throughput":
        rate, lost = median(motes, "rate"), total(motes, "lost")
        ok = None if rate is None else rate >= THROUGHPUT_TARGET and lost == 0
        return {1: f"≥{THROUGHPUT_TARGET:,} msg/s, 0 lost{_verdict(ok)}"}
    if scenario == "idle":
        after = median(motes, "rss_after")
        ok = None if after is None else after <= IDLE_TARGET_BYTES
        return {1: f"≤ 1 GB total with 10,000 connections{_verdict(ok)}"}
    p99 = median(motes, "query_p99_ms")
    ok = None if p99 is None else p99 <= P99_TARGET_MS
    return {3: f"p99 ≤ {P99_TARGET_MS:.0f} ms{_verdict(ok)}"}


def _throughput_rows(results: Results) -> list[tuple[str, Cell]]:
    return [
        ("load", _mode),
        ("msg/s: acked (QoS 0: delivered), median (each round)", _rate("rate")),
        ("÷ Mosquitto", _ratio(results, "throughput", "rate")),
        ("sent / acked / delivered / lost, all rounds (Motes: delivered = stored)", _counts),
        ("msg/s reaching the counting subscriber", _fig("subscriber_per_s")),
        ("broker CPU µs per message", _fig("broker_cpu_us_per_msg", 1)),
        ("broker max RSS", _fig("broker_max_rss", 0, MB, " MB")),
        ("load generator CPU, % of one core", _fig("generator_cpu_pct", 0, 1, " %")),
    ]


def _idle_rows(results: Results) -> list[tuple[str, Cell]]:
    return [
        ("connections held", _pair("connections", "asked", 0)),
        ("RSS before / after, MB", _rss),
        ("bytes per idle connection", _fig("bytes_per_connection")),
        ("connections per second (connect + CONNACK)", _fig("connect_per_s")),
        ("dropped while idle, all rounds", lambda r: _num(total(r, "dropped_while_idle"))),
        (
            "quiet after the last CONNACK, s (≥ settle + 1 s)",
            _fig("quiet_after_connects_s", 1),
        ),
        (
            "broker CPU while idle (once quiet), % of one core",
            _fig("broker_idle_cpu_pct", 1, 1, " %"),
        ),
    ]


def _rss(rounds: list[dict[str, Any]]) -> str:
    a, b = median(rounds, "rss_before"), median(rounds, "rss_after")
    return "n/a" if a is None or b is None else f"{a / MB:,.1f} → {b / MB:,.1f}"


def _latency_rows(results: Results) -> list[tuple[str, Cell]]:
    return [
        ("load", lambda r: f"{_num(median(r, 'rate_asked'))} msg/s asked, QoS {r[-1]['qos']}"),
        ("sent msg/s", _fig("sent_per_s")),
        ("publish → PUBACK p50 / p99 ms", _pair("puback_p50_ms", "puback_p99_ms", 2)),
        (
            "publish → in the latest-value query p50 / p99 ms",
            _pair("query_p50_ms", "query_p99_ms", 2),
        ),
        (
            "publish → in the query, lower bound p50 / p99 ms",
            _pair("query_lower_p50_ms", "query_lower_p99_ms", 2),
        ),
        (
            "publish → at the subscriber p50 / p99 ms",
            _pair("subscriber_p50_ms", "subscriber_p99_ms", 2),
        ),
        ("samples: PUBACK / query / subscriber", _samples),
        ("latest-value probe: polls, round trip p50 ms", _probe),
        ("lost (subscriber), all rounds", lambda r: _num(total(r, "subscriber_lost"))),
        ("broker CPU, % of one core", _fig("broker_cpu_pct", 0, 1, " %")),
    ]


def _probe(rounds: list[dict[str, Any]]) -> str:
    polls, rtt = median(rounds, "probe_polls"), median(rounds, "probe_round_trip_p50_ms")
    return "n/a" if polls is None or rtt is None else f"{polls:,.0f}, {rtt:.2f}"


def _samples(rounds: list[dict[str, Any]]) -> str:
    keys = ("puback_samples", "query_samples", "subscriber_samples")
    return " / ".join(_num(median(rounds, k)) for k in keys)


ROWS = {"throughput": _throughput_rows, "idle": _idle_rows, "latency": _latency_rows}


def save_json(payload: dict[str, Any]) -> Path:
    """``bench/results/<UTC timestamp>-mqtt.json`` (git-ignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}-mqtt.json"
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return path
