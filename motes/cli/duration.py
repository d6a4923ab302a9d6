"""InfluxDB-style durations, as used for bucket retention (whole seconds).

    parse_duration("30d")    == 2_592_000      # seconds
    parse_duration("1h30m")  == 5_400
    parse_duration("0")      == 0              # 0 means "keep forever"
    format_duration(parse_duration("720h")) == "30d"
    format_duration(0) == "infinite"

Units: s, m, h, d, w — the ones the server accepts for retention. Months and years are
refused because their length varies, as in InfluxDB.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import click

_UNIT_SECONDS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"(?:\d+[wdhms])+")
# Weeks are left out when formatting: "30d" reads better than "4w2d".
_FORMAT_UNITS = ("d", "h", "m", "s")


def parse_duration(text: str) -> int:
    """Seconds in ``text``; raises ValueError for anything that is not a duration."""
    text = text.strip()
    if text.isdigit() and int(text) == 0:
        return 0
    if not _WHOLE.fullmatch(text):
        raise ValueError(
            f"invalid duration {text!r}: use numbers with units s, m, h, d or w "
            "(30d, 720h, 1h30m); 0 keeps data forever"
        )
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))


def format_duration(seconds: int) -> str:
    """Compact form, largest units first: ``format_duration(129_600) == "1d12h"``."""
    if seconds == 0:
        return "infinite"
    parts: list[str] = []
    for unit in _FORMAT_UNITS:
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_retention(bucket: Mapping[str, object]) -> str:
    """A bucket's retention for display, from ``retentionSeconds`` or ``retention``."""
    seconds = bucket.get("retentionSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        return format_duration(seconds)
    value = bucket.get("retention")
    if isinstance(value, int) and not isinstance(value, bool):
        return format_duration(value)
    text = "" if value is None else str(value)
    try:
        return format_duration(parse_duration(text))
    except ValueError:
        # "infinite", or a form this client does not know: show it as the server said it.
        return text or "infinite"


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click option callback: checks a duration and passes its text on unchanged."""
    if value is None:  # an option without a default, left out
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value.strip()
