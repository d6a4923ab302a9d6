"""Motes under test: a private ``motes serve`` in a temp dir (or a running one), its API calls.

By default the benchmark starts ``motes serve --data-dir <tmp> --http-port <free>`` with
``MOTES_INIT_TOKEN`` set to a token it chooses, waits for ``GET /health`` -> 200 and stops
it with SIGTERM at the end. ``motes`` is taken from PATH, else run from this checkout with
the current Python. With ``--motes-url URL --token T`` it uses a running server instead
(no restart between runs, no data-dir size; RSS only if the listening process is visible).

Used by ``bench/ingest_query.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from bench.common import find_listening_pid, free_port, stop_process, wait_http
from bench.loadgen import Request
from bench.querybench import QueryCall, iteration_device
from bench.workload import FIELDS_PER_LINE, MEASUREMENT, Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
ORG = "main"
LP_BUCKET = "telemetry"
JSON_BUCKET = "json"
JSON_MEASUREMENT = "telemetry"  # where seed-000 batches land unless ?measurement= says otherwise


def serve_command() -> list[str]:
    """``motes serve`` from PATH, else this checkout's CLI run by the current interpreter."""
    exe = shutil.which("motes")
    if exe:
        return [exe, "serve"]
    code = "import sys; from motes.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", code, "serve"]


class MotesServer:
    """A Motes server: one this benchmark started (``start``) or a running one (``external``)."""

    def __init__(
        self,
        url: str,
        token: str,
        proc: subprocess.Popen[bytes] | None = None,
        root: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.proc = proc
        self.root = root

    @classmethod
    def start(cls, timeout: float = 120.0) -> MotesServer:
        root = Path(tempfile.mkdtemp(prefix="bench-motes-"))
        port, mqtt_port, token = free_port(), free_port(), secrets.token_hex(16)
        cmd = [
            *serve_command(),
            *("--data-dir", str(root / "data"), "--http-port", str(port)),
            *("--mqtt-port", str(mqtt_port)),  # the default, 1883, is taken on the bench box
        ]
        env = {**os.environ, "MOTES_INIT_TOKEN": token}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with (root / "motes.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = cls(f"http://127.0.0.1:{port}", token, proc, root)
        try:
            wait_http(f"{server.url}/health", 200, proc, timeout)
        except Exception:
            print(server.log_tail(), file=sys.stderr)
            server.close()
            raise
        return server

    @classmethod
    def external(cls, url: str, token: str) -> MotesServer:
        server = cls(url, token)
        wait_http(f"{server.url}/health", 200, None, timeout=10.0)
        return server

    @property
    def pid(self) -> int | None:
        """The server's pid (for RSS/CPU), or None when it cannot be seen."""
        if self.proc is not None:
            return self.proc.pid
        parts = urlsplit(self.url)
        if parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port:
            return find_listening_pid(parts.port)
        return None

    @property
    def store_dir(self) -> Path | None:
        """The data dir (None for an external server)."""
        return None if self.root is None else self.root / "data"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def log_tail(self, chars: int = 3000) -> str:
        if self.root is None:
            return ""
        return (self.root / "motes.log").read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Stop the server this benchmark started (SIGTERM, wait) and delete its temp dir."""
        if self.proc is not None:
            stop_process(self.proc)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MotesServer:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- API ----------------------------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        """``POST /api/v1/buckets``; an existing bucket (409) is fine."""
        resp = httpx.post(
            f"{self.url}/api/v1/buckets",
            json={"name": name, "org": ORG},
            headers=self.headers,
            timeout=30.0,
        )
        if resp.status_code not in (200, 201, 409):
            raise RuntimeError(f"creating bucket {name!r}: {resp.status_code} {resp.text[:300]}")

    def count_points(self, bucket: str, measurement: str, start_ns: int, stop_ns: int) -> int:
        """Field values stored in a measurement between start and stop (one ``fn=count``)."""
        params = {
            "bucket": bucket,
            "measurement": measurement,
            "fn": "count",
            "group_by": "",
            "start": str(start_ns // 1_000_000),
            "stop": str(stop_ns // 1_000_000),
            "epoch": "ms",
        }
        resp = httpx.get(
            f"{self.url}/api/v1/query", params=params, headers=self.headers, timeout=300.0
        )
        if resp.status_code != 200:
            raise RuntimeError(f"count query: {resp.status_code} {resp.text[:300]}")
        return sum_counts(orjson.loads(resp.content))


def sum_counts(answer: dict[str, Any]) -> int:
    """Sum of every non-time column of every table of a ``/api/v1/query`` answer."""
    total = 0
    for table in answer["tables"]:
        for row in table["values"]:
            total += sum(v for v in row[1:] if isinstance(v, int) and not isinstance(v, bool))
    return total


def write_requests(workload: Workload) -> list[Request]:
    """The line-protocol batches as requests to ``POST /api/v2/write`` (nanosecond precision)."""
    path = f"/api/v2/write?org={ORG}&bucket={LP_BUCKET}&precision=ns"
    return [
        Request(path, body, body.count(b"\n") * FIELDS_PER_LINE, body.count(b"\n"))
        for body in workload.lp_batches
    ]


def json_write_requests(workload: Workload) -> list[Request]:
    """The seed-000 JSON bodies as requests to the device telemetry endpoint (``json`` bucket)."""
    return [
        Request(
            f"/api/v1/devices/{r.device}/telemetry?bucket={JSON_BUCKET}",
            r.body,
            r.points,
            r.points // FIELDS_PER_LINE,
        )
        for r in workload.json_requests
    ]


def query_calls(server: MotesServer, workload: Workload) -> dict[str, QueryCall]:
    """The three benchmark queries over ``/api/v1/query`` and ``/api/v1/latest``."""
    window = {
        "bucket": LP_BUCKET,
        "measurement": MEASUREMENT,
        "start": str(workload.window_start_ns // 1_000_000),
        "stop": str(workload.end_ns // 1_000_000),
        "epoch": "ms",
    }
    one = {**window, "every": "10m", "fn": "mean"}
    hourly = {**window, "field": "temperature", "every": "1h", "fn": "mean", "group_by": "device"}
    latest = {"bucket": LP_BUCKET, "measurement": MEASUREMENT, "epoch": "ms"}
    query_url, latest_url = f"{server.url}/api/v1/query", f"{server.url}/api/v1/latest"

    def one_device(c: httpx.Client, i: int) -> httpx.Response:
        return c.get(query_url, params={**one, "tag": f"device:{iteration_device(i)}"})

    return {
        "one_device": one_device,
        "latest": lambda c, i: c.get(latest_url, params=latest),
        "all_devices_hourly": lambda c, i: c.get(query_url, params=hourly),
    }
