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

import functools
import re
from datetime import date

PRECISION_NS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9}

_EPOCH_DATE = date(1970, 1, 1)
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
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
    date, hour, minute, second, frac, zone = match.groups()
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} (time out of range)")
    seconds = _day_start(date) + int(hour) * 3600 + int(minute) * 60 + int(second)
    # Integer arithmetic throughout: nanosecond timestamps survive exactly.
    return (seconds - _zone_offset(zone)) * 10**9 + int((frac or "")[:9].ljust(9, "0"))


# Time series repeat their dates and zones: caching them makes CSV conversion much cheaper.
@functools.lru_cache(maxsize=4096)
def _day_start(text: str) -> int:
    """Seconds from the epoch to midnight of an ISO date (ValueError if there is no such day)."""
    return (date.fromisoformat(text) - _EPOCH_DATE).days * 86_400


@functools.lru_cache(maxsize=64)
def _zone_offset(text: str) -> int:
    if text in ("Z", "z"):
        return 0
    sign = -1 if text[0] == "-" else 1
    return sign * (int(text[1:3]) * 3600 + int(text[4:6]) * 60)


def count_fields(line: bytes) -> int:
    """Field values on one line-protocol line: what Motes counts as points."""
    line = line.lstrip()
    if b"\\" not in line and b'"' not in line:
        # The common line: no escapes, no strings; bytes methods beat a Python loop.
        parts = line.split(b" ", 2)
        return parts[1].count(b",") + 1 if len(parts) > 1 else 1
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
