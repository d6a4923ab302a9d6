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
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


def _manage(principal: Principal) -> None:
    """Creating, deleting and describing buckets needs write on every bucket of the org."""
    if not principal.allows("write", "buckets"):
        raise Forbidden("this needs write:buckets (members, admins, owners, all-access tokens)")


async def _json(request: Request) -> dict[str, Any]:
    data = json_body(await read_body(request, SMALL_BODY))
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    return data


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


async def measurements(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    return JSONResponse({"measurements": request.app.state.telemetry.store.measurements(bucket.id)})


def _known_measurement(request: Request, bucket_id: str) -> str:
    name: str = request.path_params["measurement"]
    if name not in request.app.state.telemetry.store.measurements(bucket_id):
        raise NotFound(f'measurement "{name}" not found')
    return name


async def fields(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    types = request.app.state.telemetry.store.field_types(bucket.id, name)
    schema = request.app.state.registry.schema(bucket.id, name)
    units = {n: s.unit for n, s in schema.fields.items()} if schema else {}
    return JSONResponse(
        {"fields": [{"name": n, "type": t, "unit": units.get(n)} for n, t in sorted(types.items())]}
    )


async def tag_keys(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    series = request.app.state.telemetry.store.series(bucket.id, name, {})
    return JSONResponse({"tags": sorted({k for s in series for k in s.tags})})


async def tag_values(request: Request) -> Response:
    _, bucket = await _readable_bucket(request)
    name = _known_measurement(request, bucket.id)
    key = request.path_params["key"]
    series = request.app.state.telemetry.store.series(bucket.id, name, {})
    return JSONResponse({"values": sorted({s.tags[key] for s in series if key in s.tags})})


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
