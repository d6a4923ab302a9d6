"""Query-string vocabulary: times (absolute or relative), durations, tag filters, output times.

parse_time("-48h", now)            # now - 48 h, in ns
parse_time("2026-01-01T00:00:00Z") # RFC 3339
parse_time("1582046738255")        # integers are epoch milliseconds
parse_duration_ns("10m")           # 600_000_000_000
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from motes.telemetry.models import MAX_EVERY_NS, MIN_TIME_NS, QueryError

__all__ = ["MAX_EVERY_NS", "MAX_NS", "MIN_NS"]

_DURATION = re.compile(r"(\d+)(ns|us|µs|ms|s|m|h|d|w)")
_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}
EPOCHS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MAX_NS = 2**63 - 1
MIN_NS = MIN_TIME_NS  # the earliest time Motes stores
_INT = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts "²", which int() refuses


MAX_LIMIT = 2**31 - 1


def _clamp(ns: int) -> int:
    return max(MIN_NS, min(MAX_NS, ns))


def parse_duration_ns(text: str) -> int:
    s = text.strip()
    pos, total = 0, 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise QueryError(f'invalid duration "{text}": use e.g. 10s, 10m, 1h, 1d, 1h30m')
    return min(total, MAX_NS)


def parse_time(text: str, now: int) -> int:
    s = text.strip()
    if s == "now" or s == "now()":
        return now
    if s.startswith("-") and not _INT.fullmatch(s):
        return _clamp(now - parse_duration_ns(s[1:]))
    if _INT.fullmatch(s):
        return _clamp(int(s) * 1_000_000)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(
            f'invalid time "{text}": use RFC 3339, epoch milliseconds, "now" or e.g. -48h'
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    nanos = _fraction_ns(s)
    return _clamp(int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + nanos)


def _fraction_ns(s: str) -> int:
    m = re.search(r"\.(\d+)", s)
    if not m:
        return 0
    return int((m.group(1) + "000000000")[:9])


def parse_tags(values: list[str]) -> dict[str, list[str]]:
    """``tag=device:d1&tag=device:d2&tag=site:x`` -> {"device": ["d1", "d2"], "site": ["x"]}."""
    tags: dict[str, list[str]] = {}
    for item in values:
        key, sep, value = item.partition(":")
        if not sep:
            key, sep, value = item.partition("=")
        if not sep or not key:
            raise QueryError(f'invalid tag filter "{item}": use key:value')
        tags.setdefault(key, []).append(value)
    return tags


def format_time(ns: int, epoch: str | None) -> str | int:
    if epoch:
        return ns // EPOCHS[epoch]
    seconds, rem = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if rem:
        stamp += "." + f"{rem:09d}".rstrip("0")
    return stamp + "Z"


def format_times(ns: np.ndarray, epoch: str | None) -> list[str] | list[int]:
    """:func:`format_time` for a whole column at once (one precision for the column)."""
    if epoch:
        ints: list[int] = (ns // EPOCHS[epoch]).tolist()
        return ints
    unit: Literal["s", "ms", "us", "ns"] = "ns"
    for name, size in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)):
        if not (ns % size).any():
            unit = name  # type: ignore[assignment]
            break
    stamps: np.ndarray[Any, np.dtype[np.datetime64]] = ns.astype("datetime64[ns]")
    text = np.datetime_as_string(stamps, unit=unit)
    return [t + "Z" for t in text.tolist()]


def check_epoch(epoch: str | None) -> str | None:
    if epoch is not None and epoch not in EPOCHS:
        raise QueryError(f'epoch must be one of {", ".join(EPOCHS)}, got "{epoch}"')
    return epoch


def positive_int(name: str, text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not _INT.fullmatch(text) or not 0 < int(text) <= MAX_LIMIT:
        raise QueryError(f'{name} must be an integer from 1 to {MAX_LIMIT}, got "{text}"')
    return int(text)
