"""Synthetic IoT workload: 1,000 devices x 5 sensors, one reading a minute.

Everything is generated in memory, deterministically (fixed seed), before any timing starts:

- line protocol: one line per device per minute carrying all 5 sensors as fields, e.g. ::

      env,device=dev0042,site=s2 temperature=21.37,humidity=48.2,pressure=1013.21,\
      co2=412.0,light=301.5 1717200000000000000     (one line, wrapped here)

  ordered minute by minute (all devices of a minute, then the next minute), cut into batches
  of 5,000 lines; the same bytes go to every server;
- seed-000 JSON: one device per request, 1,000 rows (5,000 points) per request, for
  ``POST /api/v1/devices/{device}/telemetry``.

A *point* is one field value, so one line or one JSON row is 5 points.

Values are random walks rounded to 1-2 decimals, so they compress like real sensor data.

Used by ``bench/ingest_query.py``; on its own::

    python -c "from bench.workload import *; w = build_workload(288); print(w.summary())"
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import orjson

MEASUREMENT = "env"
DEVICES = 1_000
SITES = 10
LINES_PER_BATCH = 5_000
JSON_ROWS_PER_REQUEST = 1_000
WINDOW_MINUTES = 48 * 60
MINUTE_NS = 60 * 1_000_000_000
SEED = 20_240_601


@dataclass(frozen=True)
class Sensor:
    """One sensor's random walk: start range, step size, bounds, decimals kept."""

    name: str
    start_low: float
    start_high: float
    step: float
    low: float
    high: float
    decimals: int


SENSORS: tuple[Sensor, ...] = (
    Sensor("temperature", 18.0, 24.0, 0.05, -10.0, 45.0, 2),
    Sensor("humidity", 35.0, 60.0, 0.1, 5.0, 95.0, 1),
    Sensor("pressure", 1005.0, 1020.0, 0.02, 950.0, 1050.0, 2),
    Sensor("co2", 400.0, 600.0, 2.0, 380.0, 2000.0, 1),
    Sensor("light", 100.0, 500.0, 5.0, 0.0, 2000.0, 1),
)
FIELDS: tuple[str, ...] = tuple(s.name for s in SENSORS)
FIELDS_PER_LINE = len(SENSORS)


@dataclass(frozen=True)
class JsonRequest:
    """One seed-000 JSON request: the device it is posted for, its body, its point count."""

    device: str
    body: bytes
    points: int


@dataclass(frozen=True)
class Workload:
    """All request bodies of a run, plus the facts needed to query and verify them."""

    minutes: int
    end_ns: int
    lp_batches: list[bytes]
    lp_lines: int
    json_requests: list[JsonRequest]

    @property
    def lp_points(self) -> int:
        return self.lp_lines * FIELDS_PER_LINE

    @property
    def json_points(self) -> int:
        return sum(r.points for r in self.json_requests)

    @property
    def window_start_ns(self) -> int:
        """Start of the 48 h query window (the data covers its last ``minutes`` minutes)."""
        return self.end_ns - WINDOW_MINUTES * MINUTE_NS

    def summary(self) -> str:
        lp_mb = sum(map(len, self.lp_batches)) / 1e6
        js_mb = sum(len(r.body) for r in self.json_requests) / 1e6
        return (
            f"{DEVICES} devices x {FIELDS_PER_LINE} sensors x {self.minutes} min: "
            f"{self.lp_lines:,} lines = {self.lp_points:,} points in {len(self.lp_batches)} "
            f"line-protocol batches ({lp_mb:.0f} MB); {len(self.json_requests)} JSON requests "
            f"= {self.json_points:,} points ({js_mb:.0f} MB); data ends "
            f"{ns_to_rfc3339(self.end_ns)}"
        )


def device_name(index: int) -> str:
    return f"dev{index:04d}"


def ns_to_rfc3339(ns: int) -> str:
    """``1717200000000000000`` -> ``2024-06-01T00:00:00Z``."""
    moment = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def default_end_ns() -> int:
    """The current time rounded down to a whole hour, in nanoseconds."""
    now = dt.datetime.now(tz=dt.UTC).replace(minute=0, second=0, microsecond=0)
    return int(now.timestamp()) * 1_000_000_000


