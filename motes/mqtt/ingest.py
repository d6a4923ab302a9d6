"""MQTT publishes into the telemetry pipeline, batched per event-loop turn.

    ingest = Ingest(telemetry)
    outcome = await ingest.submit(bucket, "d1", payload, "text/plain", extra_tags=None)

Everything submitted during one turn of the event loop is decoded together (one decode per
device and format for line protocol, whose payloads concatenate) and handed to the
group-commit writer as one write per bucket; each submitter's future resolves once that
write is durable. A full write queue does not drop anything: the batch waits and retries,
and the connections, whose acknowledgements wait with it, stop being read.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from motes.registry.models import Bucket
from motes.telemetry import codecs
from motes.telemetry.codecs import lineprotocol
from motes.telemetry.models import Decoded, Overloaded, PointError, TelemetryError
from motes.telemetry.service import TelemetryService
from motes.telemetry.store.protocol import WriteOutcome

log = logging.getLogger("motes.mqtt")

# in-loop decoding keeps small messages cheap; a turn with more bytes than this decodes in
# a worker thread so one big batch does not stall every other connection
INLINE_DECODE_BYTES = 256 * 1024
# writes of ours the writer may hold at once (one committing, one waiting): what comes
# meanwhile waits here and goes in as one batch, so a slow commit makes the next batch
# bigger instead of queueing many small ones that each cost a decode and a commit
MAX_WRITES_IN_FLIGHT = 1
FLUSH_BYTES = 4 * 1024 * 1024  # ... unless this much is waiting


@dataclass
class Outcome:
    written: int
    errors: list[PointError]
    attributes: dict[str, object] | None = None
    failure: str | None = None  # nothing stored: the store failed

    @property
    def rejected(self) -> bool:
        return self.failure is not None or (not self.written and bool(self.errors))


#: the outcome of most publishes (every point stored, no device record): shared, not built
STORED = Outcome(1, [])
Callback = Callable[[Outcome], None]


@dataclass(slots=True)
class _Item:
    device: str | None
    payload: bytes
    content_type: str
    extra: dict[str, str] | None
    measurement: str
    callback: Callback
    decoded: Decoded | None = None
    points: int | None = None  # stored points, when its frames went in with others'


@dataclass
class _Batch:
    bucket: Bucket
    items: list[_Item] = field(default_factory=list)


class Ingest:
    def __init__(self, telemetry: TelemetryService, retry_seconds: float = 0.05) -> None:
        self._telemetry = telemetry
        self._pending: dict[str, _Batch] = {}
        self._scheduled = False
        self._retry = retry_seconds
        self._tasks: set[asyncio.Future[None]] = set()
        self._in_flight = 0  # writes submitted to the writer, not yet durable
        self._waiting_bytes = 0  # payload bytes in _pending

    def submit(
        self,
        bucket: Bucket,
        device: str | None,
        payload: bytes,
        content_type: str,
        callback: Callback,
        extra: dict[str, str] | None = None,
        measurement: str = "telemetry",
    ) -> None:
        """Queue a payload; ``callback(outcome)`` runs on the event loop once it is durable
        (or refused). No future per message: at tens of thousands a second they cost."""
        batch = self._pending.get(bucket.id)
        if batch is None:
            batch = self._pending[bucket.id] = _Batch(bucket)
        batch.items.append(_Item(device, payload, content_type, extra, measurement, callback))
        self._waiting_bytes += len(payload)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def store(
        self,
        bucket: Bucket,
        device: str | None,
        payload: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
        measurement: str = "telemetry",
    ) -> asyncio.Future[Outcome]:
        """:meth:`submit` for coroutines: a future of the outcome."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.submit(bucket, device, payload, content_type, future.set_result, extra, measurement)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight >= MAX_WRITES_IN_FLIGHT and self._waiting_bytes < FLUSH_BYTES:
            return  # the next write to become durable flushes (_written)
        pending, self._pending = self._pending, {}
        self._waiting_bytes = 0
        size = sum(len(i.payload) for b in pending.values() for i in b.items)
        if size > INLINE_DECODE_BYTES:
            task = asyncio.ensure_future(self._decode_in_thread(list(pending.values())))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        for batch in pending.values():
            self._decode(batch)
            self._write(batch)

    async def _decode_in_thread(self, batches: list[_Batch]) -> None:
        def decode_all() -> None:
            for batch in batches:
                self._decode(batch)

        await asyncio.to_thread(decode_all)
        for batch in batches:
            self._write(batch)

    # -- decode ---------------------------------------------------------------------------

    def _decode(self, batch: _Batch) -> None:
        """One line-protocol decode for every device's messages of the turn (each point
        still gets its own message's device tag, each error stays with its message)."""
        lines = [
            i for i in batch.items if codecs.is_line_protocol(i.content_type) and i.extra is None
        ]
        for item in batch.items:
            if item.extra is not None or not codecs.is_line_protocol(item.content_type):
                item.decoded = _decode_one(item)
        if len(lines) == 1:
            lines[0].decoded = _decode_one(lines[0])
        elif lines:
            try:
                decoded, errors = lineprotocol.decode_batch(
                    [i.payload for i in lines], [i.device for i in lines]
                )
            except Exception:  # a codec bug must not take the broker down: one by one
                log.exception("batch decoding of MQTT payloads failed")
                for item in lines:
                    item.decoded = _decode_one(item)
                return
            lines[0].decoded = Decoded(frames=decoded.frames)
            for n, item in enumerate(lines):
                if errors[n]:
                    frames = item.decoded.frames if item.decoded else []
                    item.decoded = Decoded(frames=frames, errors=errors[n])
                    item.points = _lines(item.payload) - len(errors[n])  # its good lines
                elif n:
                    item.decoded = Decoded()

    # -- write ----------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        frames = [f for i in batch.items if i.decoded for f in i.decoded.frames]
        if not frames:
            self._resolve(batch, None, None)
            return
        try:
            pending = self._telemetry.submit(batch.bucket, Decoded(frames=frames))
        except Overloaded:
            asyncio.get_running_loop().call_later(self._retry, self._write, batch)
            return
        except TelemetryError as exc:
            self._resolve(batch, None, str(exc))
            return
        if pending.future is None:
            self._resolve(batch, None, None, pending.errors)
            return
        self._in_flight += 1
        wrapped = asyncio.wrap_future(pending.future)
        wrapped.add_done_callback(lambda f: self._written(batch, f, pending.errors))

    def _written(
        self, batch: _Batch, future: asyncio.Future[WriteOutcome], errors: list[PointError]
    ) -> None:
        self._in_flight -= 1
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        exc = future.exception()
        if exc is not None:
            log.error("MQTT telemetry write failed: %s", exc)
            self._resolve(batch, None, f"the store failed: {exc}")
            return
        outcome = future.result()
        self._resolve(batch, outcome, None, errors + outcome.errors)

    def _resolve(
        self,
        batch: _Batch,
        written: WriteOutcome | None,
        failure: str | None,
        batch_errors: list[PointError] | None = None,
    ) -> None:
        shared = batch_errors or []  # errors of the write itself: reported with the first
        for n, item in enumerate(batch.items):
            decoded = item.decoded
            outcome: Outcome
            if failure is None and (n or not shared) and decoded is not None:
                if not decoded.errors and decoded.attributes is None:
                    outcome = STORED
                else:
                    errors = list(decoded.errors)
                    points = decoded.point_count if item.points is None else item.points
                    outcome = Outcome(points, errors, decoded.attributes)
            else:
                decoded = decoded or Decoded()
                errors = list(decoded.errors) + (shared if n == 0 else [])
                points = decoded.point_count if failure is None else 0
                outcome = Outcome(points, errors, decoded.attributes, failure)
            try:
                item.callback(outcome)
            except Exception:  # one broken callback must not keep the others waiting
                log.exception("an MQTT publish's completion failed")


