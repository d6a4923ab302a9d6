"""Bucket and schema endpoints, plus schema discovery of a bucket's telemetry.

POST   /api/v1/buckets                 {"name": "plants", "retention": "30d"}  -> 201
GET    /api/v1/buckets
DELETE /api/v1/buckets/{bucket}                                                -> 204
PUT    /api/v1/buckets/{bucket}/measurements/{m}/schema
       {"fields": {"t": {"type": "float", "unit": "Cel"}}, "strict": true}
GET    /api/v1/buckets/{bucket}/measurements[/{m}/fields|/{m}/tags|/{m}/tags/{key}/values]
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import ApiModel, Param, operation
from motes.http import JSONResponse, actor_of, authenticate, json_body, read_body
from motes.registry.models import (
    FieldSpec,
    Forbidden,
    Invalid,
    MeasurementSchema,
    NotFound,
    Principal,
    parse_duration,
)
from motes.telemetry.api import require, resolve_bucket, resolve_org

SMALL_BODY = 1024 * 1024


class BucketCreate(ApiModel):
    name: str = Field(max_length=255)
    retention: str | int | None = Field(
        None, description='how long points are kept: "30d", "72h", seconds, or 0 for forever'
    )
    retention_seconds: int | None = Field(None, ge=0, description="the same, in seconds")
    org: str | None = Field(None, description="must be the credentials' org")


class BucketOut(ApiModel):
    id: str
    name: str
    org: str
    org_id: str = Field(alias="orgID")
    retention_seconds: int
    retention: str


class BucketList(ApiModel):
    buckets: list[BucketOut]


class MeasurementList(ApiModel):
    measurements: list[str]


class FieldInfo(ApiModel):
    name: str
    type: str
    unit: str | None


class FieldList(ApiModel):
    fields: list[FieldInfo]


class TagKeys(ApiModel):
    tags: list[str]


class TagValues(ApiModel):
    values: list[str]


class FieldSpecIn(ApiModel):
    type: Literal["float", "integer", "unsigned", "boolean", "string"]
    unit: str | None = None


class SchemaIn(ApiModel):
    fields: dict[str, FieldSpecIn] = Field(min_length=1)
    strict: bool = True


class SchemaOut(ApiModel):
    measurement: str
    strict: bool
    fields: dict[str, FieldSpecIn]


ORG_QUERY = [
    Param("org", {"type": "string"}, description="org name (default: the credentials')"),
    Param("orgID", {"type": "string"}, description="org id"),
]
BUCKET = Param("bucket", {"type": "string"}, True, "name or id", location="path")
MEASUREMENT = Param("measurement", {"type": "string"}, True, location="path")


def _manage(principal: Principal) -> None:
    """Creating, deleting and describing buckets needs write on every bucket of the org."""
    if not principal.allows("write", "buckets"):
        raise Forbidden("this needs write:buckets (members, admins, owners, all-access tokens)")


async def _json(request: Request) -> dict[str, Any]:
    data = json_body(await read_body(request, SMALL_BODY))
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    return data


@operation(
    "Buckets the credentials may read or write",
    ["buckets"],
    query=ORG_QUERY,
    responses={200: BucketList},
    errors=(401, 403),
)
async def list_buckets(request: Request) -> Response:
    token = authenticate(request)
    org = resolve_org(request, token)
    registry = request.app.state.registry
    visible = [
        b
        for b in registry.buckets(org.id)
        if token.allows("read", "buckets", b.id) or token.allows("write", "buckets", b.id)
    ]
    return JSONResponse({"buckets": [b.to_dict(org.name) for b in visible]})


@operation(
    "Create a bucket",
    ["buckets"],
    body=BucketCreate,
    query=ORG_QUERY,
    responses={201: BucketOut},
    errors=(400, 401, 403, 409),
)
async def create_bucket(request: Request) -> Response:
    token = authenticate(request)
    data = await _json(request)
    if data.get("org") and data["org"] != request.app.state.registry.org(token.org_id).name:
        raise Forbidden(f'token has no access to org "{data["org"]}"')
    org = resolve_org(request, token)
    _manage(token)
    name = data.get("name")
    if not isinstance(name, str):
        raise Invalid('"name" is required and must be a string')
    retention = data.get("retention", data.get("retentionSeconds", 0))
    if not isinstance(retention, str | int) or isinstance(retention, bool):
        raise Invalid('"retention" must be a duration like "30d" or a number of seconds')
    registry = request.app.state.registry
    bucket = await run_in_threadpool(
        registry.create_bucket, org.id, name, parse_duration(retention), actor_of(request, token)
    )
    return JSONResponse(bucket.to_dict(org.name), status_code=201)


@operation(
    "Delete a bucket and its data",
    ["buckets"],
    query=[*ORG_QUERY, BUCKET],
    responses={204: None},
    errors=(401, 403, 404),
)
async def delete_bucket(request: Request) -> Response:
    token = authenticate(request)
    org = resolve_org(request, token)
    _manage(token)
    bucket = resolve_bucket(request, org, request.path_params["bucket"])
    # out of the registry first, so no new write can find it; then its data, on the writer
    # thread after the writes already queued (those are refused by the store)
    await run_in_threadpool(
        request.app.state.registry.delete_bucket, bucket, actor_of(request, token)
    )
    await asyncio.wrap_future(request.app.state.telemetry.drop_bucket(bucket.id))
    return Response(status_code=204)


async def _readable_bucket(request: Request) -> Any:
    token = authenticate(request)
    org = resolve_org(request, token)
    bucket = resolve_bucket(request, org, request.path_params["bucket"])
    require(token, "read", bucket)
    return token, bucket


@operation(
    "Measurements in a bucket",
    ["discovery"],
    query=[*ORG_QUERY, BUCKET],
    responses={200: MeasurementList},
)
async def measurements(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    return JSONResponse({"measurements": request.app.state.telemetry.store.measurements(bucket.id)})


def _known_measurement(request: Request, bucket_id: str) -> str:
    name: str = request.path_params["measurement"]
    if name not in request.app.state.telemetry.store.measurements(bucket_id):
        raise NotFound(f'measurement "{name}" not found')
    return name


@operation(
    "Fields of a measurement, with types and units",
    ["discovery"],
    query=[*ORG_QUERY, BUCKET, MEASUREMENT],
    responses={200: FieldList},
)
async def fields(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    types = request.app.state.telemetry.store.field_types(bucket.id, name)
    schema = request.app.state.registry.schema(bucket.id, name)
    units = {n: s.unit for n, s in schema.fields.items()} if schema else {}
    return JSONResponse(
        {"fields": [{"name": n, "type": t, "unit": units.get(n)} for n, t in sorted(types.items())]}
    )


@operation(
    "Tag keys of a measurement",
    ["discovery"],
    query=[*ORG_QUERY, BUCKET, MEASUREMENT],
    responses={200: TagKeys},
)
async def tag_keys(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    series = request.app.state.telemetry.store.series(bucket.id, name, {})
    return JSONResponse({"tags": sorted({k for s in series for k in s.tags})})


@operation(
    "Values of one tag key",
    ["discovery"],
    query=[
        *ORG_QUERY,
        BUCKET,
        MEASUREMENT,
        Param("key", {"type": "string"}, True, location="path"),
    ],
    responses={200: TagValues},
)
async def tag_values(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    key = request.path_params["key"]
    series = request.app.state.telemetry.store.series(bucket.id, name, {})
    return JSONResponse({"values": sorted({s.tags[key] for s in series if key in s.tags})})


@operation(
    "Declare a measurement's schema (field types, units, strictness)",
    ["schemas"],
    body=SchemaIn,
    query=[*ORG_QUERY, BUCKET, MEASUREMENT],
    responses={200: SchemaOut},
)
async def put_schema(request: Request) -> Response:
    token = authenticate(request)
    org = resolve_org(request, token)
    _manage(token)
    bucket = resolve_bucket(request, org, request.path_params["bucket"])
    data = await _json(request)
    raw = data.get("fields")
    if not isinstance(raw, dict) or not raw:
        raise Invalid('"fields" must map field names to {"type": ..., "unit": ...}')
    specs: dict[str, FieldSpec] = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise Invalid(
                f'field "{name}": give {{"type": "float|integer|unsigned|boolean|string"}}'
            )
        unit = spec.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise Invalid(f'field "{name}": "unit" must be a string')
        specs[name] = FieldSpec(spec["type"], unit)
    strict = data.get("strict", True)
    if not isinstance(strict, bool):
        raise Invalid('"strict" must be true or false')
    measurement = request.path_params["measurement"]
    stored = request.app.state.telemetry.store.field_types(bucket.id, measurement)
    for name, spec in specs.items():
        if name in stored and stored[name] != spec.type:
            raise Invalid(f'field "{name}" already holds {stored[name]} values, not {spec.type}')
    schema = MeasurementSchema(bucket.id, measurement, specs, strict)
    await run_in_threadpool(request.app.state.registry.set_schema, schema)
    return JSONResponse(_schema_json(schema))


@operation(
    "A measurement's declared schema",
    ["schemas"],
    query=[*ORG_QUERY, BUCKET, MEASUREMENT],
    responses={200: SchemaOut},
)
async def get_schema(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    schema = request.app.state.registry.schema(bucket.id, request.path_params["measurement"])
    if schema is None:
        raise NotFound(f'measurement "{request.path_params["measurement"]}" has no schema')
    return JSONResponse(_schema_json(schema))


def _schema_json(schema: MeasurementSchema) -> dict[str, Any]:
    return {
        "measurement": schema.measurement,
        "strict": schema.strict,
        "fields": {n: {"type": s.type, "unit": s.unit} for n, s in schema.fields.items()},
    }


M = "/api/v1/buckets/{bucket}/measurements"
routes = [
    Route("/api/v1/buckets", list_buckets, methods=["GET"]),
    Route("/api/v1/buckets", create_bucket, methods=["POST"]),
    Route("/api/v1/buckets/{bucket}", delete_bucket, methods=["DELETE"]),
    Route(M, measurements, methods=["GET"]),
    Route(M + "/{measurement}/fields", fields, methods=["GET"]),
    Route(M + "/{measurement}/tags", tag_keys, methods=["GET"]),
    Route(M + "/{measurement}/tags/{key}/values", tag_values, methods=["GET"]),
    Route(M + "/{measurement}/schema", put_schema, methods=["PUT"]),
    Route(M + "/{measurement}/schema", get_schema, methods=["GET"]),
]