def sensor_walks(minutes: int, devices: int, seed: int) -> dict[str, np.ndarray]:
    """Per sensor, a ``(minutes, devices)`` array of rounded random-walk readings."""
    rng = np.random.default_rng(seed)
    walks: dict[str, np.ndarray] = {}
    for sensor in SENSORS:
        start = rng.uniform(sensor.start_low, sensor.start_high, size=(1, devices))
        steps = rng.normal(0.0, sensor.step, size=(minutes, devices))
        steps[0] = 0.0
        walk = np.clip(start + np.cumsum(steps, axis=0), sensor.low, sensor.high)
        walks[sensor.name] = np.round(walk, sensor.decimals)
    return walks


def _line_templates(devices: int) -> list[str]:
    """Per device, a format string for one line (fields and timestamp filled in later)."""
    fmt = ",".join(f"{s.name}={{{i}:.{s.decimals}f}}" for i, s in enumerate(SENSORS))
    return [
        f"{MEASUREMENT},device={device_name(d)},site=s{d % SITES} {fmt} {{5}}\n"
        for d in range(devices)
    ]


def line_protocol_lines(walks: dict[str, np.ndarray], end_ns: int) -> list[bytes]:
    """All lines, minute by minute, each minute all devices in device order."""
    minutes, devices = walks[FIELDS[0]].shape
    templates = _line_templates(devices)
    columns = [walks[name].tolist() for name in FIELDS]
    lines: list[bytes] = []
    for m in range(minutes):
        ts = end_ns - (minutes - m) * MINUTE_NS
        rows = zip(*(col[m] for col in columns), strict=True)
        lines.extend(t.format(*row, ts).encode() for t, row in zip(templates, rows, strict=True))
    return lines


def batch_lines(lines: list[bytes], size: int = LINES_PER_BATCH) -> list[bytes]:
    """Join lines into request bodies of ``size`` lines (the last one may be shorter)."""
    return [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def _json_body(device: int, walks: dict[str, np.ndarray], rows: range, ts_ms: list[int]) -> bytes:
    columns = {name: walks[name][rows.start : rows.stop, device].tolist() for name in FIELDS}
    tsdata = [
        {"timestamp": ts_ms[i], **{name: columns[name][i - rows.start] for name in FIELDS}}
        for i in rows
    ]
    info = {
        "deviceid": device_name(device),
        "fw_ver": f"1.0.{device % 7}",
        "batt_lvl": 40 + device % 60,
    }
    return orjson.dumps({"deviceinfo": info, "tsdata": tsdata})


def json_requests(total_points: int, end_ns: int, seed: int) -> list[JsonRequest]:
    """Seed-000 JSON requests carrying ``total_points`` points (rounded up to whole requests).

    Request ``i`` is device ``i % 1000`` over the ``i // 1000``-th block of 1,000 minutes,
    so every request holds exactly 1,000 rows of one device; blocks end at ``end_ns``.
    """
    points_per_request = JSON_ROWS_PER_REQUEST * FIELDS_PER_LINE
    count = -(-total_points // points_per_request)
    blocks = -(-count // DEVICES)
    minutes = blocks * JSON_ROWS_PER_REQUEST
    walks = sensor_walks(minutes, min(count, DEVICES), seed)
    end_ms = end_ns // 1_000_000
    ts_ms = [end_ms - (minutes - m) * 60_000 for m in range(minutes)]
    requests: list[JsonRequest] = []
    for i in range(count):
        block, device = divmod(i, DEVICES)
        rows = range(block * JSON_ROWS_PER_REQUEST, (block + 1) * JSON_ROWS_PER_REQUEST)
        body = _json_body(device, walks, rows, ts_ms)
        requests.append(JsonRequest(device_name(device), body, points_per_request))
    return requests


def build_workload(minutes: int, end_ns: int | None = None, seed: int = SEED) -> Workload:
    """Generate every request body of a run (line protocol and JSON) in memory."""
    if not 1 <= minutes <= WINDOW_MINUTES:
        raise ValueError(f"minutes must be within 1..{WINDOW_MINUTES}, got {minutes}")
    end = default_end_ns() if end_ns is None else end_ns
    lines = line_protocol_lines(sensor_walks(minutes, DEVICES, seed), end)
    return Workload(
        minutes=minutes,
        end_ns=end,
        lp_batches=batch_lines(lines),
        lp_lines=len(lines),
        json_requests=json_requests(len(lines) * FIELDS_PER_LINE, end, seed + 1),
    )