def split_run(payloads: list[bytes], outcome: Outcome) -> list[Outcome]:
    """The outcome of payloads stored as one body (joined by newlines), per payload: each
    with the errors of its own lines, numbered within it. An error of the whole body (no
    line) is every payload's."""
    if outcome.failure is not None:
        return [Outcome(0, [], None, outcome.failure) for _ in payloads]
    firsts = list(accumulate([p.count(b"\n") + 1 for p in payloads[:-1]], initial=1))
    each: list[list[PointError]] = [[] for _ in payloads]
    for error in outcome.errors:
        if error.line is None:
            for errors in each:
                errors.append(error)
            continue
        n = bisect_right(firsts, error.line) - 1
        each[n].append(PointError(error.line - firsts[n] + 1, error.message))
    return [
        Outcome(max(0, _lines(payload) - len(errors)), errors) if errors else STORED
        for payload, errors in zip(payloads, each, strict=True)
    ]


def _lines(payload: bytes) -> int:
    return sum(1 for line in payload.split(b"\n") if line.strip())


def _decode_one(item: _Item) -> Decoded:
    try:
        decoded = codecs.decode(
            item.content_type, item.payload, device=item.device, measurement=item.measurement
        )
    except codecs.UnsupportedMediaType as exc:
        return Decoded(errors=[PointError(None, str(exc))])
    except Exception as exc:  # a codec bug must not take the connection down
        log.exception("decoding an MQTT payload failed")
        return Decoded(errors=[PointError(None, f"payload could not be decoded: {exc}")])
    if not codecs.is_line_protocol(item.content_type):
        for frame in decoded.frames:
            frame.coerce_numbers = True
    if item.extra:
        decoded.add_tags(item.extra)
    return decoded
