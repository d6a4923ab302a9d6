"""Text output of the CLI: fixed-width tables.

print(format_table(["ID", "Name"], [["0a1", "telemetry"]]))
# ID   Name
# 0a1  telemetry

for block in format_query_tables(response["tables"]):
    print(block)        # "Table: measurement=env device=d1" + a fixed-width table

Any list of API objects, with its columns given as (header, key) pairs; a dotted key
reads a nested object, lists are joined with commas, objects shown as compact JSON:

print(format_records(devices, [("ID", "id"), ("Tags", "tags"), ("Org", "org.name")]))
print(format_records([device], DEVICE_COLUMNS, vertical=True))   # one "Field  Value" row each
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from motes.cli.duration import format_retention

BUCKET_COLUMNS = ["ID", "Name", "Retention", "Org"]
_GAP = "  "


def format_value(value: object) -> str:
    """A JSON value as a table cell: null is empty, booleans are lower case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; no trailing spaces."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len(cell))
    lines = [headers, *cells]
    return "\n".join(
        _GAP.join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


Columns = Sequence[tuple[str, str]]


def format_records(
    records: Sequence[Mapping[str, Any]], columns: Columns, *, vertical: bool = False
) -> str:
    """API objects as a table: a row per object, or with ``vertical`` a row per column."""
    if vertical:
        rows = [[header, _lookup(r, key)] for r in records for header, key in columns]
        return format_table(["Field", "Value"], rows)
    headers = [header for header, _ in columns]
    return format_table(headers, [[_lookup(r, key) for _, key in columns] for r in records])


def _lookup(record: Mapping[str, Any], key: str) -> object:
    value: object = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def bucket_row(bucket: Mapping[str, Any]) -> list[object]:
    return [
        bucket.get("id", ""),
        bucket.get("name", ""),
        format_retention(bucket),
        bucket.get("org", ""),
    ]


def format_buckets(buckets: Sequence[Mapping[str, Any]]) -> str:
    return format_table(BUCKET_COLUMNS, [bucket_row(b) for b in buckets])


def table_title(table: Mapping[str, Any]) -> str:
    """``Table: measurement=env device=d1`` (tags sorted by key)."""
    tags = table.get("tags") or {}
    parts = [f"measurement={table.get('measurement', '')}"]
    parts += [f"{k}={format_value(tags[k])}" for k in sorted(tags)]
    return "Table: " + " ".join(parts)


def format_query_tables(tables: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """One text block per result table: its title line, then its rows."""
    for table in tables:
        columns = [str(c) for c in table.get("columns") or []]
        values = table.get("values") or []
        yield table_title(table) + "\n" + format_table(columns, values)
