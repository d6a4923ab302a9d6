"""InfluxDB-style durations, as used for bucket retention.

    parse_duration("30d")     == 30 * 86_400 * 10**9    # nanoseconds
    parse_duration("1h30m")   == 5_400 * 10**9
    parse_duration("0")       == 0                      # 0 means "keep forever"
    format_duration(parse_duration("720h")) == "30d"
    format_duration(0) == "infinite"

Units: ns, us (or µs), ms, s, m, h, d, w. Months and years are not accepted because
their length varies, as in InfluxDB.
"""

from __future__ import annotations

import re

import click

_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3_600 * 10**9,
    "d": 86_400 * 10**9,
    "w": 7 * 86_400 * 10**9,
}
# Longer units first so that "ms" is not read as "m" followed by a stray "s".
_PART = re.compile(r"(\d+)(ns|us|µs|ms|s|m|h|d|w)")
_WHOLE = re.compile(rf"(?:{_PART.pattern})+")
# Units used when formatting, largest first; weeks are left out because "30d" reads better.
_FORMAT_UNITS = ("d", "h", "m", "s", "ms", "us", "ns")


def parse_duration(text: str) -> int:
    """Nanoseconds in ``text``; raises ValueError for anything that is not a duration."""
    text = text.strip()
    if text.isdigit() and int(text) == 0:
        return 0
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ns, us, ms, s, m, h, d, w), "
            "e.g. 30d, 720h or 1h30m; 0 means forever"
        )
    return sum(int(n) * _UNIT_NS[unit] for n, unit in _PART.findall(text))


def format_duration(ns: int) -> str:
    """Compact form of a duration, largest units first: ``"1d12h"``; 0 is ``"infinite"``."""
    if ns == 0:
        return "infinite"
    parts: list[str] = []
    for unit in _FORMAT_UNITS:
        count, ns = divmod(ns, _UNIT_NS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_retention(value: object) -> str:
    """Display a retention as the server reports it: a duration string or seconds."""
    if value is None:
        return "infinite"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(int(value * 10**9))
    text = str(value)
    try:
        return format_duration(parse_duration(text))
    except ValueError:
        # A form this client does not know (a newer server?): show it as given.
        return text


def duration_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click option callback: checks a duration and passes its text on unchanged."""
    try:
        parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value.strip()
