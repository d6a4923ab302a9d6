"""JSON and MessagePack telemetry: seed-000 device batches and arrays of points.

Usage::

    decode_json(body, device="sample")             # POST /api/v1/devices/sample/telemetry
    decode_msgpack(body, device=None, measurement="env", precision="s")

Two shapes, told apart by their form (the same rules hold for MessagePack):

- **Device batch** (seed 000)::

      {"deviceinfo": {"deviceid": "sample", "fw_ver": "12345.009", "batt_lvl": 78},
       "tsdata": [{"timestamp": 1582046738255, "humidity": 75.0, "motion": false}, ...]}

  Needs ``device`` (from the URL path). Each ``tsdata`` record is one point of
  ``measurement`` tagged ``device=<device>``; ``timestamp`` (required, an integer in
  ``precision`` units: ms by default) is its time; every other key is a field. ``deviceinfo``
  becomes ``Decoded.attributes`` (a device-record update); its ``deviceid``, when present,
  must be the device of the path.
- **Array of points** (also accepted as a single point object)::

      [{"measurement": "env", "tags": {"device": "d1"}, "fields": {"temp": 21.5},
        "time": 1700000000000}]

  ``measurement`` defaults to the argument, ``time`` is an integer in ``precision`` units or
  an RFC 3339 string, absent means "when received". With ``device`` set every point is
  tagged with it and a point naming another device is rejected.

Field values: booleans, integers (int64), floats (finite), strings; nulls are skipped;
objects, arrays and anything else reject the point. Within one body a field that has both
integer and float values is a float field; other mixes reject the points of the minority
type. Rejected points are ``PointError(record number, message)``, 1-based in the array.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import Reject
from motes.telemetry.models import (
    DEVICE_TAG,
    Decoded,
    DecodeError,
    Frame,
    PointError,
    format_tagset,
)

__all__ = ["decode_document", "decode_json", "decode_msgpack"]

BATCH_KEYS = frozenset({"deviceinfo", "tsdata"})
POINT_KEYS = frozenset({"measurement", "tags", "fields", "time"})
Fields = dict[str, tuple[int, object]]


def decode_json(
    body: bytes, *, device: str | None = None, measurement: str = "telemetry", precision: str = "ms"
) -> Decoded:
    """Decode a JSON device batch or array of points."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    return decode_document(doc, device=device, measurement=measurement, precision=precision)


def decode_msgpack(
    body: bytes, *, device: str | None = None, measurement: str = "telemetry", precision: str = "ms"
) -> Decoded:
    """Decode a MessagePack device batch or array of points (same shapes as JSON)."""
    limit = len(body)  # nothing declared longer than the body itself is ever allocated
    try:
        doc = msgpack.unpackb(
            body, raw=False, strict_map_key=False, max_str_len=limit, max_bin_len=limit,
            max_array_len=limit, max_map_len=limit, max_ext_len=limit,
        )  # fmt: skip
    except Exception as exc:  # ValueError, StackError, ExtraData, UnicodeDecodeError...
        raise DecodeError(f"invalid MessagePack: {exc or type(exc).__name__}") from None
    return decode_document(doc, device=device, measurement=measurement, precision=precision)


def decode_document(
    doc: object, *, device: str | None, measurement: str = "telemetry", precision: str = "ms"
) -> Decoded:
    """Decode an already parsed document of either shape."""
    factor = col.precision_factor(precision)
    if isinstance(doc, dict) and "fields" in doc:
        doc = [doc]
    if isinstance(doc, list):
        return _records(doc, lambda record: _point(record, device, measurement, factor))
    if isinstance(doc, dict) and doc and doc.keys() <= BATCH_KEYS:
        return _device_batch(doc, device, measurement, factor)
    raise DecodeError(
        'expected a device batch {"deviceinfo": {...}, "tsdata": [...]} or an array of points'
        ' [{"measurement": ..., "tags": {...}, "fields": {...}, "time": ...}]'
    )


