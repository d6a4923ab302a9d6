"""Embedded telemetry store on DuckDB.

Layout: one pair of tables per (bucket, measurement), wide (one column per field):

- ``m<N>_hot``: where group commits append, each commit's rows sorted by (series, time);
- ``m<N>``: the read-optimised table; :meth:`DuckDBStore.compact` moves hot rows there in
  one (series, time)-sorted run, so DuckDB's zone maps let one device's range query skip
  everyone else's row groups; ``m<N>_all`` is the union both reads go through.

Every row is unique by (series, time): appends that cannot collide (all times newer than
the series' newest stored time) go straight in; the rest are merged field by field, last
write wins, as InfluxDB does. Latest values per series and field are kept in memory,
updated at ingest and rebuilt at start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from motes.telemetry.models import FieldType, PointError, StoreUnavailable
from motes.telemetry.store.catalog import Catalog, FieldInfo, MeasurementInfo
from motes.telemetry.store.duckdb_load import load
from motes.telemetry.store.duckdb_read import Reader
from motes.telemetry.store.duckdb_write import TableBatch, build_batches
from motes.telemetry.store.protocol import (
    Aggregation,
    LatestRows,
    Selection,
    SeriesInfo,
    WriteOutcome,
    WriteRequest,
)

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger(__name__)

SQL_TYPES: dict[FieldType, str] = {
    "float": "DOUBLE",
    "integer": "BIGINT",
    "unsigned": "UBIGINT",
    "boolean": "BOOLEAN",
    "string": "VARCHAR",
}
NO_TIME = np.iinfo(np.int64).min
ROW_GROUP_SIZE = 491_520
# Time is stored as whole seconds plus nanoseconds: sorted by (series, time), the seconds
# compress to a few bits even across series boundaries, where ns deltas would need 48.
TIME = "(t_s * 1000000000 + t_ns)"
NS = 1_000_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS motes_measurements(
    bucket VARCHAR, name VARCHAR, tbl VARCHAR, PRIMARY KEY (bucket, name));
CREATE TABLE IF NOT EXISTS motes_fields(
    tbl VARCHAR, name VARCHAR, type VARCHAR, col VARCHAR, PRIMARY KEY (tbl, name));
CREATE TABLE IF NOT EXISTS motes_series(id UBIGINT PRIMARY KEY, tbl VARCHAR, tagset VARCHAR);
"""


