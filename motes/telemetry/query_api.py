"""Read endpoints: seed-000 device fetch, the query API, latest values, fleet, schema discovery.

    GET /api/v1/query?bucket=telemetry&measurement=env&tag=device:d1&start=-48h&every=10m&fn=mean
    -> {"tables": [{"measurement": "env", "tags": {"device": "d1"},
                    "columns": ["time", "temperature"], "values": [["2026-...Z", 21.4], ...]}]}

``Accept: text/csv`` returns the same tables as CSV. Times are RFC 3339 unless ``epoch`` is
``ns``/``us``/``ms``/``s``. Aggregate windows start at multiples of ``every`` since the epoch
and are labelled with their start.
"""

from __future__ import annotations

import csv
import io
import re
import time
from typing import Any

import pyarrow as pa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import ApiModel, JsonSchema, Param, operation
from motes.http import JSONResponse, authenticate
from motes.telemetry.api import (
    BUCKET_PARAM,
    DEFAULT_MEASUREMENT,
    ORG_PARAMS,
    require,
    resolve_bucket,
    resolve_org,
)
from motes.telemetry.fill import fill_windows
from motes.telemetry.models import DEVICE_TAG, QueryError, UnknownMeasurement
from motes.telemetry.params import (
    EPOCHS,
    MAX_EVERY_NS,
    MAX_LIMIT,
    MAX_NS,
    MIN_NS,
    check_epoch,
    format_time,
    format_times,
    parse_duration_ns,
    parse_tags,
    parse_time,
    positive_int,
)
from motes.telemetry.service import FLEET_FNS
from motes.telemetry.store.duckdb_read import AGGREGATES
from motes.telemetry.store.protocol import NO_TIME, Aggregation, LatestRows, Selection

Tables = list[tuple[dict[str, str], pa.Table]]

# -- what the endpoints take and answer, for the OpenAPI document -----------------------------

Value = str | int | float | bool
READ_PARAMS = [BUCKET_PARAM, *ORG_PARAMS]
TAG = Param(
    "tag",
    {"type": "array", "items": {"type": "string", "pattern": "^[^:=]+[:=]"}},
    description="key:value, repeatable: values of one key are OR-ed, keys AND-ed",
)
FIELD = Param("field", {"type": "array", "items": {"type": "string"}}, description="repeatable")
EPOCH = Param(
    "epoch",
    {"type": "string", "enum": list(EPOCHS)},
    description="integer times (default RFC 3339)",
)
DURATION = "([0-9]+(ns|us|µs|ms|s|m|h|d|w))+"
TIME: JsonSchema = {
    "type": "string",
    "description": 'RFC 3339, epoch ms, "now" or relative like -48h',
    "pattern": f"^(now|now\\(\\)|-?[0-9]+|-{DURATION}|[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}([T ].+)?)$",
    "examples": ["-48h", "2026-01-01T00:00:00Z"],
}
MEASUREMENT: JsonSchema = {"type": "string", "examples": ["env"]}
LIMIT: JsonSchema = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}


class QueryTable(ApiModel):
    """One series (or group): each row of ``values`` follows ``columns``, time first."""

    measurement: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Value | None]]


class QueryResult(ApiModel):
    tables: list[QueryTable]


class LatestValue(ApiModel):
    time: str | int
    value: Value | None


class LatestSeries(ApiModel):
    measurement: str
    tags: dict[str, str]
    fields: dict[str, LatestValue]


class Latest(ApiModel):
    series: list[LatestSeries]


class FleetField(ApiModel):
    value: float | None
    series: int
    newest: str


class Fleet(ApiModel):
    measurement: str
    fn: str
    fields: dict[str, FleetField]


DEVICE_ROWS: JsonSchema = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["timestamp"],
        "properties": {"timestamp": {"type": "integer", "description": "epoch milliseconds"}},
        "additionalProperties": {"type": ["number", "string", "boolean"]},
    },
}


async def _bucket_for_read(request: Request, name: str | None) -> Any:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    bucket = resolve_bucket(request, org, name)
    require(principal, "read", bucket)
    return org, bucket


