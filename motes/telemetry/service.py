"""Telemetry rules: one write pipeline for every format, and the query shapes apps use.

decode (codecs) -> authorize (api) -> normalize (here: server time, schemas, retention)
-> group-commit writer -> store. No framework imports: the API layer adapts HTTP to this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from motes.registry.models import Bucket, MeasurementSchema
from motes.telemetry.models import (
    MAX_TIME_NS,
    MIN_TIME_NS,
    Decoded,
    Frame,
    PointError,
    QueryError,
    WriteRejected,
    field_type_of,
)
from motes.telemetry.store.protocol import (
    NO_TIME,
    Aggregation,
    LatestRows,
    Selection,
    TelemetryStore,
    WriteOutcome,
    WriteRequest,
)
from motes.telemetry.writer import GroupCommitWriter

SchemaLookup = Callable[[str, str], MeasurementSchema | None]
FLEET_FNS = ("sum", "mean", "min", "max", "count")
MIN_TIME, MAX_TIME = MIN_TIME_NS, MAX_TIME_NS


@dataclass
class PendingWrite:
    """A write on its way to disk: await ``future``, then call :meth:`result`."""

    future: Future[WriteOutcome] | None
    errors: list[PointError]

    def result(self, outcome: WriteOutcome | None) -> int:
        """Points written; raises WriteRejected naming every refused point."""
        errors = self.errors + (outcome.errors if outcome else [])
        written = outcome.written if outcome else 0
        if errors:
            errors.sort(key=lambda e: (e.line is None, e.line or 0))
            raise WriteRejected(
                f"partial write: {len(errors)} point(s) rejected, {written} value(s) written"
                if written
                else f"write rejected: {len(errors)} point(s) rejected",
                errors,
                written,
            )
        return written


class TelemetryService:
    def __init__(
        self,
        store: TelemetryStore,
        writer: GroupCommitWriter,
        schemas: SchemaLookup,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.writer = writer
        self._schemas = schemas
        self._clock = clock
        self._last_retention = 0

    # -- writes ---------------------------------------------------------------------------

    def submit(self, bucket: Bucket, decoded: Decoded) -> PendingWrite:
        """Normalize decoded frames and queue them; raises Overloaded when the queue is full."""
        now = self._clock()
        errors = list(decoded.errors)
        frames: list[Frame] = []
        for frame in decoded.frames:
            frame = _stamp(frame, now)
            frame = _check_time_range(frame, errors)
            frame = _drop_reserved(frame, errors)
            frame = self._apply_schema(bucket, frame, errors)
            frame = _apply_retention(bucket, frame, now, errors)
            if len(frame):
                frames.append(frame)
        points = sum(f.point_count for f in frames)
        if not frames:
            return PendingWrite(None, errors)
        future = self.writer.submit(WriteRequest(bucket.id, frames), points)
        return PendingWrite(future, errors)

    def _apply_schema(self, bucket: Bucket, frame: Frame, errors: list[PointError]) -> Frame:
        schema = self._schemas(bucket.id, frame.measurement)
        if schema is None:
            return frame
        bad = np.zeros(len(frame), dtype=bool)
        for name, col in frame.fields.items():
            spec = schema.fields.get(name)
            present = np.asarray(col.is_valid())
            if spec is None and schema.strict:
                reason = f'field "{name}" is not in the schema of measurement "{frame.measurement}"'
            elif spec is not None and spec.type != field_type_of(col.type):
                if spec.type == "float" and frame.coerce_numbers and pa.types.is_integer(col.type):
                    frame.fields[name] = col.cast(pa.float64())
                    continue
                reason = (
                    f'field "{name}" of measurement "{frame.measurement}" must be {spec.type} '
                    f"(schema), got {field_type_of(col.type)}"
                )
            else:
                continue
            _report(frame, present & ~bad, reason, errors)
            bad |= present
        return frame if not bad.any() else frame.take(pa.array(np.flatnonzero(~bad)))

    def drop_bucket(self, bucket_id: str) -> Future[object]:
        """Delete a bucket's telemetry, on the writer thread so no commit interleaves."""
        return self.writer.execute(lambda: self.store.drop_bucket(bucket_id))

    def maintain(self, idle: bool, buckets: Callable[[], list[Bucket]]) -> None:
        """Writer-thread housekeeping: compaction, and retention once an hour."""
        self.store.maintain(idle)
        now = self._clock()
        if now - self._last_retention < 3_600_000_000_000:
            return
        self._last_retention = now
        for bucket in buckets():
            if bucket.retention_seconds:
                self.store.enforce_retention(bucket.id, now - bucket.retention_seconds * 10**9)

    # -- reads ----------------------------------------------------------------------------

    def read(
        self, sel: Selection, agg: Aggregation | None, limit: int | None
    ) -> list[tuple[dict[str, str], pa.Table]]:
        if sel.stop <= sel.start:
            raise QueryError("stop must be after start")
        return self.store.read(sel, agg, limit)

    def latest(
        self, bucket: Bucket, measurement: str | None, tags: dict[str, list[str]]
    ) -> list[LatestRows]:
        return self.store.latest(bucket.id, measurement, tags)

    def fleet(
        self,
        bucket: Bucket,
        measurement: str,
        fields: tuple[str, ...],
        tags: dict[str, list[str]],
        fn: str,
    ) -> dict[str, dict[str, object]]:
        """Latest value of every matching series, reduced per numeric field by ``fn``."""
        if fn not in FLEET_FNS:
            raise QueryError(f'fn must be one of {", ".join(FLEET_FNS)}, got "{fn}"')
        out: dict[str, dict[str, object]] = {}
        for rows in self.latest(bucket, measurement, tags):
            for name, (times, values) in rows.fields.items():
                if (fields and name not in fields) or values.dtype.kind not in "fiu":
                    continue
                held = times != NO_TIME
                out[name] = {
                    "value": _reduce(fn, values[held].astype(np.float64)),
                    "series": int(held.sum()),
                    "newest_ns": int(times[held].max()),
                }
        return dict(sorted(out.items()))