class DuckDBStore:
    """``DuckDBStore(path)`` opens (or creates) the store; one writer thread calls write()."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "1GB",
        threads: int = 2,
        compact_rows: int = 1_000_000,
    ) -> None:
        self.compact_rows = compact_rows
        self._last_compaction: dict[str, float] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": memory_limit,
            "threads": threads,
            # compaction checkpoints explicitly: unsorted hot rows should never be written
            # to the data file, where their freed blocks would linger
            "checkpoint_threshold": "1GB",
        }
        self._db = duckdb.connect(config=config)
        # Bigger row groups than DuckDB's default compress sorted sensor data ~30% better
        # and still let zone maps skip most of the table for one series.
        self._db.execute(f"ATTACH '{path}' AS motes (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        self._db.execute("USE motes")
        self._db.execute(SCHEMA)
        self._local = threading.local()
        self._pending: list[MeasurementInfo | FieldInfo] = []
        self._dropped: set[str] = set()
        self._open = False  # the writer's transaction has begun
        self._checkpoint_due = False
        self._reload()
        self.reader = Reader(self._cursor, lambda: self._state.catalog)

    # -- catalog ------------------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self._state.catalog

    def _reload(self) -> None:
        loaded = load(self._db)
        self._max_time = loaded.max_time
        self._hot_rows = loaded.hot_rows
        self._state = loaded.state  # one assignment: readers see the old state or the new

    def _grow(self, sid: int) -> None:
        if sid >= len(self._max_time):
            grown = np.full(max(sid + 1, len(self._max_time) * 2), NO_TIME, np.int64)
            grown[: len(self._max_time)] = self._max_time
            self._max_time = grown

    def _create_measurement(self, bucket: str, name: str) -> MeasurementInfo:
        m = self.catalog.add_measurement(bucket, name)
        t = m.table
        for table in (t, f"{t}_hot"):
            self._db.execute(f"CREATE TABLE {table}(series UINTEGER, t_s BIGINT, t_ns INTEGER)")
        self._db.execute(
            f"CREATE VIEW {t}_all AS SELECT series, t_s, {TIME} AS time, "
            "* EXCLUDE (series, t_s, t_ns) "
            f"FROM (SELECT * FROM {t} UNION ALL BY NAME SELECT * FROM {t}_hot)"
        )
        self._db.execute("INSERT INTO motes_measurements VALUES (?, ?, ?)", [bucket, name, t])
        self._hot_rows[t] = 0
        self._pending.append(m)
        return m

    def _add_field(self, m: MeasurementInfo, name: str, typ: FieldType) -> None:
        col = m.next_column()
        for table in (m.table, f"{m.table}_hot"):
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {SQL_TYPES[typ]}")
        self._db.execute("INSERT INTO motes_fields VALUES (?, ?, ?, ?)", [m.table, name, typ, col])
        info = m.fields[name] = FieldInfo(name=name, type=typ, column=col, committed=False)
        self._pending.append(info)

    def _add_series(self, m: MeasurementInfo, tagsets: list[str]) -> None:
        ids = [self.catalog.allocate_series_id() for _ in tagsets]
        self._grow(max(ids))
        for sid, tagset in zip(ids, tagsets, strict=True):
            # the latest-value slot exists before any reader can find the series
            self._state.latest.register(m.table, sid)
            self.catalog.register_series(m, sid, tagset)
        rows = pa.table(
            {
                "id": pa.array(ids, pa.uint64()),
                "tbl": pa.array([m.table] * len(ids)),
                "tagset": pa.array(tagsets, pa.string()),
            }
        )
        self._db.register("new_series", rows)
        try:
            self._db.execute("INSERT INTO motes_series SELECT * FROM new_series")
        finally:
            self._db.unregister("new_series")

    # -- writes ---------------------------------------------------------------------------

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteOutcome]:
        """Store all requests in one transaction (one fsync), then update latest values."""
        live = [r for r in requests if r.bucket not in self._dropped]
        self._open = False
        try:
            outcomes, batches = build_batches(
                live,
                self.catalog,
                create_measurement=self._in_transaction(self._create_measurement),
                add_field=self._in_transaction(self._add_field),
                add_series=self._in_transaction(self._add_series),
            )
            last = None
            for n, batch in enumerate(batches):
                if n == len(batches) - 1 and self._plain(batch):
                    last = batch  # goes in with the COMMIT
                else:
                    self._begin()
                    self._append(batch)
            if last is not None:
                self._insert_and_commit(last)
            elif self._open:
                self._db.execute("COMMIT")
        except duckdb.Error as exc:
            self._rollback()
            raise StoreUnavailable(f"telemetry store failed: {exc}") from exc
        except BaseException:
            self._rollback()
            raise
        for item in self._pending:
            item.committed = True  # their tables and columns now exist for every reader
        self._pending.clear()
        for batch in batches:
            self._after_commit(batch)
        done = iter(outcomes)
        gone = PointError(None, "the bucket was deleted while this write was queued")
        return [
            next(done) if r.bucket not in self._dropped else WriteOutcome(errors=[gone])
            for r in requests
        ]

    # Under load every statement costs several hand-overs of the GIL (DuckDB drops and takes
    # it back while it runs, and the event loop holds it in between): a small commit took
    # 7 ms as BEGIN / register / INSERT / unregister / COMMIT and takes about half that as
    # one statement. So the transaction opens only when something needs it first (a new
    # table, field or series, a merge), and the common write is a single statement.

    def _begin(self) -> None:
        if not self._open:
            self._db.execute("BEGIN")
            self._open = True

    def _in_transaction(self, fn: Callable[P, R]) -> Callable[P, R]:
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            self._begin()
            return fn(*args, **kwargs)

        return run

    def _plain(self, batch: TableBatch) -> bool:
        """True if the batch is only new rows (no duplicates, nothing at or before a
        series' latest time): an INSERT, no merge."""
        overlap = batch.time <= self._max_time[batch.series]
        return not batch.has_duplicates and not overlap.any()

    def _insert_and_commit(self, batch: TableBatch) -> None:
        m = batch.measurement
        cols = ["series", "t_s", "t_ns", *(f.column for f in m.fields.values())]
        incoming = batch.table(cols)  # found by name: DuckDB scans Python variables
        insert = f"INSERT INTO {m.table}_hot SELECT * FROM incoming; COMMIT"
        self._db.execute(insert if self._open else "BEGIN; " + insert)
        self._open = False
        self._hot_rows[m.table] = self._hot_rows.get(m.table, 0) + len(incoming)

    def _rollback(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._db.execute("ROLLBACK")
        self._pending.clear()
        self._reload()

    def _append(self, batch: TableBatch) -> None:
        m = batch.measurement
        # the hot table's columns, in its order (fields are added in column order)
        cols = ["series", "t_s", "t_ns", *(f.column for f in m.fields.values())]
        table = batch.table(cols)
        overlap = batch.time <= self._max_time[batch.series]
        if batch.has_duplicates or overlap.any():
            self._db.register("incoming", table)
            try:
                self._merge(m, cols)
            finally:
                with contextlib.suppress(duckdb.Error):  # keep the original error
                    self._db.unregister("incoming")
        else:
            # one call into DuckDB: each call costs GIL round trips under load
            self._db.register("incoming", table)
            try:
                self._db.execute(f"INSERT INTO {m.table}_hot SELECT * FROM incoming")
            finally:
                with contextlib.suppress(duckdb.Error):  # keep the original error
                    self._db.unregister("incoming")
        self._hot_rows[m.table] = self._hot_rows.get(m.table, 0) + len(table)

    def _merge(self, m: MeasurementInfo, cols: list[str]) -> None:
        """Last write wins per field: merge incoming rows with stored rows at the same time."""
        fields = cols[3:]
        dedup = ", ".join(
            f"last({c} ORDER BY seq) FILTER (WHERE {c} IS NOT NULL) AS {c}" for c in fields
        )
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE motes_inc AS SELECT series, t_s, t_ns"
            + (f", {dedup}" if dedup else "")
            + " FROM (SELECT *, row_number() OVER () AS seq FROM incoming)"
            + " GROUP BY series, t_s, t_ns"
        )
        merged = ", ".join(f"coalesce(i.{c}, d.{c}) AS {c}" for c in fields)
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE motes_merged AS SELECT i.series, i.t_s, i.t_ns"
            + (f", {merged}" if merged else "")
            + f" FROM motes_inc i LEFT JOIN {m.table}_all d"
            + " ON d.series = i.series AND d.t_s = i.t_s AND d.time = i.t_s * 1000000000 + i.t_ns"
        )
        for table in (m.table, f"{m.table}_hot"):
            self._db.execute(
                f"DELETE FROM {table} USING motes_inc i "
                f"WHERE {table}.series = i.series AND {table}.t_s = i.t_s "
                f"AND {table}.t_ns = i.t_ns"
            )
        col_list = ", ".join(cols)
        self._db.execute(
            f"INSERT INTO {m.table}_hot ({col_list}) SELECT {col_list} FROM motes_merged"
        )
        self._db.execute("DROP TABLE motes_inc")
        self._db.execute("DROP TABLE motes_merged")

    def _after_commit(self, batch: TableBatch) -> None:
        if not len(batch.series):
            return
        # rows are sorted by (series, time): each series' last row holds its newest time
        last = np.r_[batch.series[1:] != batch.series[:-1], True]
        sids, newest = batch.series[last], batch.time[last]
        self._max_time[sids] = np.maximum(self._max_time[sids], newest)
        names = {f.column: f.name for f in batch.measurement.fields.values()}
        for column in batch.data.column_names[2:]:
            col = batch.data.column(column).combine_chunks()
            idx = np.flatnonzero(np.asarray(col.is_valid()))
            if not len(idx):
                continue
            s = batch.series[idx]
            last = idx[np.r_[s[1:] != s[:-1], True]]  # rows are sorted by (series, time)
            self._state.latest.update(
                batch.measurement.table,
                names[column],
                batch.series[last].astype(np.int64),
                batch.time[last],
                col.take(pa.array(last)),
            )

    # -- maintenance ----------------------------------------------------------------------

    def maintain(self, idle: bool) -> None:
        """Compact full hot tables now; when idle, also small ones that sat a while."""
        now = time.monotonic()
        for table, rows in list(self._hot_rows.items()):
            waited = now - self._last_compaction.get(table, 0.0)
            if rows >= self.compact_rows or (idle and rows and (rows >= 10_000 or waited > 300)):
                self.compact(table)
                self._last_compaction[table] = now
        if idle and self._checkpoint_due:
            self._try_checkpoint()

    def compact(self, table: str) -> None:
        """Move a measurement's hot rows into its read table as one sorted run."""
        if not self._hot_rows.get(table):
            return
        try:
            self._db.execute("BEGIN")
            self._db.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM {table}_hot ORDER BY series, t_s, t_ns"
            )
            # drop and recreate rather than DELETE, so the hot table's blocks are freed at once
            self._db.execute(f"DROP TABLE {table}_hot")
            self._db.execute(f"CREATE TABLE {table}_hot AS SELECT * FROM {table} LIMIT 0")
            self._db.execute("COMMIT")
        except duckdb.Error as exc:
            self._db.execute("ROLLBACK")
            raise StoreUnavailable(f"compaction failed: {exc}") from exc
        self._hot_rows[table] = 0
        self._checkpoint_due = True
        self._try_checkpoint()

    def _try_checkpoint(self) -> None:
        try:
            self._db.execute("CHECKPOINT")
        except duckdb.Error as exc:
            # readers hold transactions open: retried when writes pause (maintain)
            log.debug("checkpoint deferred: %s", exc)
        else:
            self._checkpoint_due = False

    def drop_bucket(self, bucket: str) -> None:
        self._dropped.add(bucket)  # writes still queued for it are refused from now on
        try:
            self._db.execute("BEGIN")
            for m in self.catalog.bucket_tables(bucket):
                self._db.execute(f"DROP VIEW {m.table}_all")
                self._db.execute(f"DROP TABLE {m.table}")
                self._db.execute(f"DROP TABLE {m.table}_hot")
                for name in ("motes_fields", "motes_series"):
                    self._db.execute(f"DELETE FROM {name} WHERE tbl = ?", [m.table])
            self._db.execute("DELETE FROM motes_measurements WHERE bucket = ?", [bucket])
            self._db.execute("COMMIT")
        except duckdb.Error as exc:
            self._rollback()
            raise StoreUnavailable(f"dropping the bucket's telemetry failed: {exc}") from exc
        self._reload()

    def enforce_retention(self, bucket: str, cutoff_ns: int) -> int:
        """Delete a bucket's points older than ``cutoff_ns``; returns rows removed."""
        removed = 0
        for m in self.catalog.bucket_tables(bucket):
            for table in (m.table, f"{m.table}_hot"):
                row = self._db.execute(
                    f"DELETE FROM {table} WHERE {TIME} < ? RETURNING 1", [cutoff_ns]
                ).fetchall()
                removed += len(row)
            if removed:
                # what is gone can no longer be the latest value or a series' newest time
                self._state.latest.expire(m.table, cutoff_ns)
                sids = np.fromiter(list(m.series.values()), np.int64)
                if len(sids):
                    stale = sids[self._max_time[sids] < cutoff_ns]
                    self._max_time[stale] = NO_TIME
        return removed

    # -- reads ----------------------------------------------------------------------------

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._db.cursor()
            cur.execute("USE motes")
            self._local.cursor = cur
        return cur

    def series(self, bucket: str, measurement: str, tags: dict[str, list[str]]) -> list[SeriesInfo]:
        return self.catalog.matching_series(bucket, measurement, tags)

    def field_types(self, bucket: str, measurement: str) -> dict[str, FieldType]:
        m = self.catalog.visible_measurement(bucket, measurement)
        return {} if m is None else {f.name: f.type for f in m.visible_fields()}

    def measurements(self, bucket: str) -> list[str]:
        return sorted(m.name for m in self.catalog.bucket_tables(bucket))

    def read(
        self, sel: Selection, agg: Aggregation | None, limit: int | None
    ) -> list[tuple[dict[str, str], pa.Table]]:
        return self.reader.read(sel, agg, limit)

    def latest(
        self, bucket: str, measurement: str | None, tags: dict[str, list[str]]
    ) -> list[LatestRows]:
        state = self._state
        out = []
        for m in state.catalog.bucket_tables(bucket):
            if measurement is not None and m.name != measurement:
                continue
            series = state.catalog.matching_series(bucket, m.name, tags)
            if series:
                out.append(state.latest.rows(m.table, series))
        return out

    def close(self) -> None:
        self._db.close()
