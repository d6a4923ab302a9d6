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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from motes.registry.models import Bucket
from motes.telemetry import codecs
from motes.telemetry.codecs import lineprotocol
from motes.telemetry.models import Decoded, Frame, Overloaded, PointError, TelemetryError
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


@dataclass(slots=True, eq=False)  # items compare by identity
class _Item:
    device: str | None
    payload: bytes
    content_type: str
    extra: dict[str, str] | None
    measurement: str
    callback: Callback
    parts: list[bytes] | None = None  # line protocol: the bodies payload joins
    decoded: Decoded | None = None
    first: int = 1  # its first line number in the batch (see Ingest._decode)
    rows: int = 0  # points (lines, records) it has in the frames


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
        parts: list[bytes] | None = None,
    ) -> None:
        """Queue a payload; ``callback(outcome)`` runs on the event loop once it is durable
        (or refused). No future per message: at tens of thousands a second they cost.

        ``parts``: line-protocol ``payload`` is these bodies joined by newlines (a run of
        MQTT publishes), each decoded as a body of its own (field types are settled per
        body), with line numbers counted through the joined payload."""
        batch = self._pending.get(bucket.id)
        if batch is None:
            batch = self._pending[bucket.id] = _Batch(bucket)
        item = _Item(device, payload, content_type, extra, measurement, callback, parts)
        batch.items.append(item)
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

        self._in_flight += 1  # later batches wait: they must not be written before these
        try:
            await asyncio.to_thread(decode_all)
            for batch in batches:
                self._write(batch)
        finally:
            self._in_flight -= 1

    # -- decode ---------------------------------------------------------------------------

    def _decode(self, batch: _Batch) -> None:
        """One line-protocol decode for every device's messages of the turn (each point
        still gets its own message's device tag, each error stays with its message).

        Every item gets its own range of line numbers in the batch (``_Item.first``): line
        protocol as its bodies joined, anything else after it. So an error of a later stage
        (retention, schema, a type conflict in the store) names a line that says whose
        point it was."""
        lines: list[_Item] = []
        others: list[_Item] = []
        for item in batch.items:
            plain = item.extra is None and codecs.is_line_protocol(item.content_type)
            (lines if plain else others).append(item)
        after = 0  # the last line number given out
        if len(lines) == 1 and lines[0].parts is None:
            item = lines[0]
            item.decoded = _decode_one(item)
            item.first, item.rows = 1, _rows(item.decoded.frames)
            after = item.payload.count(b"\n") + 1
        elif lines:
            after = self._decode_lines(lines)
        for item in others:
            item.decoded = _decode_one(item)
            item.first, item.rows = after + 1, _rows(item.decoded.frames)
            after += _renumber(item.decoded.frames, after)

    def _decode_lines(self, lines: list[_Item]) -> int:
        """Many line-protocol items (of one or more bodies each) in one decode; answers the
        last line number used."""
        bodies: list[bytes] = []
        devices: list[str | None] = []
        starts: list[int] = []  # each item's first body
        for item in lines:
            starts.append(len(bodies))
            parts = item.parts or [item.payload]
            bodies += parts
            devices += [item.device] * len(parts)
        firsts = lineprotocol.joined_firsts(bodies)
        try:
            decoded, errors = lineprotocol.decode_batch(bodies, devices, joined_lines=True)
        except Exception:  # a codec bug must not take the broker down: one by one
            log.exception("batch decoding of MQTT payloads failed")
            decoded, errors = Decoded(), [[] for _ in bodies]
            for item, start in zip(lines, starts, strict=True):
                one = _decode_one(item)
                _renumber(one.frames, int(firsts[start]) - 1)
                decoded.frames += one.frames
                errors[start] = one.errors
        rows = np.zeros(len(bodies), np.int64)
        for frame in decoded.frames:
            if frame.lines is not None and len(frame):
                owner = np.searchsorted(firsts, frame.lines.to_numpy(), "right") - 1
                rows += np.bincount(owner, minlength=len(bodies))
        ends = [*starts[1:], len(bodies)]
        item_rows = np.add.reduceat(rows, starts).tolist()
        item_firsts = firsts[starts].tolist()
        for item, start, end, first, count in zip(
            lines, starts, ends, item_firsts, item_rows, strict=True
        ):
            item.first, item.rows = first, count
            own = errors[start]
            if item.parts is not None and any(errors[start:end]):  # within the item
                own = []
                for b in range(start, end):
                    shift = int(firsts[b]) - item.first  # a body refused whole: its line 1
                    own += [PointError((e.line or 1) + shift, e.message) for e in errors[b]]
            item.decoded = Decoded(errors=own)
        head = lines[0].decoded
        lines[0].decoded = Decoded(frames=decoded.frames, errors=head.errors if head else [])
        return int(firsts[-1]) + bodies[-1].count(b"\n")

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
        later = _by_item(batch.items, batch_errors or [])  # of the write, not the decode
        for item, own in zip(batch.items, later, strict=True):
            decoded = item.decoded or Decoded()
            outcome: Outcome
            if failure is None and not own and not decoded.errors and decoded.attributes is None:
                outcome = STORED
            elif failure is not None:
                outcome = Outcome(0, list(decoded.errors), decoded.attributes, failure)
            else:
                whole = any(e.line is None for e in own)  # nothing of it was written
                stored = 0 if whole else max(0, item.rows - len(own))
                outcome = Outcome(stored, [*decoded.errors, *own], decoded.attributes)
            try:
                item.callback(outcome)
            except Exception:  # one broken callback must not keep the others waiting
                log.exception("an MQTT publish's completion failed")


