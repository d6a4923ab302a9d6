"""Line protocol, the reference way: one line at a time in Python.

The specification the vectorised path (:mod:`.lpfast`) must match, and the parser for the
lines it cannot prove simple (escapes, strings, errors). Also the series-key parsing and
the final assembly both paths share. See :mod:`.lineprotocol` for the syntax.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import INT64_MAX, INT64_MIN, Reject
from motes.telemetry.models import DEVICE_TAG, Decoded, PointError, format_tagset

UINT64_MAX = 2**64 - 1

Fields = dict[str, tuple[int, object]]
Line = tuple[str, str, int | None, Fields]


def assemble(parts: list[col.Points], errors: list[PointError]) -> Decoded:
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
    return _reference_points_each(((n, raw, device) for n, raw in lines), factor)


def _reference_points_each(
    lines: Iterable[tuple[int, bytes | str, str | None]], factor: int
) -> tuple[col.Points, list[PointError]]:
    """Like :func:`_reference_points`, each line with its own device."""
    builder = col.PointsBuilder()
    errors = []
    for number, raw, device in lines:
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