def _records(records: list[Any], parse: Any) -> Decoded:
    """Decode record by record: ``parse(record)`` -> builder.add() arguments or Reject."""
    builder = col.PointsBuilder()
    errors = []
    for number, record in enumerate(records, 1):
        try:
            builder.add(number, *parse(record))
        except Reject as exc:
            errors.append(PointError(number, str(exc)))
    return col.assemble(builder.build(), errors, col.majority_kind_wins, coerce_numbers=True)


# -- device batches (seed 000) ----------------------------------------------------------------


def _device_batch(
    doc: dict[Any, Any], device: str | None, measurement: str, factor: int
) -> Decoded:
    if device is None:
        raise DecodeError(
            "a device batch needs its device in the path: POST /api/v1/devices/{device}/telemetry"
        )
    attributes = _attributes(doc.get("deviceinfo"), device)
    rows = doc.get("tsdata", [])
    if not isinstance(rows, list):
        raise DecodeError('"tsdata" must be an array of records')
    tagset = format_tagset({DEVICE_TAG: device})
    decoded = fast_batch(rows, measurement, tagset, factor) or _records(
        rows, lambda row: (measurement, tagset, *_batch_row(row, factor))
    )
    decoded.attributes = attributes
    return decoded


def _attributes(info: object, device: str) -> dict[str, object] | None:
    if info is None:
        return None
    if not isinstance(info, dict):
        raise DecodeError('"deviceinfo" must be an object')
    deviceid = info.get("deviceid", device)
    if deviceid != device:
        raise DecodeError(
            f"deviceinfo.deviceid '{deviceid}' does not match device '{device}' in the path"
        )
    try:  # the registry keeps it as JSON: refuse what JSON cannot hold
        orjson.dumps(info)
    except TypeError as exc:
        raise DecodeError(f'"deviceinfo" cannot be stored: {exc}') from None
    return info


def _batch_row(row: object, factor: int) -> tuple[int, Fields]:
    if type(row) is not dict:
        raise Reject("a tsdata record must be an object")
    stamp = row.get("timestamp")
    if type(stamp) is not int:
        raise Reject('"timestamp" must be an integer' if "timestamp" in row else 'no "timestamp"')
    time = col.scale_time(stamp, factor)
    if time is None:
        raise Reject(f'"timestamp" {stamp} is out of range')
    fields = _fields(row, skip="timestamp")
    if not fields:
        raise Reject('no fields besides "timestamp"')
    return time, fields


def fast_batch(rows: list[Any], measurement: str, tagset: str, factor: int) -> Decoded | None:
    """Column-at-a-time decoding of a clean batch: what the per-record path would return,
    or None when some record needs the per-record rules (errors, mixed types...)."""
    if not rows:
        return Decoded()
    if not all(type(row) is dict for row in rows):
        return None
    names = set().union(*rows)
    time = _fast_times([row.get("timestamp") for row in rows], factor)
    if time is None or not all(type(n) is str and _key_problem(n) is None for n in names):
        return None
    fields = {}
    present = np.zeros(len(rows), bool)
    for name in sorted(names - {"timestamp"}):
        column = _fast_column([row.get(name) for row in rows])
        if column is None:
            return None
        if column.null_count < len(column):
            fields[name] = column
            present |= column.is_valid().to_numpy(zero_copy_only=False)
    if not present.all():
        return None
    indices = pa.array(np.zeros(len(rows), np.int32))
    frame = Frame(
        measurement=measurement,
        tagsets=pa.DictionaryArray.from_arrays(indices, pa.array([tagset])),
        time=pa.array(time),
        fields=fields,
        lines=pa.array(np.arange(1, len(rows) + 1, dtype=np.int32)),
        coerce_numbers=True,
    )
    return Decoded(frames=[frame])


def _fast_times(stamps: list[Any], factor: int) -> npt.NDArray[np.int64] | None:
    if set(map(type, stamps)) != {int}:
        return None
    try:
        time = np.array(stamps, np.int64)
    except OverflowError:
        return None
    limit = col.INT64_MAX // factor
    return time * factor if ((time <= limit) & (time >= -limit)).all() else None


