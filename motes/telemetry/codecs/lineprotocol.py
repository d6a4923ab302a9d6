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
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import INT64_MAX, INT64_MIN, Bools, Ints, Reject
from motes.telemetry.models import DEVICE_TAG, Decoded, DecodeError, PointError, format_tagset

__all__ = ["FAST_PATH_MIN_BYTES", "decode", "decode_reference", "parse_line", "parse_series_key"]

# Below this size (~40 lines) the fixed cost of the Arrow calls outweighs their speed.
FAST_PATH_MIN_BYTES = 4096
MAX_BODY_BYTES = 2**30  # Arrow string offsets are int32; servers cap bodies far lower anyway
UINT64_MAX = 2**64 - 1

Fields = dict[str, tuple[int, object]]
Line = tuple[str, str, int | None, Fields]


def decode(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode a line-protocol body whose timestamps are in ``precision`` units (ns, us,
    ms, s); bad lines become ``Decoded.errors``, the others frames."""
    factor = col.precision_factor(precision)
    if len(body) > MAX_BODY_BYTES:
        raise DecodeError(f"body of {len(body)} bytes: split it into bodies under 1 GiB")
    if len(body) < FAST_PATH_MIN_BYTES:
        return decode_reference(body, precision, device=device)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return decode_reference(body, precision, device=device)  # rare: a broken client
    return _decode_fast(text, factor, device)


def decode_reference(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode line by line in Python: the specification :func:`decode` must match."""
    factor = col.precision_factor(precision)
    points, errors = _reference_points(enumerate(body.split(b"\n"), 1), factor, device)
    return _assemble([points], errors)


def _assemble(parts: list[col.Points], errors: list[PointError]) -> Decoded:
    """Both paths end here, so they cannot differ in how they build frames."""
    return col.assemble(col.concat(parts), errors, col.first_kind_wins)


# -- series keys (shared by both paths) -------------------------------------------------------

_KEY_ESCAPE = re.compile(r"\\([,= \\])")
_SERIES_CACHE: dict[tuple[str, str | None], tuple[str, str] | str] = {}
_SERIES_CACHE_SIZE, _CACHED_KEY_LENGTH = 100_000, 512  # at most ~50 MB


def parse_series_key(key: str, device: str | None = None) -> tuple[str, str]:
    """``"m,b=2,a=1"`` -> ``("m", "a=1,b=2")``: measurement and canonical tag set.

    Raises :class:`Reject` for a bad key. Results are cached: a body names the same few
    series on every line.
    """
    cache_key = (key, device)
    found = _SERIES_CACHE.get(cache_key)
    if found is None:
        try:
            found = _parse_series_key(key, device)
        except Reject as exc:
            found = str(exc)
        if len(key) <= _CACHED_KEY_LENGTH:
            if len(_SERIES_CACHE) >= _SERIES_CACHE_SIZE:
                _SERIES_CACHE.clear()
            _SERIES_CACHE[cache_key] = found
    if isinstance(found, str):
        raise Reject(found)
    return found


def _parse_series_key(key: str, device: str | None) -> tuple[str, str]:
    measurement, *pairs = _split_unescaped(key, ",")
    if not measurement:
        raise Reject("missing measurement")
    tags: dict[str, str] = {}
    for pair in pairs:
        parts = _split_unescaped(pair, "=")
        if len(parts) != 2:
            raise Reject(f'invalid tag "{pair}" (expected key=value)')
        name, value = _unescape(parts[0]), _unescape(parts[1])
        if not name:
            raise Reject("missing tag key")
        if name.startswith("_"):
            raise Reject(f'tag key "{name}" is reserved (starts with "_")')
        if not value:
            raise Reject(f'missing value for tag "{name}"')
        if name in tags:
            raise Reject(f'duplicate tag "{name}"')
        tags[name] = value
    if device is not None and tags.setdefault(DEVICE_TAG, device) != device:
        raise Reject(f'tag {DEVICE_TAG}="{tags[DEVICE_TAG]}" does not match device "{device}"')
    return _unescape(measurement), format_tagset(tags)


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
# Each pattern consumes up to the next unescaped separator; a backslash always takes the
# character after it (as InfluxDB scans), even when the pair is not a known escape.

_SERIES = re.compile(r"(?:[^ \\]|\\.)*\\?", re.S)
_FIELD_KEY = re.compile(r"(?:[^ ,=\\]|\\.)*\\?", re.S)
_BARE_VALUE = re.compile(r"(?:[^ ,\\]|\\.)*\\?", re.S)
_STRING_VALUE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_STRING_ESCAPE = re.compile(r'\\(["\\])')
# Unambiguous on purpose: no two ways to match a digit run, so no quadratic backtracking.
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")
_BOOLEANS = dict.fromkeys(("t", "T", "true", "True", "TRUE"), True) | dict.fromkeys(
    ("f", "F", "false", "False", "FALSE"), False
)


def _reference_points(
    lines: Iterable[tuple[int, bytes | str]], factor: int, device: str | None
) -> tuple[col.Points, list[PointError]]:
    builder = col.PointsBuilder()
    errors = []
    for number, raw in lines:
        try:
            line = parse_line(raw, factor, device)
        except Reject as exc:
            errors.append(PointError(number, str(exc)))
            continue
        if line is not None:
            builder.add(number, *line)
    return builder.build(), errors


def parse_line(raw: str | bytes, factor: int = 1, device: str | None = None) -> Line | None:
    """One line -> (measurement, tag set, time ns, fields); None for a blank or comment
    line; :class:`Reject` naming the problem for a bad one."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("invalid UTF-8") from None
    text = text.removesuffix("\r")
    start = len(text) - len(text.lstrip(" \t"))
    if start == len(text) or text[start] == "#":
        return None
    key = _match(_SERIES, text, start)
    measurement, tagset = parse_series_key(key, device)
    i = len(text) - len(text[start + len(key) :].lstrip(" "))
    if i == len(text):
        raise Reject("missing field set")
    fields, i = _parse_fields(text, i)
    return measurement, tagset, _parse_time(text[i:].strip(" "), factor), fields


def _match(pattern: re.Pattern[str], text: str, start: int) -> str:
    return pattern.match(text, start).group()  # type: ignore[union-attr]  # always matches


def _parse_fields(text: str, i: int) -> tuple[Fields, int]:
    """The field set starting at ``i``, and where it ends."""
    fields: Fields = {}
    while True:
        raw_key = _match(_FIELD_KEY, text, i)
        key, i = _unescape(raw_key), i + len(raw_key)
        if not key:
            raise Reject("missing field key")
        if i == len(text) or text[i] != "=":
            raise Reject(f'missing "=" after field key "{key}"')
        if key.startswith("_"):
            raise Reject(f'field key "{key}" is reserved (starts with "_")')
        value, i = _parse_value(text, i + 1, key)
        fields.pop(key, None)  # the last duplicate wins, in its own position
        fields[key] = value
        if i == len(text) or text[i] == " ":
            return fields, i
        i += 1  # past a comma


def _parse_value(text: str, i: int, key: str) -> tuple[tuple[int, object], int]:
    if text.startswith('"', i):
        match = _STRING_VALUE.match(text, i)
        if not match:
            raise Reject(f'unterminated string value for field "{key}"')
        if match.end() < len(text) and text[match.end()] not in " ,":
            raise Reject(f'unexpected text after string value for field "{key}"')
        return (col.STRING, _STRING_ESCAPE.sub(r"\1", match.group(1))), match.end()
    raw = _match(_BARE_VALUE, text, i)
    if not raw:
        raise Reject(f'missing value for field "{key}"')
    return _bare_value(raw, key), i + len(raw)


def _bare_value(raw: str, key: str) -> tuple[int, object]:
    last = raw[-1]
    if last == "i" and _INTEGER.fullmatch(raw, 0, len(raw) - 1):
        return col.INTEGER, _ranged(raw, INT64_MIN, INT64_MAX, f'integer value "{raw}"', key)
    if last == "u" and _INTEGER.fullmatch(raw, 0, len(raw) - 1) and raw[0] != "-":
        return col.UNSIGNED, _ranged(raw, 0, UINT64_MAX, f'unsigned value "{raw}"', key)
    if raw in _BOOLEANS:
        return col.BOOLEAN, _BOOLEANS[raw]
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if number in (float("inf"), float("-inf")):
            raise Reject(f'float value "{raw}" for field "{key}" is out of range')
        return col.FLOAT, number
    raise Reject(f'invalid field value "{raw}" for field "{key}"')


def _ranged(raw: str, low: int, high: int, what: str, key: str) -> int:
    number = _small_int(raw[:-1])
    if number is None or not low <= number <= high:
        raise Reject(f'{what} for field "{key}" is out of range')
    return number


def _small_int(digits: str) -> int | None:
    """int() of optionally signed ASCII digits; None if too long to be in any range
    (int() refuses more than 4300 digits, and would be slow before that)."""
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("-").lstrip("0") or "0"
    return sign * int(digits) if len(digits) <= 40 else None


def _parse_time(text: str, factor: int) -> int | None:
    if not text:
        return None
    if not _INTEGER.fullmatch(text):
        raise Reject(f'invalid timestamp "{text}"')
    stamp = _small_int(text)
    time = None if stamp is None else col.scale_time(stamp, factor)
    if time is None:
        raise Reject(f'timestamp "{text}" is out of range')
    return time


# -- fast path --------------------------------------------------------------------------------
# A line is "simple" when this RE2 pattern proves its syntax: no escapes, no strings, single
# spaces, every field value well formed. What the pattern cannot check (series keys, value
# ranges, duplicate field keys) is checked on arrays, and lines failing it go to the
# reference parser too, which then names the problem.

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


def _decode_fast(text: str, factor: int, device: str | None) -> Decoded:
    """Simple lines as arrays, the others through the reference parser."""
    lines = stripped = pc.split_pattern(pa.array([text]), "\n").flatten()
    if "\r" in text:
        stripped = pc.replace_substring_regex(lines, "\r$", "", max_replacements=1)
    simple = pc.match_substring_regex(stripped, _SIMPLE_LINE).to_numpy(zero_copy_only=False)
    numbers = np.flatnonzero(simple) + 1
    simple_lines = stripped.filter(pa.array(simple))
    points, fallback = _fast_points(simple_lines, numbers, factor, device)
    if fallback.any():
        points = points.take_rows(~fallback)
    others = np.sort(np.concatenate([np.flatnonzero(~simple), numbers[fallback] - 1]))
    # The reference parser gets the lines as sent (it strips "\r" itself).
    if not len(others):
        return _assemble([points], [])
    leftovers = zip((others + 1).tolist(), lines.take(pa.array(others)).to_pylist(), strict=True)
    reference, errors = _reference_points(leftovers, factor, device)
    return _assemble([points, reference], errors)


def _fast_points(
    lines: pa.StringArray, numbers: Ints, factor: int, device: str | None
) -> tuple[col.Points, Bools]:
    """Points of simple lines, and the rows the reference parser must redo."""
    parts = pc.split_pattern(lines, " ")  # series key, field set[, timestamp]
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
    cache = _SERIES_CACHE
    for i, key in enumerate(encoded.dictionary.to_pylist()):
        found = cache.get((key, device))  # the common case, without a call per key
        if found is None or isinstance(found, str):
            try:
                found = parse_series_key(key, device)
            except Reject:
                continue  # bad keys stay -1: the reference parser says why
        ids[i] = names.setdefault(found, len(names))
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
    limit = INT64_MAX // factor
    ok = short & (values <= limit) & (values >= -limit)
    where = np.flatnonzero(has_time)
    fallback[where[~ok]] = True
    time[where] = np.where(ok, values, 0) * factor
    return time


def _bytes(strings: pa.StringArray) -> npt.NDArray[np.uint8]:
    return np.frombuffer(strings.buffers()[2], np.uint8)


@dataclass
class _Values:
    """Field values as slices of one buffer: value ``i`` is ``data[start[i]:end[i]]``."""

    tokens: pa.StringArray  # key, "=", value for each pair, over the same buffer
    start: Ints
    end: Ints
    data: npt.NDArray[np.uint8]

    def strings(self, mask: Bools) -> pa.StringArray:
        """The values marked in ``mask``, as strings."""
        return self.tokens.take(pa.array(np.flatnonzero(mask) * 3 + 2))


def _field_pairs(field_sets: pa.StringArray) -> tuple[Ints, Ints, list[str], Ints, _Values]:
    """Split ``k=v,k2=v2`` field sets: (row, key code, keys, position, values) per pair."""
    pairs = pc.split_pattern(field_sets, ",")
    counts = np.diff(_offsets(pairs))
    row = np.repeat(np.arange(len(field_sets)), counts)
    pos = np.arange(len(row)) - np.repeat(_offsets(pairs)[:-1], counts)
    flat = pairs.values
    bounds, data = _offsets(flat), _bytes(flat)
    # A simple pair holds exactly one "=" (the line pattern says so): the n-th "=" in the
    # buffer is the n-th pair's. Cutting there gives keys and values without copying.
    eq = np.flatnonzero(data[bounds[0] : bounds[-1]] == ord("=")) + bounds[0]
    cuts = np.empty(3 * len(eq) + 1, np.int32)
    cuts[0:-1:3], cuts[1:-1:3], cuts[2:-1:3], cuts[-1] = bounds[:-1], eq, eq + 1, bounds[-1]
    tokens = pa.StringArray.from_buffers(len(cuts) - 1, pa.py_buffer(cuts), flat.buffers()[2])
    keys = pc.dictionary_encode(tokens.take(pa.array(np.arange(0, len(cuts) - 1, 3))))
    key = keys.indices.to_numpy().astype(np.int64)
    values = _Values(tokens, eq + 1, bounds[1:], data)
    return row, key, keys.dictionary.to_pylist(), pos, values


def _typed_values(values: _Values, row: Ints, fallback: Bools) -> tuple[Ints, Ints, list[pa.Array]]:
    """Kind and slot per value, and one typed array per kind."""
    kind = _KIND_BY_LAST[values.data[values.end - 1]]
    slot = np.zeros(len(kind), np.int64)
    typed = []
    for k in range(len(col.KIND_TYPES)):
        mask = kind == k
        slot[mask] = np.arange(np.count_nonzero(mask))
        if k == col.BOOLEAN:
            first = values.data[values.start[mask]]
            typed.append(pa.array((first == ord("t")) | (first == ord("T"))))
        elif k == col.FLOAT:
            floats = pc.cast(values.strings(mask), pa.float64())
            fallback[row[mask][np.isinf(floats.to_numpy())]] = True  # overflow: "out of range"
            typed.append(floats)
        elif k in _MAX_DIGITS:
            typed.append(_cast_integers(values, mask, row, k, fallback))
        else:
            typed.append(col.EMPTY_VALUES[k])
    return kind, slot, typed


def _cast_integers(values: _Values, mask: Bools, row: Ints, kind: int, fallback: Bools) -> pa.Array:
    start, end = values.start[mask], values.end[mask]
    digits = end - start - 1 - (values.data[start] == ord("-"))
    short = digits <= _MAX_DIGITS[kind]
    fallback[row[mask][~short]] = True  # maybe out of range: the reference parser decides
    stripped = pc.utf8_slice_codeunits(values.strings(mask), 0, -1)
    return pc.cast(pc.if_else(pa.array(short), stripped, "0"), col.KIND_TYPES[kind])


def _mark_duplicate_keys(row: Ints, key: Ints, nkeys: int, fallback: Bools) -> None:
    # Pairs are in row order, so after a stable sort by key equal (key, row) pairs touch.
    codes = key.astype(np.uint16) if nkeys <= 65536 else key
    order = np.argsort(codes, kind="stable")
    same = (key[order][1:] == key[order][:-1]) & (row[order][1:] == row[order][:-1])
    fallback[row[order][1:][same]] = True
