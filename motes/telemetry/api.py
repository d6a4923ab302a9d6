"""Write endpoints: InfluxDB v2 and v1 line protocol, seed-000 device batches, bucket points.

All of them: authenticate -> resolve org and bucket -> check permission -> read a bounded
body -> decode off the event loop -> submit to the group-commit writer -> answer 204 only
once the commit holding the points is durable.
"""

from __future__ import annotations

import asyncio
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.http import BadRequest, authenticate, read_body
from motes.registry.models import Bucket, Forbidden, NotFound, Org, Token
from motes.registry.service import check_name
from motes.telemetry import codecs
from motes.telemetry.codecs import lineprotocol
from motes.telemetry.models import PRECISION_NS, Decoded, DecodeError, WriteRejected

DEFAULT_MEASUREMENT = "telemetry"


def resolve_org(request: Request, token: Token) -> Org:
    """The org named by ``org``/``orgID``, which must be the token's; default: the token's."""
    registry = request.app.state.registry
    params = request.query_params
    if params.get("orgID"):
        org: Org = registry.org(params["orgID"])
    elif params.get("org"):
        org = registry.org_by_name(params["org"])
    else:
        return registry.org(token.org_id)  # type: ignore[no-any-return]
    if org.id != token.org_id:
        raise Forbidden(f'token has no access to org "{org.name}"')
    return org


def resolve_bucket(request: Request, org: Org, name: str | None) -> Bucket:
    registry = request.app.state.registry
    if not name:
        name = request.app.state.settings.init_bucket
    try:
        bucket: Bucket = registry.bucket_by_name(org.id, name)
    except NotFound:
        matches = [b for b in registry.buckets(org.id) if b.id == name]
        if not matches:
            raise
        bucket = matches[0]
    return bucket


def require(token: Token, action: str, bucket: Bucket) -> None:
    if not token.allows(action, "buckets", bucket.id):  # type: ignore[arg-type]
        raise Forbidden(f'token may not {action} bucket "{bucket.name}"')


def precision_of(request: Request, default: str = "ns") -> str:
    precision = request.query_params.get("precision", default)
    if precision not in PRECISION_NS:
        raise BadRequest(f'invalid precision "{precision}": use ns, us, ms or s')
    return precision


async def _write(request: Request, bucket: Bucket, decoded: Decoded) -> Response:
    service = request.app.state.telemetry
    if not decoded.frames and not decoded.errors and decoded.attributes is None:
        raise DecodeError("writing requires points: the body holds none")
    pending = service.submit(bucket, decoded)
    outcome = await asyncio.wrap_future(pending.future) if pending.future else None
    pending.result(outcome)
    return Response(status_code=204)


async def _decode(request: Request, decoder: partial[Decoded]) -> Decoded:
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    return await run_in_threadpool(decoder, body)


async def write_v2(request: Request) -> Response:
    """``POST /api/v2/write?org=&bucket=&precision=``: InfluxDB 2 line protocol."""
    token = authenticate(request)
    org = resolve_org(request, token)
    if not request.query_params.get("bucket") and not request.query_params.get("bucketID"):
        raise BadRequest("bucket is required: add ?bucket=<name>")
    name = request.query_params.get("bucket") or request.query_params.get("bucketID")
    bucket = resolve_bucket(request, org, name)
    require(token, "write", bucket)
    decoded = await _decode(request, partial(_lp, precision=precision_of(request)))
    return await _write(request, bucket, decoded)


def _lp(body: bytes, precision: str) -> Decoded:
    return lineprotocol.decode(body, precision)


async def write_v1(request: Request) -> Response:
    """``POST /write?db=&precision=``: InfluxDB 1.x line protocol (db names the bucket)."""
    token = authenticate(request)
    db = request.query_params.get("db")
    if not db:
        raise BadRequest("database is required: add ?db=<bucket name>")
    org = request.app.state.registry.org(token.org_id)
    bucket = resolve_bucket(request, org, db)
    require(token, "write", bucket)
    precision = request.query_params.get("precision", "ns")
    precision = {"n": "ns", "u": "us", "µ": "us"}.get(precision, precision)
    if precision not in PRECISION_NS:
        raise BadRequest(f'invalid precision "{precision}": use n, u, ms or s')
    decoded = await _decode(request, partial(_lp, precision=precision))
    return await _write(request, bucket, decoded)


async def device_telemetry(request: Request) -> Response:
    """``POST /api/v1/devices/{device}/telemetry``: seed-000 batches and every other codec."""
    device = check_name("device", request.path_params["device"])
    token = authenticate(request)
    org = resolve_org(request, token)
    bucket = resolve_bucket(request, org, request.query_params.get("bucket"))
    require(token, "write", bucket)
    decoded = await _decode(request, _codec(request, device))
    try:
        response = await _write(request, bucket, decoded)
    except WriteRejected as exc:
        if exc.written or not decoded.frames:  # the request was taken, in part
            await _record(request, org, bucket, device, decoded)
        raise
    await _record(request, org, bucket, device, decoded)
    return response


async def _record(
    request: Request, org: Org, bucket: Bucket, device: str, decoded: Decoded
) -> None:
    """Update the device record once the telemetry beside it was accepted."""
    if decoded.attributes is not None:
        registry = request.app.state.registry
        await run_in_threadpool(
            registry.record_attributes, org.id, bucket.id, device, decoded.attributes
        )


async def bucket_points(request: Request) -> Response:
    """``POST /api/v1/buckets/{bucket}/points``: points of any device, any codec."""
    token = authenticate(request)
    org = resolve_org(request, token)
    bucket = resolve_bucket(request, org, request.path_params["bucket"])
    require(token, "write", bucket)
    decoded = await _decode(request, _codec(request, None))
    return await _write(request, bucket, decoded)


def _codec(request: Request, device: str | None) -> partial[Decoded]:
    content_type = request.headers.get("content-type", "")
    measurement = request.query_params.get("measurement", DEFAULT_MEASUREMENT)
    check_name("measurement", measurement)
    default_precision = "ns" if codecs.is_line_protocol(content_type) else "ms"
    precision = precision_of(request, default_precision)
    codecs.check_media_type(content_type)
    return partial(
        _decode_any,
        content_type=content_type,
        device=device,
        measurement=measurement,
        precision=precision,
    )


def _decode_any(
    body: bytes, *, content_type: str, device: str | None, measurement: str, precision: str
) -> Decoded:
    decoded = codecs.decode(
        content_type, body, device=device, measurement=measurement, precision=precision
    )
    if not codecs.is_line_protocol(content_type):
        for frame in decoded.frames:
            frame.coerce_numbers = True
    return decoded


routes = [
    Route("/api/v2/write", write_v2, methods=["POST"]),
    Route("/write", write_v1, methods=["POST"]),
    Route("/api/v1/devices/{device}/telemetry", device_telemetry, methods=["POST"]),
    Route("/api/v1/buckets/{bucket}/points", bucket_points, methods=["POST"]),
]
