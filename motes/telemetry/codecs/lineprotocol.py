"""InfluxDB line protocol -> frames, vectorised.

Usage::

    decoded = decode(b"env,device=d1 temperature=21.5,count=3i 1700000000000000000")
    decoded.frames[0].fields["temperature"]  # <pyarrow.DoubleArray> [21.5]

The syntax is InfluxDB 2's: ``measurement[,tag=value...] field=value[,...] [timestamp]``.

- ``\\,`` ``\\=`` ``\\ `` and ``\\\\`` are escapes in measurements, tag keys and values and
  field keys; ``\\"`` and ``\\\\`` in string field values; any other backslash is literal.
- Field values: floats (``1``, ``-1.5e3``; ``inf``/``nan`` rejected), integers ``12i``,
  unsigned ``12u``, booleans ``t T true True TRUE f F false False FALSE``, strings
  ``"..."`` (one line: an unterminated quote is an error).
- Timestamps are integers in ``precision`` units; a point without one gets a null time.
- Leading spaces/tabs, blank lines and ``#`` comment lines are skipped, ``\\r\\n`` accepted.
- Tag and field keys must not start with ``_`` (reserved, as in InfluxDB); duplicate tag
  keys are an error, duplicate field keys in a line: the last one wins.
- A field's type is the type of its first value in the body; later lines giving it another
  type are rejected. Lines are checked in syntax first, so a line rejected for its
  syntax does not decide a type.
- When ``device`` is given every point gets the tag ``device=<device>`` and a point tagged
  with another device is rejected.

A bad line becomes a ``PointError(line, message)`` and the other lines are still decoded,
like InfluxDB's partial writes. Two decoders share one output: :func:`decode_reference`
parses line by line in Python (clear, precise, ~0.2M points/s); :func:`decode` sends the
lines it can prove simple through pyarrow.compute (GIL released, several M points/s) and
the rest through the reference parser, then both go through the same assembly, so they
return identical results for any input (tested by a differential property test).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.codecs import columns as col
from motes.telemetry.models import (
    DEVICE_TAG,
    PRECISION_NS,
    Decoded,
    DecodeError,
    PointError,
    format_tagset,
)

__all__ = ["decode", "decode_reference", "parse_series_key", "precision_factor"]

# Below this many lines the fixed cost of the Arrow calls outweighs their speed.
FAST_PATH_MIN_LINES = 32
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

Line = tuple[str, str, int | None, dict[str, tuple[int, object]]]


def decode(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode a line-protocol body; bad lines become ``Decoded.errors``."""
    factor = precision_factor(precision)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return decode_reference(body, precision, device=device)  # rare: a broken client
    if text.count("\n") < FAST_PATH_MIN_LINES:
        return decode_reference(body, precision, device=device)
    return _decode_fast(text, factor, device)


