"""Rebuilding a DuckDB store's in-memory state from its tables: catalog, latest values,
newest time per series, hot-table sizes. Built into new objects, which the store swaps in
whole, so readers on other threads never see a half-built state.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from motes.telemetry.store.catalog import Catalog, FieldInfo, MeasurementInfo
from motes.telemetry.store.latest import LatestCache
from motes.telemetry.store.protocol import NO_TIME


@dataclass
class State:
    """What readers use: one object, replaced in a single assignment on rebuild."""

    catalog: Catalog
    latest: LatestCache


@dataclass
class Loaded:
    state: State
    max_time: np.ndarray
    hot_rows: dict[str, int]


def load(db: duckdb.DuckDBPyConnection) -> Loaded:
    catalog = _catalog(db)
    latest = LatestCache()
    max_time = np.full(max(1024, catalog.next_series_id * 2), NO_TIME, np.int64)
    hot_rows: dict[str, int] = {}
    for m in catalog.measurements.values():
        for sid in sorted(m.series.values()):
            latest.register(m.table, sid)
        hot_rows[m.table] = int(db.execute(f"SELECT count(*) FROM {m.table}_hot").fetchall()[0][0])
        _latest_of(db, m, latest, max_time)
    return Loaded(State(catalog, latest), max_time, hot_rows)


def _catalog(db: duckdb.DuckDBPyConnection) -> Catalog:
    catalog = Catalog()
    for bucket, name, tbl in db.execute(
        "SELECT bucket, name, tbl FROM motes_measurements"
    ).fetchall():
        catalog.measurements[(bucket, name)] = MeasurementInfo(bucket=bucket, name=name, table=tbl)
        catalog.next_table = max(catalog.next_table, int(tbl[1:]) + 1)
    by_table = {m.table: m for m in catalog.measurements.values()}
    fields = db.execute("SELECT tbl, name, type, col FROM motes_fields").fetchall()
    for tbl, name, typ, col in sorted(fields, key=lambda r: (r[0], int(r[3][1:]))):
        by_table[tbl].fields[name] = FieldInfo(name=name, type=typ, column=col)
    for sid, tbl, tagset in db.execute("SELECT id, tbl, tagset FROM motes_series").fetchall():
        catalog.register_series(by_table[tbl], int(sid), tagset)
    return catalog


def _latest_of(
    db: duckdb.DuckDBPyConnection, m: MeasurementInfo, latest: LatestCache, max_time: np.ndarray
) -> None:
    cols = list(m.fields.values())
    if not cols:
        return
    parts = ", ".join(
        f"max(time) FILTER (WHERE {f.column} IS NOT NULL) AS t{i}, "
        f"arg_max({f.column}, time) FILTER (WHERE {f.column} IS NOT NULL) AS v{i}"
        for i, f in enumerate(cols)
    )
    table = db.sql(
        f"SELECT series, max(time) AS newest, {parts} FROM {m.table}_all GROUP BY series"
    ).to_arrow_table()
    sids = table.column("series").to_numpy().astype(np.int64)
    if not len(sids):
        return
    max_time[sids] = table.column("newest").to_numpy()
    for i, f in enumerate(cols):
        times = table.column(f"t{i}").combine_chunks()
        held = np.asarray(times.is_valid())
        values = table.column(f"v{i}").combine_chunks().filter(pa.array(held))
        latest.update(
            m.table, f.name, sids[held], times.to_numpy(zero_copy_only=False)[held], values
        )
