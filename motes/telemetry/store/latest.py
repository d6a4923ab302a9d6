"""Latest value per series and field, kept current at ingest as NumPy columns.

Every series has a dense index within its measurement table; each (table, field) holds a
time column and a value column indexed by it. A commit updates them with a handful of
vectorised operations whatever the number of series, and a read of thousands of series is
a fancy-index, not a loop.

    cache = LatestCache()
    cache.register("m1", sid)
    cache.update("m1", "temperature", sids, times, values)    # arrays of one commit
    rows = cache.rows("m1", [sid, ...], infos)                  # -> LatestRows
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from motes.telemetry.store.protocol import NO_TIME, LatestRows, SeriesInfo


def _numpy_values(values: pa.Array) -> np.ndarray:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return np.array(values.to_pylist(), dtype=object)
    result: np.ndarray = values.to_numpy(zero_copy_only=False)
    return result


@dataclass
class _Column:
    """One field's (times, values), replaced whole by the writer: a reader takes the pair
    once and never sees a time from one commit with a value from another."""

    data: tuple[np.ndarray, np.ndarray]


@dataclass
class _Table:
    size: int = 0
    columns: dict[str, _Column] = field(default_factory=dict)


def _grown(array: np.ndarray, size: int, fill: object) -> np.ndarray:
    out = np.full(max(size, 64), fill, array.dtype)
    out[: len(array)] = array
    return out


class LatestCache:
    def __init__(self) -> None:
        self._local = np.full(1024, -1, np.int64)
        self._tables: dict[str, _Table] = {}

    def register(self, table: str, sid: int) -> None:
        """Give a new series its slot in its table (before readers can find the series)."""
        if sid >= len(self._local):
            grown = np.full(max(sid + 1, 2 * len(self._local)), -1, np.int64)
            grown[: len(self._local)] = self._local
            self._local = grown
        t = self._tables.setdefault(table, _Table())
        self._local[sid] = t.size
        t.size += 1

    def update(
        self, table: str, name: str, sids: np.ndarray, times: np.ndarray, values: pa.Array
    ) -> None:
        """Take (time, value) per series where newer than what is held; one entry per sid."""
        t = self._tables[table]
        vals = _numpy_values(values)
        col = t.columns.get(name)
        if col is None:
            empty = np.full(0, None, object) if vals.dtype == object else np.zeros(0, vals.dtype)
            col = t.columns[name] = _Column((np.full(0, NO_TIME, np.int64), empty))
        old_times, old_values = col.data
        # copy on write: readers may be holding the old arrays
        new_times = _grown(old_times, t.size, NO_TIME)
        new_values = _grown(old_values, t.size, None if vals.dtype == object else 0)
        local = self._local[sids]
        newer = times >= new_times[local]
        new_times[local[newer]] = times[newer]
        new_values[local[newer]] = vals[newer]
        col.data = (new_times, new_values)

    def expire(self, table: str, cutoff: int) -> None:
        """Forget values older than ``cutoff`` (retention deleted them)."""
        t = self._tables.get(table)
        if t is None:
            return
        for col in list(t.columns.values()):
            times, values = col.data
            old = times < cutoff
            if old.any():
                times = times.copy()
                times[old] = NO_TIME
                col.data = (times, values)

    def rows(self, table: str, series: Sequence[SeriesInfo]) -> LatestRows:
        t = self._tables.get(table)
        if t is None or not series:
            return LatestRows(list(series), {})
        local = self._local[np.fromiter((s.id for s in series), np.int64, len(series))]
        fields: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, col in sorted(list(t.columns.items())):
            times, values = col.data
            inside = (local >= 0) & (local < len(times))  # slots newer than this column's arrays
            picked = np.where(inside, local, 0)
            got = np.where(inside, times[picked] if len(times) else NO_TIME, NO_TIME)
            if (got != NO_TIME).any():
                fields[name] = (got, values[picked] if len(values) else np.full(len(local), None))
        return LatestRows(list(series), fields)
