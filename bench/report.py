"""Results of a benchmark run: per-server figures, the markdown table, the JSON file.

``ServerResults`` holds what was measured on one server; ``markdown_table`` turns the two
into the table ``bench/ingest_query.py`` prints (metric | Motes | InfluxDB | ratio | target)
and ``write_json`` saves everything under ``bench/results/<timestamp>.json``.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.common import SettledSize
from bench.loadgen import LoadResult
from bench.querybench import QueryTiming

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MOTES, INFLUX = "Motes", "InfluxDB 1.6.7"


@dataclass(frozen=True)
class CountCheck:
    """Points a server should hold after a load, and how many a count query found."""

    what: str
    expected: int
    found: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.found == self.expected


@dataclass
class ServerResults:
    """Everything measured on one server."""

    name: str
    lp_runs: list[LoadResult] = field(default_factory=list)
    json_runs: list[LoadResult] = field(default_factory=list)
    queries: dict[str, QueryTiming] = field(default_factory=dict)
    disk: SettledSize | None = None
    points_on_disk: int = 0
    checks: list[CountCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lp_points_per_s(self) -> float | None:
        return _median([r.points_per_s for r in self.lp_runs])

    @property
    def lp_lines_per_s(self) -> float | None:
        return _median([r.lines_per_s for r in self.lp_runs])

    @property
    def json_points_per_s(self) -> float | None:
        return _median([r.points_per_s for r in self.json_runs])

    @property
    def max_rss(self) -> int | None:
        values = [r.server_max_rss for r in self.lp_runs + self.json_runs if r.server_max_rss]
        return max(values) if values else None

    def bytes_per_point(self, settled: bool = True) -> float | None:
        if self.disk is None or not self.points_on_disk:
            return None
        size = self.disk.settled if settled else self.disk.immediate
        return size / self.points_on_disk

    def query_ms(self, name: str, pct: int) -> float | None:
        timing = self.queries.get(name)
        if timing is None:
            return None
        return timing.p50_ms if pct == 50 else timing.p99_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "lp_points_per_s_median": self.lp_points_per_s,
            "lp_lines_per_s_median": self.lp_lines_per_s,
            "json_points_per_s_median": self.json_points_per_s,
            "lp_runs": [load_to_dict(r) for r in self.lp_runs],
            "json_runs": [load_to_dict(r) for r in self.json_runs],
            "queries": {k: v.to_dict() for k, v in self.queries.items()},
            "disk": None if self.disk is None else vars(self.disk),
            "points_on_disk": self.points_on_disk,
            "bytes_per_point_settled": self.bytes_per_point(True),
            "bytes_per_point_immediate": self.bytes_per_point(False),
            "max_rss_bytes": self.max_rss,
            "count_checks": [{**vars(c), "ok": c.ok} for c in self.checks],
            "notes": self.notes,
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def load_to_dict(r: LoadResult) -> dict[str, object]:
    lat = sorted(r.latencies_s)
    return {
        "points": r.points,
        "lines": r.lines,
        "requests_ok": r.requests_ok,
        "retries": r.retries,
        "errors": r.errors,
        "wall_s": round(r.wall_s, 4),
        "points_per_s": round(r.points_per_s),
        "lines_per_s": round(r.lines_per_s),
        "client_cpu_pct_of_one_core": round(r.client_cpu_pct, 1),
        "server_cpu_pct_of_one_core": None if r.server_cpu_pct is None else round(r.server_cpu_pct),
        "server_max_rss_bytes": r.server_max_rss,
        "request_latency_p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
        "request_latency_max_ms": round(1000 * lat[-1], 2) if lat else None,
    }


# -- the table --------------------------------------------------------------------------------

Getter = Callable[[ServerResults], float | None]


@dataclass(frozen=True)
class Row:
    """One table row: how to read the figure, format it, the target and whether it is met."""

    metric: str
    get: Getter
    fmt: str
    target: str
    meets: Callable[[float, float | None], bool] | None = None  # (motes, influx) -> ok


def _count(v: float) -> str:
    return f"{v:,.0f}"


ROWS: tuple[Row, ...] = (
    Row(
        "line-protocol ingest, points/s",
        lambda s: s.lp_points_per_s,
        "count",
        "≥1,000,000 and ≥2× InfluxDB",
        lambda m, i: m >= 1_000_000 and (i is None or m >= 2 * i),
    ),
    Row("line-protocol ingest, lines/s", lambda s: s.lp_lines_per_s, "count", ""),
    Row(
        "seed-000 JSON ingest, points/s",
        lambda s: s.json_points_per_s,
        "count",
        "≥500,000",
        lambda m, i: m >= 500_000,
    ),
    Row(
        "1 device × 5 sensors, 48 h, 10-min means: p50 ms",
        lambda s: s.query_ms("one_device", 50),
        "ms",
        "≤5",
        lambda m, i: m <= 5,
    ),
    Row(
        "1 device × 5 sensors, 48 h, 10-min means: p99 ms",
        lambda s: s.query_ms("one_device", 99),
        "ms",
        "",
    ),
    Row(
        "latest values of 5,000 series: p50 ms",
        lambda s: s.query_ms("latest", 50),
        "ms",
        "≤5",
        lambda m, i: m <= 5,
    ),
    Row("latest values of 5,000 series: p99 ms", lambda s: s.query_ms("latest", 99), "ms", ""),
    Row(
        "1,000 devices hourly means (1 sensor, 48 h): p50 ms",
        lambda s: s.query_ms("all_devices_hourly", 50),
        "ms",
        "≤100",
        lambda m, i: m <= 100,
    ),
    Row(
        "1,000 devices hourly means (1 sensor, 48 h): p99 ms",
        lambda s: s.query_ms("all_devices_hourly", 99),
        "ms",
        "",
    ),
    Row(
        "bytes/point on disk (settled)",
        lambda s: s.bytes_per_point(True),
        "b",
        "≤3",
        lambda m, i: m <= 3,
    ),
    Row("bytes/point on disk (right after the load)", lambda s: s.bytes_per_point(False), "b", ""),
    Row(
        "server max RSS during the load, MB",
        lambda s: None if s.max_rss is None else s.max_rss / 1e6,
        "mb",
        "≤1,000",
        lambda m, i: m <= 1000,
    ),
)


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "count":
        return _count(value)
    if kind == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if kind == "b":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def _ratio(m: float | None, i: float | None) -> str:
    if m is None or i is None or i == 0:
        return "n/a"
    return f"{m / i:.2f}×"


def _target(row: Row, m: float | None, i: float | None) -> str:
    if not row.target:
        return ""
    if row.meets is None or m is None:
        return row.target
    mark = "✅" if row.meets(m, i) else "❌"
    unchecked = (
        " (InfluxDB part not checked: not run)" if "InfluxDB" in row.target and i is None else ""
    )
    return f"{row.target} {mark}{unchecked}"


def markdown_table(motes: ServerResults | None, influx: ServerResults | None) -> str:
    """The results table; a skipped server's column reads 'skipped'."""
    lines = [
        f"| metric | {MOTES} | {INFLUX} | ratio (Motes / InfluxDB) | target |",
        "|---|---:|---:|---:|---|",
    ]
    for row in ROWS:
        m = row.get(motes) if motes else None
        i = row.get(influx) if influx else None
        m_text = _fmt(m, row.fmt) if motes else "skipped"
        i_text = _fmt(i, row.fmt) if influx else "skipped"
        lines.append(
            f"| {row.metric} | {m_text} | {i_text} | {_ratio(m, i)} | {_target(row, m, i)} |"
        )
    return "\n".join(lines)


def write_json(payload: dict[str, object]) -> Path:
    """Save ``payload`` as ``bench/results/<UTC timestamp>.json``; the path written."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return path
