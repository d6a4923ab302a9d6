"""Telemetry data model: columnar frames of points, field types, errors.

Every codec turns bytes into :class:`Frame` objects (one per measurement,
columnar, Arrow-backed); the write pipeline validates and stores them without
ever looping over points in Python.

Exceptions::

    TelemetryError
    ├── DecodeError            body cannot be decoded at all (400)
    ├── WriteRejected          some or all points were rejected (400, lists them)
    ├── UnknownBucket          (404)
    ├── UnknownMeasurement     (404)
    ├── Overloaded             write queue full (503 + Retry-After)
    ├── StoreUnavailable       the storage engine failed; nothing was acked (503 + Retry-After)
    └── QueryError             bad query parameters (400)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

FieldType = Literal["float", "integer", "unsigned", "boolean", "string"]
Precision = Literal["ns", "us", "ms", "s"]

FIELD_TYPES: tuple[FieldType, ...] = ("float", "integer", "unsigned", "boolean", "string")
ARROW_TYPES: dict[FieldType, pa.DataType] = {
    "float": pa.float64(),
    "integer": pa.int64(),
    "unsigned": pa.uint64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
}
PRECISION_NS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
DEVICE_TAG = "device"
#: Longest aggregate window a query may ask for.
MAX_EVERY_NS = 1000 * 86_400_000_000_000
#: Times Motes stores (about 1680-06 to 2262-04): int64 nanoseconds, less room for window
#: arithmetic (a window start is a time minus up to one window).
MIN_TIME_NS = -(2**63) + MAX_EVERY_NS
MAX_TIME_NS = 2**63 - 2


def field_type_of(arrow_type: pa.DataType) -> FieldType:
    """The Motes field type stored for an Arrow column type."""
    for name, typ in ARROW_TYPES.items():
        if typ == arrow_type:
            return name
    raise TypeError(f"no field type for arrow type {arrow_type}")


# -- tag sets ---------------------------------------------------------------------------------
# A series is (bucket, measurement, tag set). A tag set travels as one canonical string:
# keys sorted, each key and value escaped as in line protocol ("," "=" " " and "\" get a
# backslash), joined "k=v,k2=v2". Codecs dictionary-encode it so that tags are parsed once
# per distinct series, not once per point.


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def format_tagset(tags: Mapping[str, str]) -> str:
    """Canonical tag-set key: ``format_tagset({"b": "2", "a": "1"}) == "a=1,b=2"``."""
    return ",".join(f"{_escape(k)}={_escape(tags[k])}" for k in sorted(tags))


def parse_tagset(key: str) -> dict[str, str]:
    """Inverse of :func:`format_tagset`."""
    tags: dict[str, str] = {}
    if not key:
        return tags
    buf: list[str] = []
    pending_key: str | None = None
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key):
            buf.append(key[i + 1])
            i += 2
            continue
        if ch == "=" and pending_key is None:
            pending_key = "".join(buf)
            buf = []
        elif ch == ",":
            tags[pending_key or ""] = "".join(buf)
            pending_key, buf = None, []
        else:
            buf.append(ch)
        i += 1
    tags[pending_key or ""] = "".join(buf)
    return tags


# -- frames -----------------------------------------------------------------------------------


@dataclass
class Frame:
    """Points of one measurement, as columns.

    - ``tagsets``: one canonical tag-set string per row (see :func:`format_tagset`),
      ideally a ``pa.DictionaryArray`` so each distinct series is handled once;
    - ``time``: int64 nanoseconds since the epoch, null where the point carried none
      (the server stamps those with its receive time);
    - ``fields``: field name -> Arrow array of one of :data:`ARROW_TYPES`, null where a row
      has no value for that field; every row has at least one non-null field;
    - ``lines``: optional int32 source position per row (line or record number, 1-based)
      so later stages can name the offending input in errors.
    """

    measurement: str
    tagsets: pa.Array
    time: pa.Array
    fields: dict[str, pa.Array]
    lines: pa.Array | None = None
    #: JSON-family codecs set this: an integer literal may land in an existing float field
    #: (JSON writers print 75 for 75.0); line protocol keeps InfluxDB's strict typing.
    coerce_numbers: bool = False

    def __len__(self) -> int:
        return len(self.time)

    @property
    def point_count(self) -> int:
        """Field values in the frame: what Motes and its benchmarks count as points."""
        return sum(len(col) - col.null_count for col in self.fields.values())

    def field_types(self) -> dict[str, FieldType]:
        return {name: field_type_of(col.type) for name, col in self.fields.items()}

    def take(self, indices: pa.Array) -> Frame:
        """Rows at ``indices`` (fields that end up all-null are dropped)."""
        fields = {n: c.take(indices) for n, c in self.fields.items()}
        fields = {n: c for n, c in fields.items() if c.null_count < len(c)}
        return Frame(
            measurement=self.measurement,
            tagsets=self.tagsets.take(indices),
            time=self.time.take(indices),
            fields=fields,
            lines=None if self.lines is None else self.lines.take(indices),
            coerce_numbers=self.coerce_numbers,
        )


@dataclass(frozen=True)
class PointError:
    """One rejected input point: where it was (1-based line/record, if known) and why."""

    line: int | None
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"line": self.line, "message": self.message}


@dataclass
class Decoded:
    """What a codec made of a body: good frames, rejected points, optional device record.

    ``attributes`` carries a seed-000 ``deviceinfo`` object (fw_ver, batt_lvl, ...) when
    the body had one; it is a device-record update, not telemetry.
    """

    frames: list[Frame] = field(default_factory=list)
    errors: list[PointError] = field(default_factory=list)
    attributes: dict[str, object] | None = None

    @property
    def point_count(self) -> int:
        return sum(f.point_count for f in self.frames)

    def add_tags(self, extra: Mapping[str, str]) -> None:
        """Give every point these tags too (channel messages: channel, publisher, subtopic)."""
        for frame in self.frames:
            keys = (
                frame.tagsets
                if pa.types.is_dictionary(frame.tagsets.type)
                else frame.tagsets.dictionary_encode()
            )
            tagged = [
                format_tagset({**parse_tagset(k), **extra}) for k in keys.dictionary.to_pylist()
            ]
            frame.tagsets = pa.DictionaryArray.from_arrays(
                keys.indices, pa.array(tagged, pa.string())
            )


# -- errors -----------------------------------------------------------------------------------


class TelemetryError(Exception):
    """Base of every telemetry error."""


class DecodeError(TelemetryError):
    """The body cannot be decoded at all (not JSON, not CBOR, wrong shape...)."""

    def __init__(self, message: str, errors: Iterable[PointError] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)


class WriteRejected(TelemetryError):
    """Some points were rejected; the good ones (``written`` of them) are stored."""

    def __init__(self, message: str, errors: Iterable[PointError], written: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)
        self.written = written


class UnknownBucket(TelemetryError):
    pass


class UnknownMeasurement(TelemetryError):
    pass


class Overloaded(TelemetryError):
    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(TelemetryError):
    """The storage engine failed (disk full, I/O error...); nothing of the batch was acked."""

    retry_after = 5


class QueryError(TelemetryError):
    pass