def decode_reference(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode line by line in Python: the specification :func:`decode` must match."""
    factor = precision_factor(precision)
    lines = enumerate(body.split(b"\n"), 1)
    points, errors = _reference_points(lines, factor, device)
    return _assemble([points], errors)


def precision_factor(precision: str) -> int:
    """Nanoseconds per timestamp unit: ``precision_factor("ms") == 1_000_000``."""
    try:
        return PRECISION_NS[precision]
    except KeyError:
        raise DecodeError(f'unknown precision "{precision}" (use ns, us, ms or s)') from None


def _assemble(parts: list[col.Points], errors: list[PointError]) -> Decoded:
    points = col.concat(parts)
    groups = col.field_groups(points)
    points, conflicts = col.first_kind_wins(points, groups)
    if conflicts:
        groups = col.field_groups(points)
        errors = sorted([*errors, *conflicts], key=lambda e: e.line or 0)
    return Decoded(frames=col.to_frames(points, groups), errors=errors)


# -- series keys (shared by both paths) -------------------------------------------------------

_KEY_ESCAPE = re.compile(r"\\([,= \\])")
_SERIES_CACHE: dict[tuple[str, str | None], tuple[str, str] | str] = {}
_SERIES_CACHE_SIZE = 100_000


def parse_series_key(key: str, device: str | None = None) -> tuple[str, str] | str:
    """``"m,b=2,a=1"`` -> ``("m", "a=1,b=2")`` (measurement, canonical tag set), or an error.

    Results are cached: a body names the same few series on every line.
    """
    cache_key = (key, device)
    found = _SERIES_CACHE.get(cache_key)
    if found is None:
        if len(_SERIES_CACHE) >= _SERIES_CACHE_SIZE:
            _SERIES_CACHE.clear()
        found = _SERIES_CACHE[cache_key] = _parse_series_key(key, device)
    return found


def _parse_series_key(key: str, device: str | None) -> tuple[str, str] | str:
    measurement, *pairs = _split_unescaped(key, ",")
    if not measurement:
        return "missing measurement"
    tags: dict[str, str] = {}
    for pair in pairs:
        parts = _split_unescaped(pair, "=")
        if len(parts) != 2:
            return f'invalid tag "{pair}" (expected key=value)'
        name, value = _unescape(parts[0]), _unescape(parts[1])
        problem = _tag_problem(name, value, tags)
        if problem:
            return problem
        tags[name] = value
    if device is not None and tags.setdefault(DEVICE_TAG, device) != device:
        return f'tag {DEVICE_TAG}="{tags[DEVICE_TAG]}" does not match device "{device}"'
    return _unescape(measurement), format_tagset(tags)


def _tag_problem(name: str, value: str, seen: dict[str, str]) -> str | None:
    if not name:
        return "missing tag key"
    if name.startswith("_"):
        return f'tag key "{name}" is reserved (starts with "_")'
    if not value:
        return f'missing value for tag "{name}"'
    if name in seen:
        return f'duplicate tag "{name}"'
    return None


def _split_unescaped(text: str, sep: str) -> list[str]:
    if "\\" not in text:
        return text.split(sep)
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    return _KEY_ESCAPE.sub(r"\1", text) if "\\" in text else text


# -- reference parser ------------------------------------------------------------------------

_SERIES = re.compile(r"(?:[^ \\]|\\.)*\\?", re.S)
_FIELD_KEY = re.compile(r"(?:[^ ,=\\]|\\.)*\\?", re.S)
_BARE_VALUE = re.compile(r"(?:[^ ,\\]|\\.)*\\?", re.S)
_STRING_VALUE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_STRING_ESCAPE = re.compile(r'\\(["\\])')
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")
_BOOLEANS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True,
             "f": False, "F": False, "false": False, "False": False, "FALSE": False}  # fmt: skip


def _reference_points(
    lines: Iterable[tuple[int, bytes | str]], factor: int, device: str | None
) -> tuple[col.Points, list[PointError]]:
    builder = col.PointsBuilder()
    errors = []
    for number, raw in lines:
        try:
            text = raw if isinstance(raw, str) else raw.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(PointError(number, "invalid UTF-8"))
            continue
        parsed = parse_line(text, factor, device)
        if isinstance(parsed, str):
            errors.append(PointError(number, parsed))
        elif parsed is not None:
            builder.add(number, *parsed)
    return builder.build(), errors


def parse_line(text: str, factor: int = 1, device: str | None = None) -> Line | str | None:
    """One line -> (measurement, tag set, time ns, fields), an error message, or None
    for a blank or comment line."""
    text = text.removesuffix("\r")
    start = len(text) - len(text.lstrip(" \t"))
    if start == len(text) or text[start] == "#":
        return None
    match = _SERIES.match(text, start)
    series = parse_series_key(match.group(), device)  # type: ignore[union-attr]
    if isinstance(series, str):
        return series
    i = _skip_spaces(text, match.end())  # type: ignore[union-attr]
    if i == len(text):
        return "missing field set"
    fields = _parse_fields(text, i)
    if isinstance(fields, str):
        return fields
    time = _parse_time(text[fields[1] :].strip(" "), factor)
    if isinstance(time, str):
        return time
    return series[0], series[1], time, fields[0]


def _skip_spaces(text: str, i: int) -> int:
    return len(text) - len(text[i:].lstrip(" "))


def _parse_fields(text: str, i: int) -> tuple[dict[str, tuple[int, object]], int] | str:
    fields: dict[str, tuple[int, object]] = {}
    while True:
        key_match = _FIELD_KEY.match(text, i)
        raw_key, i = key_match.group(), key_match.end()  # type: ignore[union-attr]
        key = _unescape(raw_key)
        if not key:
            return "missing field key"
        if i == len(text) or text[i] != "=":
            return f'missing "=" after field key "{key}"'
        if key.startswith("_"):
            return f'field key "{key}" is reserved (starts with "_")'
        value = _parse_value(text, i + 1, key)
        if isinstance(value, str):
            return value
        fields.pop(key, None)  # the last duplicate wins, in its own position
        fields[key], i = value[0], value[1]
        if i == len(text) or text[i] == " ":
            return fields, i
        i += 1  # a comma


def _parse_value(text: str, i: int, key: str) -> tuple[tuple[int, object], int] | str:
    if text.startswith('"', i):
        match = _STRING_VALUE.match(text, i)
        if not match:
            return f'unterminated string value for field "{key}"'
        end = match.end()
        if end < len(text) and text[end] not in " ,":
            return f'unexpected text after string value for field "{key}"'
        return (col.STRING, _STRING_ESCAPE.sub(r"\1", match.group(1))), end
    match = _BARE_VALUE.match(text, i)
    raw = match.group()  # type: ignore[union-attr]
    if not raw:
        return f'missing value for field "{key}"'
    value = _bare_value(raw, key)
    return value if isinstance(value, str) else (value, match.end())  # type: ignore[union-attr]


def _bare_value(raw: str, key: str) -> tuple[int, object] | str:
    last = raw[-1]
    if last == "i" and _INTEGER.fullmatch(raw, 0, len(raw) - 1):
        return _ranged(col.INTEGER, raw[:-1], INT64_MIN, INT64_MAX, raw, key)
    if last == "u" and _INTEGER.fullmatch(raw, 0, len(raw) - 1) and raw[0] != "-":
        return _ranged(col.UNSIGNED, raw[:-1], 0, UINT64_MAX, raw, key)
    if raw in _BOOLEANS:
        return col.BOOLEAN, _BOOLEANS[raw]
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if number in (float("inf"), float("-inf")):
            return f'float value "{raw}" for field "{key}" is out of range'
        return col.FLOAT, number
    return f'invalid field value "{raw}" for field "{key}"'


def _ranged(
    kind: int, digits: str, low: int, high: int, raw: str, key: str
) -> tuple[int, object] | str:
    number = _bounded_int(digits)
    if number is None or not low <= number <= high:
        name = "integer" if kind == col.INTEGER else "unsigned"
        return f'{name} value "{raw}" for field "{key}" is out of range'
    return kind, number


def _bounded_int(digits: str) -> int | None:
    """int() of ASCII digits, or None when too long to matter (int() caps at 4300 digits)."""
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("-").lstrip("0") or "0"
    return sign * int(digits) if len(digits) <= 40 else None


def _parse_time(text: str, factor: int) -> int | str | None:
    if not text:
        return None
    if not _INTEGER.fullmatch(text):
        return f'invalid timestamp "{text}"'
    stamp = _bounded_int(text)
    if stamp is None or not INT64_MIN <= stamp * factor <= INT64_MAX:
        return f'timestamp "{text}" is out of range'
    return stamp * factor


# -- fast path --------------------------------------------------------------------------------
# A line is "simple" when this RE2 pattern proves its syntax: no escapes, no strings, single
# spaces, every field value well formed. Only range checks, series keys and duplicate field
# keys remain, and lines failing them go to the reference parser too.

_KEY = r'[^\s,="\\_][^\s,="\\]*'
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|-?\d+i|\d+u"
_VALUE = rf"(?:{_NUMBER}|[tT]|true|True|TRUE|[fF]|false|False|FALSE)"
_SIMPLE_LINE = rf"^[^\s\\#][^\s\\]* {_KEY}={_VALUE}(?:,{_KEY}={_VALUE})*(?: -?\d+)?$"
# Kind of a simple value from its last byte: i, u, a boolean letter, else a float.
_KIND_BY_LAST = np.full(256, col.FLOAT, np.int64)
_KIND_BY_LAST[[ord("i")]] = col.INTEGER
_KIND_BY_LAST[[ord("u")]] = col.UNSIGNED
_KIND_BY_LAST[[ord(c) for c in "tTeEfF"]] = col.BOOLEAN
_MAX_DIGITS = {col.INTEGER: 18, col.UNSIGNED: 19}  # always in range, so cast cannot fail

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def _decode_fast(text: str, factor: int, device: str | None) -> Decoded:
    lines = pc.split_pattern(pa.array([text]), "\n").flatten()
    if "\r" in text:
        lines = pc.replace_substring_regex(lines, "\r$", "", max_replacements=1)
    simple = pc.match_substring_regex(lines, _SIMPLE_LINE).to_numpy(zero_copy_only=False)
    numbers = np.flatnonzero(simple) + 1
    simple_lines = lines.filter(pa.array(simple))
    points, fallback = _fast_points(simple_lines, numbers, factor, device)
    if fallback.any():
        points = points.take_rows(~fallback)
    others = np.sort(np.r_[np.flatnonzero(~simple), numbers[fallback] - 1])
    if not len(others):
        return _assemble([points], [])
    leftovers = zip((others + 1).tolist(), lines.take(pa.array(others)).to_pylist(), strict=True)
    reference, errors = _reference_points(leftovers, factor, device)
    return _assemble([points, reference], errors)


def _fast_points(
    lines: pa.StringArray, numbers: Ints, factor: int, device: str | None
) -> tuple[col.Points, Bools]:
    """Points of simple lines, and the rows the reference parser must redo."""
    parts = pc.split_pattern(lines, " ")
    starts = _offsets(parts)[:-1]
    flat = parts.values
    fallback = np.zeros(len(lines), bool)
    series, series_names = _series(flat.take(pa.array(starts)), device, fallback)
    has_time = np.diff(_offsets(parts)) == 3
    time = _times(flat.take(pa.array(starts[has_time] + 2)), factor, has_time, fallback)
    row, key, keys, pos, values = _field_pairs(flat.take(pa.array(starts + 1)))
    kind, slot, typed = _typed_values(values, row, fallback)
    _mark_duplicate_keys(row, key, len(keys), fallback)
    points = col.Points(numbers, series, series_names, time, has_time, row, key, keys, pos,
                        kind, slot, typed)  # fmt: skip
    return points, fallback


def _offsets(array: pa.Array) -> Ints:
    """The offsets buffer of a list or string array, as int64."""
    raw = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    return raw.astype(np.int64)


def _series(
    keys: pa.StringArray, device: str | None, fallback: Bools
) -> tuple[Ints, list[tuple[str, str]]]:
    encoded = pc.dictionary_encode(keys)
    names: dict[tuple[str, str], int] = {}
    ids = np.full(len(encoded.dictionary), -1, np.int64)
    for i, key in enumerate(encoded.dictionary.to_pylist()):
        parsed = parse_series_key(key, device)
        if not isinstance(parsed, str):
            ids[i] = names.setdefault(parsed, len(names))
    series = ids[encoded.indices.to_numpy()]
    fallback |= series < 0
    return np.maximum(series, 0), list(names)


def _times(stamps: pa.StringArray, factor: int, has_time: Bools, fallback: Bools) -> Ints:
    time = np.zeros(len(has_time), np.int64)
    if not len(stamps):
        return time
    lengths = np.diff(_offsets(stamps))
    negative = _bytes(stamps)[_offsets(stamps)[:-1]] == ord("-")
    # Nanosecond stamps have 19 digits: those up to INT64_MAX are as safe as shorter ones.
    below_max = pc.less_equal(stamps, str(INT64_MAX)).to_numpy(zero_copy_only=False)
    short = (lengths - negative <= 18) | ((lengths == 19) & ~negative & below_max)
    safe = pc.if_else(pa.array(short), stamps, "0")
    values = pc.cast(safe, pa.int64()).to_numpy()
    limit = (2**63 - 1) // factor
    ok = short & (values <= limit) & (values >= -limit)
    where = np.flatnonzero(has_time)
    fallback[where[~ok]] = True
    time[where] = np.where(ok, values, 0) * factor
    return time


def _bytes(strings: pa.StringArray) -> npt.NDArray[np.uint8]:
    return np.frombuffer(strings.buffers()[2], np.uint8)


def _field_pairs(field_sets: pa.StringArray) -> tuple[Ints, Ints, list[str], Ints, pa.StringArray]:
    """Split ``k=v,k2=v2`` field sets: (row, key code, keys, position, value) per pair."""
    pairs = pc.split_pattern(field_sets, ",")
    counts = np.diff(_offsets(pairs))
    row = np.repeat(np.arange(len(field_sets)), counts)
    pos = np.arange(len(row)) - np.repeat(_offsets(pairs)[:-1], counts)
    halves = pc.split_pattern(pairs.values, "=").values  # key, value, key, value...
    keys = pc.dictionary_encode(halves.take(pa.array(np.arange(0, len(halves), 2))))
    values = halves.take(pa.array(np.arange(1, len(halves), 2)))
    key = keys.indices.to_numpy().astype(np.int64)
    return row, key, keys.dictionary.to_pylist(), pos, values


def _typed_values(
    values: pa.StringArray, row: Ints, fallback: Bools
) -> tuple[Ints, Ints, list[pa.Array]]:
    """Kind and slot per value, and one typed array per kind."""
    ends = _offsets(values)
    data = _bytes(values)
    kind = _KIND_BY_LAST[data[ends[1:] - 1]]
    slot = np.zeros(len(kind), np.int64)
    typed = []
    for k, arrow_type in enumerate(col.KIND_TYPES):
        mask = kind == k
        slot[mask] = np.arange(np.count_nonzero(mask))
        if k == col.BOOLEAN:
            first = data[ends[:-1][mask]]
            typed.append(pa.array((first == ord("t")) | (first == ord("T"))))
        elif k == col.FLOAT:
            floats = pc.cast(values.filter(pa.array(mask)), pa.float64())
            fallback[row[mask][np.isinf(floats.to_numpy())]] = True
            typed.append(floats)
        elif k in _MAX_DIGITS:
            typed.append(_cast_integers(values, mask, ends, data, row, k, fallback))
        else:
            typed.append(pa.array([], arrow_type))
    return kind, slot, typed


def _cast_integers(
    values: pa.StringArray,
    mask: Bools,
    ends: Ints,
    data: npt.NDArray[np.uint8],
    row: Ints,
    kind: int,
    fallback: Bools,
) -> pa.Array:
    digits = np.diff(ends)[mask] - 1 - (data[ends[:-1][mask]] == ord("-"))
    short = digits <= _MAX_DIGITS[kind]
    fallback[row[mask][~short]] = True
    stripped = pc.utf8_slice_codeunits(values.filter(pa.array(mask)), 0, -1)
    return pc.cast(pc.if_else(pa.array(short), stripped, "0"), col.KIND_TYPES[kind])


def _mark_duplicate_keys(row: Ints, key: Ints, nkeys: int, fallback: Bools) -> None:
    # Pairs are in row order, so after a stable sort by key equal (key, row) pairs touch.
    codes = key.astype(np.uint16) if nkeys <= 65536 else key
    order = np.argsort(codes, kind="stable")
    same = (key[order][1:] == key[order][:-1]) & (row[order][1:] == row[order][:-1])
    fallback[row[order][1:][same]] = True
