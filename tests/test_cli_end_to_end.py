"""The ``motes`` CLI as a user runs it, against a real ``motes serve`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TOKEN, ServerProcess

pytestmark = pytest.mark.slow


def motes(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOTES_URL": server.url, "MOTES_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "motes.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_write_file_query_and_report_rejected_lines(server: ServerProcess, tmp_path: Path) -> None:
    lines = [f"env,device=d{i % 3} temp={i}.5 {1_700_000_000 + i * 60}" for i in range(3000)]
    lines[1234] = "env,device=d1 temp=broken 1700000000"
    data = tmp_path / "readings.lp"
    data.write_text("\n".join(lines) + "\n")
    out = motes(
        server,
        "write",
        "-f",
        str(data),
        "--bucket",
        "telemetry",
        "--precision",
        "s",
        "--batch-size",
        "500",
    )
    assert out.returncode == 1, out.stdout + out.stderr  # a line was rejected, as influx write
    report = (tmp_path / "readings.lp.rejected").read_text()
    assert "# line 1235:" in report and "temp=broken" in report
    out = motes(
        server,
        "query",
        "--bucket",
        "telemetry",
        "--measurement",
        "env",
        "--tag",
        "device=d0",
        "--start",
        "2023-11-14T00:00:00Z",
        "--every",
        "1d",
        "--fn",
        "count",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    (table,) = json.loads(out.stdout)["tables"]
    assert sum(count for _, count in table["values"]) == 1000  # every d0 line is stored


def test_buckets_lifecycle(server: ServerProcess) -> None:
    assert motes(server, "buckets", "create", "plants", "--retention", "30d").returncode == 0
    listing = motes(server, "buckets", "list")
    assert listing.returncode == 0 and "plants" in listing.stdout
    assert motes(server, "buckets", "delete", "plants").returncode == 0
    assert "plants" not in motes(server, "buckets", "list").stdout


def test_clear_errors_without_tracebacks(server: ServerProcess) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "motes.cli.main", "buckets", "list"],
        env={**os.environ, "MOTES_URL": server.url, "MOTES_TOKEN": "wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "invalid token" in bad.stderr or "unauthorized" in bad.stderr.lower()
    version = motes(server, "version")
    assert version.returncode == 0 and "0.1.0" in version.stdout
