"""CSV rows to line protocol, done client-side by ``motes write``.

    conv = CsvConverter(["time", "device", "temp", "ok"],
                        CsvOptions(measurement="env", tag_columns=("device",)))
    conv.convert(["2026-01-01T00:00:00Z", "d1", "21.5", "true"])
    # -> b'env,device=d1 temp=21.5,ok=true 1767225600000000000'

Columns: ``time`` (RFC 3339, or an integer in the write precision; empty: the server
stamps the point), ``measurement`` (or ``--measurement`` for rows without one), the
``--tag-column`` columns as tags, and every other non-empty cell as a field: numbers are
floats (integers for ``--integer-column``), true/false are booleans, anything else is a
string. A row that cannot be converted raises :class:`RowError`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from motes.cli.lineproto import (
    PRECISION_NS,
    escape_key,
    escape_measurement,
    quote_string,
    rfc3339_ns,
)

TIME_COLUMN = "time"
MEASUREMENT_COLUMN = "measurement"

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_BOOLEANS = {"true": "true", "false": "false"}


class RowError(ValueError):
    """A CSV row that cannot become a line-protocol line; the message says why."""


class HeaderError(ValueError):
    """The header row does not fit the options (missing or duplicate columns)."""


@dataclass(frozen=True)
class CsvOptions:
    measurement: str | None = None
    tag_columns: tuple[str, ...] = ()
    integer_columns: tuple[str, ...] = ()
    precision: str = "ns"


def parse_row(text: str) -> list[str]:
    """Cells of one CSV record (which may span lines inside quotes)."""
    return next(csv.reader(io.StringIO(text, newline="")), [])


def _escaped_name(name: str) -> str:
    try:
        return escape_key(name)
    except ValueError as exc:
        raise HeaderError(str(exc)) from exc


class CsvConverter:
    """Converts rows under one header; built once per file."""

    def __init__(self, header: Sequence[str], options: CsvOptions) -> None:
        self.header = [name.strip() for name in header]
        self.options = options
        self._check_header()
        self._integers = set(options.integer_columns)
        # Worked out once per file rather than once per row.
        self._keys = {name: _escaped_name(name) for name in self.header}
        self._tags = sorted(set(options.tag_columns))  # sorted: the order the server stores
        roles = (TIME_COLUMN, MEASUREMENT_COLUMN, *self._tags)
        self._field_columns = [name for name in self.header if name not in roles]

    def _check_header(self) -> None:
        seen: set[str] = set()
        for position, name in enumerate(self.header, start=1):
            if not name:
                raise HeaderError(f"column {position} of the header has no name")
            if name in seen:
                raise HeaderError(f"column {name!r} appears twice in the header")
            seen.add(name)
        for option, names in (
            ("--tag-column", self.options.tag_columns),
            ("--integer-column", self.options.integer_columns),
        ):
            missing = [n for n in names if n not in seen]
            if missing:
                raise HeaderError(f"{option} {', '.join(missing)}: no such column in the header")
        if MEASUREMENT_COLUMN not in seen and not self.options.measurement:
            raise HeaderError("no 'measurement' column: pass --measurement NAME")

    def convert(self, row: Sequence[str]) -> bytes:
        """The line-protocol line for one row; raises RowError."""
        if len(row) != len(self.header):
            raise RowError(f"expected {len(self.header)} columns, found {len(row)}")
        cells = dict(zip(self.header, row, strict=True))
        try:
            line = self._series(cells) + " " + self._fields(cells) + self._time(cells)
        except ValueError as exc:
            raise RowError(str(exc)) from exc
        return line.encode()

    def _series(self, cells: dict[str, str]) -> str:
        measurement = cells.get(MEASUREMENT_COLUMN, "").strip() or self.options.measurement
        if not measurement:
            raise RowError("no measurement: the 'measurement' cell is empty")
        parts = [escape_measurement(measurement)]
        parts += [
            f"{self._keys[k]}={escape_key(cells[k].strip())}"
            for k in self._tags
            if cells[k].strip()
        ]
        return ",".join(parts)

    def _fields(self, cells: dict[str, str]) -> str:
        fields = [
            f"{self._keys[name]}={self._value(name, cells[name])}"
            for name in self._field_columns
            if cells[name].strip()
        ]
        if not fields:
            raise RowError("no field values in the row")
        return ",".join(fields)

    def _value(self, name: str, text: str) -> str:
        bare = text.strip()
        if name in self._integers:
            if not _INTEGER.fullmatch(bare):
                raise RowError(f"column {name!r}: {text!r} is not an integer")
            return f"{int(bare)}i"
        if _NUMBER.fullmatch(bare):
            number = float(bare)
            if not math.isfinite(number):
                raise RowError(f"column {name!r}: {text!r} is out of the float range")
            # repr keeps every digit of the double and always reads back as a float.
            return repr(number)
        if bare.lower() in _BOOLEANS:
            return _BOOLEANS[bare.lower()]
        return quote_string(text)

    def _time(self, cells: dict[str, str]) -> str:
        text = cells.get(TIME_COLUMN, "").strip()
        if not text:
            return ""
        if _INTEGER.fullmatch(text):
            return f" {int(text)}"
        try:
            ns = rfc3339_ns(text)
        except ValueError:
            raise RowError(
                f"time {text!r} is neither RFC 3339 nor an integer in the precision"
            ) from None
        # Floor division: a coarser --precision truncates, as storing at that precision means.
        return f" {ns // PRECISION_NS[self.options.precision]}"