def _by_item(items: list[_Item], errors: list[PointError]) -> list[list[PointError]]:
    """A write's errors, each with the item whose line it names (renumbered within it);
    one without a line (the whole write was refused) is every item's."""
    each: list[list[PointError]] = [[] for _ in items]
    if not errors:
        return each
    order = sorted(range(len(items)), key=lambda n: items[n].first)
    firsts = [items[n].first for n in order]
    for error in errors:
        if error.line is None:
            for own in each:
                own.append(error)
            continue
        at = order[max(0, bisect_right(firsts, error.line) - 1)]
        each[at].append(PointError(error.line - items[at].first + 1, error.message))
    return each


def _rows(frames: list[Frame]) -> int:
    return sum(len(frame) for frame in frames)


def _renumber(frames: list[Frame], offset: int) -> int:
    """Shift the frames' line numbers by ``offset``; answers how many lines they span."""
    span = 1
    for frame in frames:
        if frame.lines is None or not len(frame):
            continue
        span = max(span, int(pc.max(frame.lines).as_py()))
        if offset:
            frame.lines = pc.add(frame.lines, pa.scalar(offset, frame.lines.type))
    return span


def split_run(payloads: list[bytes], outcome: Outcome) -> list[Outcome]:
    """The outcome of payloads stored as one item (numbered as if joined by newlines), per
    payload: each with the errors of its own lines, numbered within it. An error of the
    whole item (no line) is every payload's."""
    if outcome.failure is not None:
        return [Outcome(0, [], None, outcome.failure) for _ in payloads]
    firsts = lineprotocol.joined_firsts(payloads).tolist()
    each: list[list[PointError]] = [[] for _ in payloads]
    for error in outcome.errors:
        if error.line is None:
            for errors in each:
                errors.append(error)
            continue
        n = bisect_right(firsts, error.line) - 1
        each[n].append(PointError(error.line - firsts[n] + 1, error.message))
    whole = any(error.line is None for error in outcome.errors)
    return [
        Outcome(0 if whole else max(0, _lines(payload) - len(errors)), errors) if errors else STORED
        for payload, errors in zip(payloads, each, strict=True)
    ]


def _lines(payload: bytes) -> int:
    """Lines that hold a point (not blank, not a comment)."""
    return sum(1 for line in payload.split(b"\n") if (text := line.strip()) and text[:1] != b"#")


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