@operation(
    "Query a measurement: raw points or aggregate windows",
    ["query"],
    query=[
        *READ_PARAMS,
        Param("measurement", MEASUREMENT, True),
        FIELD,
        TAG,
        Param("start", TIME, description="inclusive, default -1h"),
        Param("stop", TIME, description="exclusive, default open"),
        Param(
            "every",
            {"type": "string", "pattern": f"^{DURATION}$", "examples": ["10m"]},
            description="window, e.g. 10m, at most 1000d",
        ),
        Param("fn", {"type": "string", "enum": list(AGGREGATES)}, description="default mean"),
        Param("group_by", {"type": "string"}, description="tag1,tag2; empty: all series"),
        Param(
            "fill",
            {"anyOf": [{"enum": ["none", "null", "previous", "linear"]}, {"type": "number"}]},
            description="for empty windows (default none)",
        ),
        Param("limit", LIMIT, description="rows per table"),
        EPOCH,
    ],
    responses={200: {"application/json": QueryResult, "text/csv": {"type": "string"}}},
    description="`Accept: text/csv` gives one CSV with columns "
    "`table,measurement,<tags>,time,<fields>`. Windows start at multiples of `every` since "
    "the epoch and are labelled with their start.",
)
async def query(request: Request) -> Response:
    _, bucket = await _bucket_for_read(request, request.query_params.get("bucket"))
    params = request.query_params
    now = time.time_ns()
    measurement = params.get("measurement")
    if not measurement:
        raise QueryError("measurement is required")
    sel = Selection(
        bucket=bucket.id,
        measurement=measurement,
        start=parse_time(params.get("start", "-1h"), now),
        stop=parse_time(params["stop"], now) if params.get("stop") else MAX_NS,
        tags=parse_tags(params.getlist("tag")),
        fields=tuple(params.getlist("field")),
    )
    agg = _aggregation(params)
    limit = positive_int("limit", params.get("limit"))
    epoch = check_epoch(params.get("epoch"))
    fill = params.get("fill", "none")
    service = request.app.state.telemetry
    tables: Tables = await run_in_threadpool(service.read, sel, agg, limit)
    if agg is not None and agg.fn and agg.every and fill != "none":
        stop = min(sel.stop, now) if sel.stop == MAX_NS else sel.stop
        tables = [(t, fill_windows(tab, sel.start, stop, agg.every, fill)) for t, tab in tables]
    if "text/csv" in request.headers.get("accept", ""):
        return Response(_csv(measurement, tables, epoch), media_type="text/csv")
    return JSONResponse({"tables": _tables_json(measurement, tables, epoch)})


def _aggregation(params: Any) -> Aggregation | None:
    every, fn = params.get("every"), params.get("fn")
    group = params.get("group_by")
    group_by = None if group is None else tuple(g for g in group.split(",") if g)
    if every is None and fn is None:
        # no windows: raw points, merged per group when group_by is given
        return None if group_by is None else Aggregation(every=0, fn="", group_by=group_by)
    fn = fn or "mean"
    if fn not in AGGREGATES:
        raise QueryError(f'fn must be one of {", ".join(AGGREGATES)}, got "{fn}"')
    every_ns = parse_duration_ns(every) if every else 0  # 0: one window for the range
    if every is not None and not 0 < every_ns <= MAX_EVERY_NS:
        raise QueryError("every must be positive and at most 1000d")
    return Aggregation(every=every_ns, fn=fn, group_by=group_by)


def _tables_json(measurement: str, tables: Tables, epoch: str | None) -> list[dict[str, Any]]:
    """All tables' rows built in one pass: a thousand small tables cost what one big one does.

    Rows are tuples (orjson writes them as arrays), times formatted once for all tables.
    """
    if not tables:
        return []
    whole = pa.concat_tables([tab for _, tab in tables], promote_options="permissive")
    times = format_times(whole.column("time").to_numpy(), epoch)
    cols = [whole.column(i).to_pylist() for i in range(1, whole.num_columns)]
    rows = list(zip(times, *cols, strict=True))
    out, start = [], 0
    for tags, tab in tables:
        end = start + tab.num_rows
        out.append(
            {
                "measurement": measurement,
                "tags": tags,
                "columns": tab.column_names,
                "values": rows[start:end],
            }
        )
        start = end
    return out


def _csv(measurement: str, tables: Tables, epoch: str | None) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tag_keys = sorted({k for tags, _ in tables for k in tags})
    fields = list(dict.fromkeys(c for _, tab in tables for c in tab.column_names[1:]))
    writer.writerow(["table", "measurement", *tag_keys, "time", *fields])
    for i, (tags, tab) in enumerate(tables):
        cols = {c: tab.column(c).to_pylist() for c in tab.column_names[1:]}
        prefix = [i, measurement, *(tags.get(k, "") for k in tag_keys)]
        times = format_times(tab.column("time").to_numpy(), epoch)
        for r, t in enumerate(times):
            values = [cols[f][r] if f in cols else None for f in fields]
            writer.writerow([*prefix, t, *(_csv_value(v) for v in values)])
    return out.getvalue()


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