def _fast_column(values: list[Any]) -> pa.Array | None:
    kinds = set(map(type, values)) - {type(None)}
    if kinds in ({float}, {int, float}):
        if not all(-(2**53) <= v <= 2**53 for v in values if type(v) is int):
            return None  # promoting huge integers: leave the rounding to the slow path
        column = pa.array(values, pa.float64())
        return column if pc.all(pc.is_finite(column)).as_py() is not False else None
    try:
        return pa.array(values, _FAST_TYPES[frozenset(kinds)])
    except (KeyError, OverflowError, pa.ArrowInvalid):
        return None


_FAST_TYPES = {
    frozenset(): pa.null(),
    frozenset({bool}): pa.bool_(),
    frozenset({int}): pa.int64(),
    frozenset({str}): pa.string(),
}


# -- arrays of points -------------------------------------------------------------------------


def _point(
    record: object, device: str | None, measurement: str, factor: int
) -> tuple[str, str, int | None, Fields]:
    if type(record) is not dict:
        raise Reject("a point must be an object")
    for key in record:
        if key not in POINT_KEYS:
            raise Reject(f'unknown key "{key}" (a point has measurement, tags, fields and time)')
    name = record.get("measurement")
    name = measurement if name is None else name
    if type(name) is not str or not name:
        raise Reject('"measurement" must be a non-empty string')
    tagset = _tagset(record.get("tags"), device)
    time = _time(record.get("time"), factor)
    fields = record.get("fields")
    if type(fields) is not dict:
        raise Reject('"fields" must be an object of field values')
    values = _fields(fields)
    if not values:
        raise Reject("no fields (all null)" if fields else "no fields")
    return name, tagset, time, values


def _tagset(tags: object, device: str | None) -> str:
    if tags is None:
        tags = {}
    if type(tags) is not dict:
        raise Reject('"tags" must be an object of strings')
    for key, value in tags.items():
        problem = _key_problem(key, "tag")
        if problem:
            raise Reject(problem)
        if type(value) is not str or not value:
            raise Reject(f'tag "{key}" must be a non-empty string')
    if device is not None and tags.get(DEVICE_TAG, device) != device:
        raise Reject(f'tag {DEVICE_TAG}="{tags[DEVICE_TAG]}" does not match device "{device}"')
    return format_tagset(tags if device is None else {**tags, DEVICE_TAG: device})


def _time(value: object, factor: int) -> int | None:
    if value is None:
        return None
    if type(value) is str:
        time = col.parse_rfc3339(value)
        if time is None:
            raise Reject(f'"time" "{value}" is not an RFC 3339 time (or is out of range)')
        return time
    if type(value) is int:
        time = col.scale_time(value, factor)
    elif isinstance(value, msgpack.Timestamp):
        time = col.scale_time(value.to_unix_nano(), 1)
    else:
        raise Reject('"time" must be an integer or an RFC 3339 string')
    if time is None:
        raise Reject(f'"time" {value} is out of range')
    return time


# -- field values -----------------------------------------------------------------------------


def _fields(values: dict[Any, Any], skip: str | None = None) -> Fields:
    fields = {}
    for key, value in values.items():
        if value is None or key == skip:
            continue
        problem = _key_problem(key)
        if problem:
            raise Reject(problem)
        fields[key] = _field_value(key, value)
    return fields


def _key_problem(key: object, kind: str = "field") -> str | None:
    if type(key) is not str or not key:
        return f"{kind} names must be non-empty strings"
    if key.startswith("_"):
        return f'{kind} name "{key}" is reserved (starts with "_")'
    return None


def _field_value(key: str, value: object) -> tuple[int, object]:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise Reject(f'field "{key}" is not a finite number')
        return col.FLOAT, value
    if kind is int:
        if not col.INT64_MIN <= value <= col.INT64_MAX:  # type: ignore[operator]
            raise Reject(f'integer value {value} for field "{key}" is out of range')
        return col.INTEGER, value
    if kind is bool:
        return col.BOOLEAN, value
    if kind is str:
        return col.STRING, value
    names: dict[type, str] = {dict: "an object", list: "an array"}
    what = names.get(kind, f"of type {kind.__name__}")
    raise Reject(f'field "{key}" is {what}: only numbers, strings and booleans can be stored')
