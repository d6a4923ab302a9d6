"""Filling empty aggregate windows: ``null``, ``previous``, ``linear`` or a number.

    fill_windows(table, start, stop, every, "previous")

Windows are the multiples of ``every`` from the one holding ``start`` up to ``stop``;
a window with no points gets a row whose values follow the fill rule.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from motes.telemetry.models import QueryError

MAX_WINDOWS = 1_000_000


def fill_windows(table: pa.Table, start: int, stop: int, every: int, fill: str) -> pa.Table:
    first = start - (start % every)
    count = (stop - first + every - 1) // every
    if count > MAX_WINDOWS:
        raise QueryError(f"fill would create {count} windows; the limit is {MAX_WINDOWS}")
    grid = first + np.arange(count, dtype=np.int64) * every
    times = table.column("time").to_numpy()
    pos = np.searchsorted(grid, times)
    columns: dict[str, pa.Array] = {"time": pa.array(grid)}
    for name in table.column_names[1:]:
        columns[name] = _fill_column(table.column(name), pos, len(grid), fill)
    return pa.table(columns)


def _fill_column(col: pa.ChunkedArray, pos: np.ndarray, size: int, fill: str) -> pa.Array:
    values = col.to_pylist()
    out: list[object] = [None] * size
    for p, v in zip(pos.tolist(), values, strict=True):
        if p < size:
            out[p] = v
    if fill == "null":
        return pa.array(out, col.type)
    if fill == "previous":
        last = None
        for i, v in enumerate(out):
            if v is None:
                out[i] = last
            else:
                last = v
        return pa.array(out, col.type)
    if fill == "linear":
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise QueryError(f"fill=linear needs numeric fields; this one holds {col.type} values")
        return pa.array(_linear(out), pa.float64())
    try:
        number = float(fill)
    except ValueError as exc:
        raise QueryError(
            f'fill must be none, null, previous, linear or a number, got "{fill}"'
        ) from exc
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise QueryError(f"fill={fill} needs numeric fields; this one holds {col.type} values")
    filled = [number if v is None else v for v in out]
    return pa.array(filled, pa.float64() if pa.types.is_floating(col.type) else None)


def _linear(values: list[object]) -> list[float | None]:
    known = [(i, float(v)) for i, v in enumerate(values) if isinstance(v, int | float)]
    out: list[float | None] = [None] * len(values)
    for (i0, v0), (i1, v1) in itertools.pairwise(known):
        for i in range(i0, i1 + 1):
            out[i] = v0 + (v1 - v0) * (i - i0) / (i1 - i0) if i1 != i0 else v0
    for i, v in known:
        out[i] = v
    return out
