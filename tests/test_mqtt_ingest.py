"""The MQTT ingest batcher against a real DuckDB store and group-commit writer: publishes
of one event-loop turn go in as one write, yet each publish gets its own outcome, also for
what the write stage refuses (retention, the store's field types)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from motes.mqtt.ingest import STORED, Ingest, Outcome, split_run
from motes.registry.models import Bucket
from motes.telemetry.models import PointError
from motes.telemetry.service import TelemetryService
from motes.telemetry.store.duckdb import DuckDBStore
from motes.telemetry.writer import GroupCommitWriter

HOUR = 3_600_000_000_000
BUCKET = Bucket("b1", "org1", "one-hour", 3600)


def store_turn(tmp_path: Path, items: list[tuple[str, bytes, str]]) -> list[Outcome]:
    """Submit ``(device, payload, content type)`` items in one loop turn; their outcomes."""
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    writer = GroupCommitWriter(store, max_queued_points=100_000)
    writer.start()
    service = TelemetryService(store, writer, lambda bucket, measurement: None)

    async def run() -> list[Outcome]:
        ingest = Ingest(service)
        futures = [ingest.store(BUCKET, d, payload, kind) for d, payload, kind in items]
        return list(await asyncio.gather(*futures))

    try:
        return asyncio.run(run())
    finally:
        writer.stop()


def test_write_stage_errors_go_to_the_publish_whose_point_it_was(tmp_path: Path) -> None:
    now = time.time_ns()
    old = now - 48 * HOUR  # older than the bucket's one hour: the write stage drops it
    json_old = orjson.dumps({"tsdata": [{"timestamp": old // 1_000_000, "t": 1.0}]})
    outcomes = store_turn(
        tmp_path,
        [
            ("a", f"m v=1 {now}".encode(), "text/plain"),
            ("b", f"m v=2 {now}\nm v=3 {old}\nm v=4 {now + 1}".encode(), "text/plain"),
            ("c", json_old, "application/json"),
            ("d", f"m v=5 {now}".encode(), "text/plain"),
        ],
    )
    a, b, c, d = outcomes
    assert a is STORED and d is STORED
    assert [(e.line, "retention" in e.message) for e in b.errors] == [(2, True)]
    assert b.written == 2 and not b.rejected
    assert [e.line for e in c.errors] == [1] and c.rejected


def test_decode_errors_stay_with_their_publish(tmp_path: Path) -> None:
    now = time.time_ns()
    outcomes = store_turn(
        tmp_path,
        [
            ("a", b"this is not line protocol", "text/plain"),
            ("b", f"m v=1 {now}\nm v= {now}".encode(), "text/plain"),
            ("c", f"m v=2 {now}".encode(), "text/plain"),
        ],
    )
    a, b, c = outcomes
    assert a.rejected and [e.line for e in a.errors] == [1]
    assert [e.line for e in b.errors] == [2] and b.written == 1
    assert c is STORED


def test_split_run_gives_each_payload_its_own_lines() -> None:
    payloads = [b"m v=1", b"m v=2\nm v=x", b"", b"m v=4"]
    joined = Outcome(3, [PointError(3, "bad value"), PointError(5, "too old")])
    parts = split_run(payloads, joined)
    assert parts[0] is STORED and parts[2] is STORED
    assert parts[1].errors == [PointError(2, "bad value")] and parts[1].written == 1
    assert parts[3].errors == [PointError(1, "too old")] and parts[3].rejected
    whole = split_run(payloads, Outcome(0, [PointError(None, "bucket deleted")]))
    assert all(p.rejected for p in whole)


def test_a_run_settles_field_types_per_publish(tmp_path: Path) -> None:
    """A run's payloads are one item but separate bodies: a publish with the wrong field
    type is refused alone; the next one of the run, of the right type, is stored."""
    now = time.time_ns()
    first = f"m f=1.5 {now}".encode()
    wrong, right = f"m f=1i {now + 1}".encode(), f"m f=2.5 {now + 2}".encode()
    store = DuckDBStore(tmp_path / "telemetry.duckdb")
    writer = GroupCommitWriter(store, max_queued_points=100_000)
    writer.start()
    service = TelemetryService(store, writer, lambda bucket, measurement: None)

    async def run() -> tuple[Outcome, Outcome]:
        ingest = Ingest(service)
        await ingest.store(BUCKET, "d1", first, "text/plain")  # f is a float from now on
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        ingest.submit(BUCKET, "d1", wrong + b"\n" + right, "text/plain", done.set_result,
                      parts=[wrong, right])  # fmt: skip
        a, b = split_run([wrong, right], await done)
        return a, b

    try:
        a, b = asyncio.run(run())
    finally:
        writer.stop()
    assert a.rejected and [e.line for e in a.errors] == [1]
    assert b is STORED


def test_split_run_does_not_count_comments_as_stored_points() -> None:
    payloads = [b"# sensor 7\nm v= 1", b"m v=2"]
    a, b = split_run(payloads, Outcome(1, [PointError(2, "missing field value")]))
    assert a.rejected and a.written == 0
    assert b is STORED
