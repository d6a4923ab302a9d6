"""InfluxDB 1.x peer for the benchmark: a private ``influxd`` in a temp dir, its writes, queries.

The benchmark starts its own ``influxd`` (never the system service) with a minimal config
file: data/meta/wal dirs under a temp dir, free loopback ports, logging and self-monitoring
off, no series/tag limits, ``wal-fsync-delay = "0s"``. Two settings only take effect once
the load is over: a shard idle for 5 s has its cache snapshotted to TSM and one idle for 10 s
is fully compacted, so the "settled" disk size is reached within seconds instead of hours
(defaults: 10 min and 4 h). Neither changes anything while writes keep arriving.

    with InfluxServer.start() as influx:
        influx.create_database()
        ...

Used by ``bench/ingest_query.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import httpx
import orjson

from bench.common import free_port, stop_process, wait_http
from bench.loadgen import Request
from bench.querybench import QueryCall, iteration_device
from bench.workload import FIELDS_PER_LINE, MEASUREMENT, Workload, ns_to_rfc3339

DATABASE = "bench"
CONFIG_TEMPLATE = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{store}/meta"
  logging-enabled = false

[data]
  dir = "{store}/data"
  wal-dir = "{store}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  max-series-per-database = 0
  max-values-per-tag = 0
  cache-snapshot-write-cold-duration = "5s"
  compact-full-write-cold-duration = "10s"

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"""


def influxd_binary() -> str:
    path = shutil.which("influxd")
    if path is None:
        raise FileNotFoundError("influxd not found on PATH (Debian: apt-get install influxdb)")
    return path


def influxd_version() -> str:
    out = subprocess.run([influxd_binary(), "version"], capture_output=True, text=True)
    return out.stdout.strip()


class InfluxServer:
    """A private influxd process; use :meth:`start` and a ``with`` block."""

    def __init__(self, root: Path, http_port: int, proc: subprocess.Popen[bytes]) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{http_port}"
        self.proc = proc

    @classmethod
    def start(cls, timeout: float = 60.0) -> InfluxServer:
        root = Path(tempfile.mkdtemp(prefix="bench-influx-"))
        http_port, rpc_port = free_port(), free_port()
        config = root / "influxdb.conf"
        config.write_text(
            CONFIG_TEMPLATE.format(store=root / "store", rpc_port=rpc_port, http_port=http_port)
        )
        with (root / "influxd.log").open("wb") as log:
            proc = subprocess.Popen(
                [influxd_binary(), "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        server = cls(root, http_port, proc)
        try:
            wait_http(f"{server.url}/ping", 204, proc, timeout)
        except Exception:
            server.close()
            raise
        return server

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def store_dir(self) -> Path:
        """What counts as InfluxDB's disk use: data, wal and meta dirs (not config or log)."""
        return self.root / "store"

    def log_tail(self, chars: int = 2000) -> str:
        return (self.root / "influxd.log").read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Stop influxd (SIGTERM, wait) and delete its temp dir."""
        stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> InfluxServer:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- API ----------------------------------------------------------------------------------

    def query(self, client: httpx.Client, q: str, *, post: bool = False) -> dict[str, object]:
        """Run InfluxQL; the decoded JSON answer (raises on HTTP or statement errors)."""
        params = {"db": DATABASE, "q": q, "epoch": "ms"}
        url = f"{self.url}/query"
        resp = client.post(url, params=params) if post else client.get(url, params=params)
        resp.raise_for_status()
        body: dict[str, object] = orjson.loads(resp.content)
        for result in body.get("results", []):  # type: ignore[attr-defined]
            if "error" in result:
                raise RuntimeError(f"InfluxQL error for {q!r}: {result['error']}")
        return body

    def create_database(self) -> None:
        with httpx.Client(timeout=30.0) as client:
            self.query(client, f"CREATE DATABASE {DATABASE}", post=True)

    def count_points(self) -> int:
        """Field values stored in ``env``: the sum of ``count(*)`` over all fields."""
        with httpx.Client(timeout=300.0) as client:
            body = self.query(client, f"SELECT count(*) FROM {MEASUREMENT}")
        total = 0
        for result in body.get("results", []):  # type: ignore[attr-defined]
            for series in result.get("series", []):
                for row in series["values"]:
                    total += sum(v for v in row[1:] if isinstance(v, int))
        return total


def write_requests(workload: Workload) -> list[Request]:
    """The line-protocol batches as requests to ``POST /write`` (nanosecond precision)."""
    path = f"/write?db={DATABASE}&precision=ns"
    return [
        Request(path, body, body.count(b"\n") * FIELDS_PER_LINE, body.count(b"\n"))
        for body in workload.lp_batches
    ]


def time_range(workload: Workload) -> str:
    start = ns_to_rfc3339(workload.window_start_ns)
    stop = ns_to_rfc3339(workload.end_ns)
    return f"time >= '{start}' AND time < '{stop}'"


def one_device_query(workload: Workload, device: str) -> str:
    return (
        f"SELECT mean(*) FROM {MEASUREMENT} WHERE device = '{device}' AND "
        f"{time_range(workload)} GROUP BY time(10m)"
    )


def all_devices_hourly_query(workload: Workload) -> str:
    return (
        f"SELECT mean(temperature) FROM {MEASUREMENT} WHERE {time_range(workload)} "
        "GROUP BY time(1h), device"
    )


LATEST_QUERY = f"SELECT last(*) FROM {MEASUREMENT} GROUP BY device"


def query_calls(server: InfluxServer, workload: Workload) -> dict[str, QueryCall]:
    """The three benchmark queries as InfluxQL over ``GET /query`` (epoch=ms)."""

    def get(client: httpx.Client, q: str) -> httpx.Response:
        return client.get(f"{server.url}/query", params={"db": DATABASE, "q": q, "epoch": "ms"})

    hourly = all_devices_hourly_query(workload)
    return {
        "one_device": lambda c, i: get(c, one_device_query(workload, iteration_device(i))),
        "latest": lambda c, i: get(c, LATEST_QUERY),
        "all_devices_hourly": lambda c, i: get(c, hourly),
    }
