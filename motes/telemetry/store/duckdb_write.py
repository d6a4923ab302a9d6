"""Turning a group commit's requests into one sorted, typed Arrow batch per table.

Per-point work stays in Arrow/NumPy: type checks are per column, series ids are resolved
once per distinct tag set, and sorting is one ``lexsort`` per table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.models import ARROW_TYPES, FieldType, Frame, PointError, field_type_of
from motes.telemetry.store.catalog import Catalog, MeasurementInfo
from motes.telemetry.store.protocol import WriteOutcome, WriteRequest


@dataclass
class TableBatch:
    """Rows for one measurement table, sorted by (series, time), request order kept on ties."""

    measurement: MeasurementInfo
    data: pa.Table  # series, time, and field columns named by their storage column
    series: np.ndarray
    time: np.ndarray
    has_duplicates: bool

    def table(self, columns: list[str]) -> pa.Table:
        """The batch with exactly ``columns`` (absent fields as nulls), in that order."""
        types = {f.column: ARROW_TYPES[f.type] for f in self.measurement.fields.values()}
        seconds = np.floor_divide(self.time, NS)
        split = {
            "t_s": pa.array(seconds),
            "t_ns": pa.array((self.time - seconds * NS).astype(np.int32)),
        }
        arrays = []
        for col in columns:
            if col in split:
                arrays.append(split[col])
            elif col in self.data.column_names:
                arrays.append(self.data.column(col))
            else:
                arrays.append(pa.nulls(len(self.data), types[col]))
        return pa.Table.from_arrays(arrays, names=columns)


NS = 1_000_000_000
CreateMeasurement = Callable[[str, str], MeasurementInfo]
AddField = Callable[[MeasurementInfo, str, FieldType], None]
AddSeries = Callable[[MeasurementInfo, list[str]], None]


def build_batches(
    requests: Sequence[WriteRequest],
    catalog: Catalog,
    *,
    create_measurement: CreateMeasurement,
    add_field: AddField,
    add_series: AddSeries,
) -> tuple[list[WriteOutcome], list[TableBatch]]:
    outcomes: list[WriteOutcome] = []
    parts: dict[str, list[pa.Table]] = {}
    infos: dict[str, MeasurementInfo] = {}
    for req in requests:
        outcome = WriteOutcome()
        for frame in req.frames:
            m = catalog.measurement(req.bucket, frame.measurement)
            frame = _check_types(frame, m, outcome)
            if len(frame) == 0:
                continue  # nothing survived: no measurement or field is created for it
            if m is None:
                m = create_measurement(req.bucket, frame.measurement)
            for name, col in frame.fields.items():
                if name not in m.fields:
                    add_field(m, name, field_type_of(col.type))
            ids = _series_ids(frame, m, add_series)
            columns = {"series": pa.array(ids, pa.uint32()), "time": frame.time.cast(pa.int64())}
            for name, col in frame.fields.items():
                columns[m.fields[name].column] = col
            parts.setdefault(m.table, []).append(pa.table(columns))
            infos[m.table] = m
            outcome.written += frame.point_count
        outcomes.append(outcome)
    batches = [_sorted_batch(infos[t], tables) for t, tables in parts.items()]
    return outcomes, batches


def _check_types(frame: Frame, m: MeasurementInfo | None, outcome: WriteOutcome) -> Frame:
    """Drop (and report) rows whose values conflict with stored field types."""
    bad = np.zeros(len(frame), dtype=bool)
    for name, col in list(frame.fields.items()):
        incoming = field_type_of(col.type)
        known = None if m is None else m.fields.get(name)
        if known is None or known.type == incoming:
            continue
        if known.type == "float" and incoming in ("integer", "unsigned") and frame.coerce_numbers:
            frame.fields[name] = col.cast(pa.float64())
            continue
        conflict = np.asarray(col.is_valid())
        for row in np.flatnonzero(conflict & ~bad):
            line = None if frame.lines is None else frame.lines[int(row)].as_py()
            outcome.errors.append(
                PointError(
                    line,
                    f'field type conflict: field "{name}" of measurement "{frame.measurement}" '
                    f"is {known.type}, got {incoming}",
                )
            )
        bad |= conflict
    if not bad.any():
        return frame
    return frame.take(pa.array(np.flatnonzero(~bad)))


def _series_ids(frame: Frame, m: MeasurementInfo, add_series: AddSeries) -> np.ndarray:
    tagsets = frame.tagsets
    if not isinstance(tagsets, pa.DictionaryArray):
        tagsets = pc.dictionary_encode(tagsets)
    keys: list[str] = tagsets.dictionary.to_pylist()
    new = [k for k in dict.fromkeys(keys) if k not in m.series]
    if new:
        add_series(m, new)
    lookup = np.fromiter((m.series[k] for k in keys), dtype=np.uint32, count=len(keys))
    indices = tagsets.indices.to_numpy(zero_copy_only=False)
    result: np.ndarray = lookup[indices]
    return result


def _sorted_batch(m: MeasurementInfo, tables: list[pa.Table]) -> TableBatch:
    data = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    series = data.column("series").to_numpy()
    time = data.column("time").to_numpy()
    order = np.lexsort((time, series))
    if not np.array_equal(order, np.arange(len(order))):
        data = data.take(pa.array(order))
        series, time = series[order], time[order]
    dup = bool(np.any((series[1:] == series[:-1]) & (time[1:] == time[:-1])))
    return TableBatch(measurement=m, data=data, series=series, time=time, has_duplicates=dup)
