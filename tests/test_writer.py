"""Group commit: many requests share one commit; a full queue refuses at once."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from motes.app import create_app
from motes.settings import Settings
from motes.telemetry.models import Overloaded
from motes.telemetry.store.protocol import WriteOutcome, WriteRequest
from motes.telemetry.writer import GroupCommitWriter
from tests.conftest import AUTH, TOKEN


class GatedStore:
    """A store whose commits wait for a gate, to hold requests in the queue."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.groups: list[int] = []

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteOutcome]:
        self.entered.set()
        self.gate.wait(10)
        self.groups.append(len(requests))
        return [WriteOutcome(written=1) for _ in requests]

    def maintain(self, idle: bool) -> None:
        pass


def test_queued_requests_share_one_commit_and_overflow_is_refused() -> None:
    store = GatedStore()
    writer = GroupCommitWriter(store, max_queued_points=10)  # type: ignore[arg-type]
    writer.start()
    first = writer.submit(WriteRequest("b", []), 4)  # taken by the writer, waits at the gate
    assert store.entered.wait(10)  # the first request is being committed
    queued = [writer.submit(WriteRequest("b", []), 3) for _ in range(2)]
    with pytest.raises(Overloaded):
        writer.submit(WriteRequest("b", []), 5)
    store.gate.set()
    assert first.result(10).written == 1
    assert all(f.result(10).written == 1 for f in queued)
    writer.stop()
    assert store.groups == [1, 2]  # the two queued requests were committed together


def test_overloaded_write_is_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", init_token=TOKEN, write_queue_points=1)
    with TestClient(create_app(settings), headers=AUTH) as client:
        writer = client.app.state.telemetry.writer  # type: ignore[attr-defined]
        release, busy = threading.Event(), threading.Event()
        writer.execute(lambda: busy.set() or release.wait(10))  # keep the writer busy
        assert busy.wait(10)
        waiting = writer.submit(WriteRequest("x", []), 1)  # the queue is now full
        r = client.post("/api/v2/write?bucket=telemetry", content=b"m f=1 1\nm f=2 2\n")
        release.set()
        waiting.result(10)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert "queue full" in r.json()["message"]
        ok = client.post("/api/v2/write?bucket=telemetry", content=b"m f=1 1\nm f=2 2\n")
        assert ok.status_code == 204  # once drained, writes go through again
