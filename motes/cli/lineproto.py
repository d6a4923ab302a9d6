"""Line protocol on the client side: escaping, timestamps, counting fields.

    escape_measurement("cpu load")      == "cpu\\ load"
    escape_key("room=1, east")          == "room\\=1\\,\\ east"     # tag keys/values, field keys
    quote_string('say "hi"')            == '"say \\"hi\\""'
    rfc3339_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    count_fields(b'env,device=d1 t=1,h=2 10') == 2

A backslash is escaped too: the server reads a backslash followed by any character as
that character, so a value ending in a backslash would otherwise swallow the separator.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

PRECISION_NS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_BACKSLASH, _SPACE, _COMMA, _QUOTE = ord("\\"), ord(" "), ord(","), ord('"')


def _check_no_newline(text: str) -> None:
    # Line protocol has no escape for a line break: a record must stay on one line.
    if "\n" in text or "\r" in text:
        raise ValueError(f"line breaks are not allowed in line protocol: {text!r}")


def escape_measurement(name: str) -> str:
    """A measurement name as written in line protocol (commas and spaces escaped)."""
    _check_no_newline(name)
    if name.startswith("#"):
        # The line would read as a comment and be skipped silently.
        raise ValueError(f"measurement {name!r} may not start with '#'")
    return name.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_key(text: str) -> str:
    """A tag key, tag value or field key as written in line protocol."""
    _check_no_newline(text)
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def quote_string(value: str) -> str:
    """A string field value: double-quoted, with quotes and backslashes escaped."""
    _check_no_newline(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (digits past 9 are dropped)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zone = match.group(7) or "", match.group(8)
    # datetime keeps only microseconds, so whole seconds go through it and the fraction
    # is added as an integer: nanosecond timestamps survive exactly.
    moment = datetime(year, month, day, hour, minute, second, tzinfo=_zone(zone))
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return seconds * 10**9 + int(frac[:9].ljust(9, "0"))


def _zone(text: str) -> timezone:
    if text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def count_fields(line: bytes) -> int:
    """Field values on one line-protocol line: what Motes counts as points."""
    i, end = _skip_series(line), len(line)
    count, in_string = 1, False
    while i < end:
        ch = line[i]
        if ch == _BACKSLASH:
            i += 2
            continue
        if ch == _QUOTE:
            in_string = not in_string
        elif not in_string and ch == _COMMA:
            count += 1
        elif not in_string and ch == _SPACE:
            break
        i += 1
    return count


def _skip_series(line: bytes) -> int:
    """Index just past the space that ends ``measurement,tags``."""
    i = 0
    while i < len(line):
        if line[i] == _BACKSLASH:
            i += 2
        elif line[i] == _SPACE:
            return i + 1
        else:
            i += 1
    return i