@operation(
    "Fetch a device's telemetry (seed 000)",
    ["query", "devices"],
    query=[
        *READ_PARAMS,
        Param("from", {"type": "integer"}, description="epoch ms, inclusive"),
        Param("to", {"type": "integer"}, description="epoch ms, exclusive"),
        Param("measurement", MEASUREMENT, description="default telemetry"),
        Param("limit", LIMIT),
    ],
    responses={200: {"application/json": DEVICE_ROWS}},
    description="An unknown device, or one that sent nothing yet, gives `[]`.",
)
async def device_fetch(request: Request) -> Response:
    """Seed 000's fetch: rows of one device, ``from`` inclusive, ``to`` exclusive, in ms."""
    device = request.path_params["device"]
    _, bucket = await _bucket_for_read(request, request.query_params.get("bucket"))
    params = request.query_params
    start = _ms_param(params.get("from"), 0)
    stop = _ms_param(params.get("to"), MAX_NS // 1_000_000)
    measurement = params.get("measurement", DEFAULT_MEASUREMENT)
    sel = Selection(
        bucket.id, measurement, start * 1_000_000, stop * 1_000_000, {DEVICE_TAG: [device]}
    )
    limit = positive_int("limit", params.get("limit"))
    agg = Aggregation(every=0, fn="", group_by=(DEVICE_TAG,))
    try:
        tables: Tables = await run_in_threadpool(request.app.state.telemetry.read, sel, agg, limit)
    except UnknownMeasurement:
        return JSONResponse([])  # nothing sent yet: no rows, as for an unknown device
    rows: list[dict[str, Any]] = []
    for _, tab in tables:
        for row in tab.to_pylist():
            t = row.pop("time")
            fields = {k: v for k, v in row.items() if v is not None}
            rows.append({**fields, "timestamp": t // 1_000_000})  # the real time wins
    return JSONResponse(rows)


def _ms_param(text: str | None, default: int) -> int:
    if text is None or text == "":
        return default
    if not re.fullmatch(r"-?[0-9]+", text):
        raise QueryError(f'"{text}" is not a time in epoch milliseconds')
    return max(MIN_NS // 1_000_000, min(MAX_NS // 1_000_000, int(text)))


def latest_json(rows: LatestRows, epoch: str | None) -> list[dict[str, Any]]:
    """One entry per series: ``{"measurement", "tags", "fields": {f: {"time", "value"}}}``."""
    columns = []
    for name, (times, values) in rows.fields.items():
        held = (times != NO_TIME).tolist()
        columns.append((name, held, format_times(times, epoch), values.tolist()))
    out = []
    for i, info in enumerate(rows.series):
        fields = {
            name: {"time": ts[i], "value": vs[i]} for name, held, ts, vs in columns if held[i]
        }
        if fields:
            out.append({"measurement": info.measurement, "tags": info.tags, "fields": fields})
    return out


@operation(
    "Latest value of each field of each series",
    ["query"],
    query=[*READ_PARAMS, Param("measurement", MEASUREMENT), TAG, FIELD, EPOCH],
    responses={200: Latest},
)
async def latest(request: Request) -> Response:
    _, bucket = await _bucket_for_read(request, request.query_params.get("bucket"))
    params = request.query_params
    epoch = check_epoch(params.get("epoch"))
    wanted = set(params.getlist("field"))
    found = request.app.state.telemetry.latest(
        bucket, params.get("measurement"), parse_tags(params.getlist("tag"))
    )
    series: list[dict[str, Any]] = []
    for rows in found:
        if wanted:
            rows.fields = {n: c for n, c in rows.fields.items() if n in wanted}
        series.extend(latest_json(rows, epoch))
    return JSONResponse({"series": series})


@operation(
    "Latest values of all matching series, reduced per field",
    ["query"],
    query=[
        *READ_PARAMS,
        Param("measurement", MEASUREMENT, True),
        FIELD,
        TAG,
        Param("fn", {"type": "string", "enum": list(FLEET_FNS)}, description="default mean"),
    ],
    responses={200: Fleet},
)
async def fleet(request: Request) -> Response:
    _, bucket = await _bucket_for_read(request, request.query_params.get("bucket"))
    params = request.query_params
    measurement = params.get("measurement")
    if not measurement:
        raise QueryError("measurement is required")
    fn = params.get("fn", "mean")
    result = request.app.state.telemetry.fleet(
        bucket, measurement, tuple(params.getlist("field")), parse_tags(params.getlist("tag")), fn
    )
    for entry in result.values():
        entry["newest"] = format_time(int(entry.pop("newest_ns")), None)
    return JSONResponse({"measurement": measurement, "fn": fn, "fields": result})


routes = [
    Route("/api/v1/query", query, methods=["GET"]),
    Route("/api/v1/latest", latest, methods=["GET"]),
    Route("/api/v1/fleet", fleet, methods=["GET"]),
    Route("/api/v1/devices/{device}/telemetry", device_fetch, methods=["GET"]),
]
