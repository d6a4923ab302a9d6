"""Kill -9 mid-ingest, several times: every acknowledged point is there after restart."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, start_server

pytestmark = pytest.mark.slow

WRITERS = 3
LINES = 500


def writer(url: str, device: str, start: int, acked: list[int], stop: threading.Event) -> None:
    t = start
    with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
        while not stop.is_set():
            times = list(range(t, t + LINES))
            body = "".join(f"env,device={device} v={x}i {x}\n" for x in times).encode()
            try:
                r = c.post("/api/v2/write?bucket=telemetry&precision=s", content=body)
            except httpx.HTTPError:
                return  # the server died: this batch was never acked
            if r.status_code == 204:
                acked.extend(times)
            t += LINES


def stored_times(url: str, device: str) -> set[int]:
    r = httpx.get(
        f"{url}/api/v1/devices/{device}/telemetry",
        params={"measurement": "env"},
        headers=AUTH,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return {row["timestamp"] // 1000 for row in r.json()}


def test_acknowledged_points_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "crash"
    acked: dict[str, list[int]] = {f"w{i}": [] for i in range(WRITERS)}
    for round_ in range(3):
        srv = start_server(data)
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=writer, args=(srv.url, dev, 1_000_000 * (round_ + 1), acked[dev], stop)
            )
            for dev in acked
        ]
        for th in threads:
            th.start()
        time.sleep(1.5)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        stop.set()
        for th in threads:
            th.join()
    srv = start_server(data)
    try:
        for dev, times in acked.items():
            assert times, f"writer {dev} never got an ack"
            missing = set(times) - stored_times(srv.url, dev)
            assert not missing, f"{len(missing)} acknowledged points of {dev} lost"
    finally:
        assert srv.stop() == 0