def _stamp(frame: Frame, now: int) -> Frame:
    """Points sent without a timestamp get the server's receive time, as InfluxDB does."""
    if frame.time.null_count == 0:
        return frame
    frame.time = pc.fill_null(frame.time, pa.scalar(now, pa.int64()))
    return frame


def _check_time_range(frame: Frame, errors: list[PointError]) -> Frame:
    times = frame.time.to_numpy(zero_copy_only=False)
    bad = (times < MIN_TIME) | (times > MAX_TIME)
    if not bad.any():
        return frame
    _report(frame, bad, "timestamp out of range: Motes keeps times from 1680-06 to 2262-04", errors)
    return frame.take(pa.array(np.flatnonzero(~bad)))


def _drop_reserved(frame: Frame, errors: list[PointError]) -> Frame:
    """``time`` names the timestamp in every answer, so no field or tag may take it."""
    bad = np.zeros(len(frame), dtype=bool)
    if "time" in frame.fields:
        bad |= np.asarray(frame.fields["time"].is_valid())
    tagsets = frame.tagsets
    dictionary = tagsets.dictionary if isinstance(tagsets, pa.DictionaryArray) else tagsets
    if pc.any(pc.match_substring_regex(dictionary, r"(^|,)time=")).as_py():
        bad |= np.asarray(pc.match_substring_regex(tagsets.cast(pa.string()), r"(^|,)time="))
    if not bad.any():
        return frame
    _report(frame, bad, '"time" is reserved: it cannot be a field or tag key', errors)
    return frame.take(pa.array(np.flatnonzero(~bad)))


def _apply_retention(bucket: Bucket, frame: Frame, now: int, errors: list[PointError]) -> Frame:
    if not bucket.retention_seconds:
        return frame
    cutoff = now - bucket.retention_seconds * 1_000_000_000
    old = np.asarray(frame.time.to_numpy(zero_copy_only=False) < cutoff)
    if not old.any():
        return frame
    _report(frame, old, f'point is older than bucket "{bucket.name}" retention period', errors)
    return frame.take(pa.array(np.flatnonzero(~old)))


def _report(frame: Frame, rows: np.ndarray, reason: str, errors: list[PointError]) -> None:
    for row in np.flatnonzero(rows):
        line = None if frame.lines is None else frame.lines[int(row)].as_py()
        errors.append(PointError(line, reason))


def _reduce(fn: str, values: np.ndarray) -> float | int | None:
    if fn == "count":
        return len(values)
    if not len(values):
        return None
    reducers: dict[str, Callable[[np.ndarray], float]] = {
        "sum": lambda v: math.fsum(v.tolist()),
        "mean": lambda v: float(np.mean(v)),
        "min": lambda v: float(np.min(v)),
        "max": lambda v: float(np.max(v)),
    }
    return reducers[fn](values)
