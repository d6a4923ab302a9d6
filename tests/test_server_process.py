"""The real ``motes serve`` process with real clients: influxdb-client, httpx, SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.conftest import AUTH, TOKEN, ServerProcess, free_port, start_server

pytestmark = pytest.mark.slow


def test_influxdb_client_writes_unchanged(server: ServerProcess) -> None:
    with InfluxDBClient(url=server.url, token=TOKEN, org="main") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        api.write(
            "telemetry",
            "main",
            Point("plant")
            .tag("device", "pb1")
            .field("reading", 26)
            .time(1621978469468115968, WritePrecision.NS),
        )
        api.write("telemetry", "main", "plant,device=pb1 reading=28i 1621978529468115968")
        api.write(
            "telemetry",
            "main",
            [
                {
                    "measurement": "plant",
                    "tags": {"device": "pb2"},
                    "fields": {"reading": 3},
                    "time": 1621978469468115968,
                }
            ],
        )
        assert client.ping()
    r = httpx.get(
        server.url + "/api/v1/query",
        headers=AUTH,
        params={
            "bucket": "telemetry",
            "measurement": "plant",
            "tag": "device:pb1",
            "start": "0",
            "epoch": "ns",
        },
    )
    assert r.json()["tables"][0]["values"] == [[1621978469468115968, 26], [1621978529468115968, 28]]


def test_influxdb_client_sees_our_errors(server: ServerProcess) -> None:
    from influxdb_client.rest import ApiException

    with InfluxDBClient(url=server.url, token=TOKEN, org="main") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        with pytest.raises(ApiException) as info:
            api.write("telemetry", "main", "plant,device=x reading=abc 1")
        assert info.value.status == 400
        assert "reading" in info.value.body


def test_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "d")
    r = httpx.post(
        srv.url + "/api/v2/write?bucket=telemetry", headers=AUTH, content=b"m,device=a f=1 1\n"
    )
    assert r.status_code == 204
    assert srv.stop(signal.SIGTERM) == 0
    srv = start_server(tmp_path / "d")
    try:
        rows = httpx.get(srv.url + "/api/v1/devices/a/telemetry?measurement=m", headers=AUTH).json()
        assert rows == [{"timestamp": 0, "f": 1.0}]
    finally:
        srv.stop()


def test_first_start_generates_and_stores_the_token(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    port = free_port()
    data = tmp_path / "fresh"
    env = {k: v for k, v in os.environ.items() if k != "MOTES_INIT_TOKEN"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "motes.cli.main",
            "serve",
            "--data-dir",
            str(data),
            "--http-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        token_file = data / "operator-token"
        for _ in range(300):
            if token_file.exists() and token_file.read_text().strip():
                break
            time.sleep(0.1)
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        token = token_file.read_text().strip()
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/buckets", headers={"Authorization": f"Bearer {token}"}
        )
        assert [b["name"] for b in r.json()["buckets"]] == ["telemetry"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert token in out
    assert proc.returncode == 0
