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

from motes.apispec import JsonSchema, Param, operation
from motes.http import BadRequest, authenticate, read_body
from motes.registry.models import Bucket, Forbidden, NotFound, Org, Principal
from motes.registry.service import check_name
from motes.telemetry import codecs
from motes.telemetry.codecs import lineprotocol
from motes.telemetry.models import PRECISION_NS, Decoded, DecodeError, WriteRejected

DEFAULT_MEASUREMENT = "telemetry"

# -- what the endpoints take, for the OpenAPI document ----------------------------------------

NAME_SCHEMA: JsonSchema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._\\-]{0,254}$"}
ORG_PARAMS = [
    Param("org", {"type": "string"}, description="org name; must be the token's (default)"),
    Param("orgID", {"type": "string"}, description="org id; must be the token's"),
]
BUCKET: JsonSchema = {"type": "string", "examples": ["telemetry"]}
BUCKET_PARAM = Param("bucket", BUCKET, description="name or id (default: initial)")
PRECISION: JsonSchema = {"type": "string", "enum": ["ns", "us", "ms", "s"]}
WRITE_ERRORS = (400, 401, 403, 404, 413, 415, 503)
LINE_PROTOCOL: JsonSchema = {
    "type": "string",
    "description": "InfluxDB line protocol, one point a line",
    "examples": ["env,device=d1 temperature=21.5,motion=false 1700000000000000000"],
}
FIELD_VALUE: JsonSchema = {
    "type": ["number", "string", "boolean", "null"],
    "description": "null: skipped",
}
FIELD_NAMES: JsonSchema = {
    "minLength": 1,
    "pattern": "^[^_]",
    "description": 'not starting with "_"',
}
POINT: JsonSchema = {
    "type": "object",
    "required": ["fields"],
    "properties": {
        "measurement": {"type": "string", "minLength": 1},
        "tags": {
            "type": "object",
            "propertyNames": FIELD_NAMES,
            "additionalProperties": {"type": "string", "minLength": 1},
        },
        "fields": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": FIELD_NAMES,
            "additionalProperties": FIELD_VALUE,
        },
        "time": {
            "type": ["integer", "string"],
            "description": "integer in `precision` units or RFC 3339; absent: when received",
        },
    },
    "additionalProperties": False,
}
POINTS: JsonSchema = {"anyOf": [{"type": "array", "items": POINT}, POINT]}
DEVICE_BATCH: JsonSchema = {
    "type": "object",
    "description": "seed-000 device batch",
    "minProperties": 1,
    "properties": {
        "deviceinfo": {
            "type": "object",
            "description": "device attributes; `deviceid`, if given, must be the path's device",
        },
        "tsdata": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["timestamp"],
                "properties": {"timestamp": {"type": "integer", "description": "`precision`"}},
                "propertyNames": FIELD_NAMES,
                "additionalProperties": FIELD_VALUE,
            },
        },
    },
    "additionalProperties": False,
    "examples": [
        {
            "deviceinfo": {"deviceid": "sample", "fw_ver": "12345.009", "batt_lvl": 78},
            "tsdata": [{"timestamp": 1582046738255, "humidity": 75.0, "motion": False}],
        }
    ],
}
SENML_RECORD: JsonSchema = {
    "type": "object",
    "description": "RFC 8428 record (CBOR: integer labels too)",
    "properties": {
        **{key: {"type": "string"} for key in ["bn", "bu", "n", "u", "vs", "vd"]},
        **{key: {"type": "number"} for key in ["bt", "bv", "bs", "v", "s", "t", "ut"]},
        "bver": {"type": "integer"},
        "vb": {"type": "boolean"},
    },
}
SENML: JsonSchema = {"anyOf": [{"type": "array", "items": SENML_RECORD}, SENML_RECORD]}


def _any_codec(json: JsonSchema) -> dict[str, JsonSchema]:
    """Request content of the endpoints that decode by Content-Type (see codecs)."""
    return {
        "application/json": json,
        **dict.fromkeys(
            ["application/msgpack", "application/x-msgpack", "application/vnd.msgpack"], json
        ),
        "application/senml+json": SENML,
        "application/senml+cbor": SENML,
        "application/cbor": SENML,
        "text/plain": LINE_PROTOCOL,
        "application/vnd.influx.line-protocol": LINE_PROTOCOL,
    }


CODEC_PARAMS = [
    *ORG_PARAMS,
    Param("measurement", NAME_SCHEMA, description="of JSON, MessagePack and SenML points"),
    Param("precision", PRECISION, description="unit of integer times: ms, ns for line protocol"),
]


def resolve_org(request: Request, principal: Principal) -> Org:
    """The org named by ``org``/``orgID``, which must be the principal's; default: its own."""
    registry = request.app.state.registry
    params = request.query_params
    named = params.get("orgID") or params.get("org")
    try:
        org: Org = registry.org(principal.org_id)
    except NotFound as exc:  # deleted under a cached credential
        raise Forbidden("no access to this org") from exc
    if named and named not in (org.id, org.name):
        raise Forbidden(f'no access to org "{named}"')
    return org


def resolve_bucket(request: Request, org: Org, name: str | None) -> Bucket:
    """A bucket of ``org`` by name or id; the org's default bucket when none is named."""
    registry = request.app.state.registry
    if not name:
        name = request.app.state.settings.init_bucket
    bucket: Bucket = registry.find_bucket(org.id, name)
    return bucket


def require(principal: Principal, action: str, bucket: Bucket) -> None:
    if not principal.allows(action, "buckets", bucket.id):  # type: ignore[arg-type]
        raise Forbidden(f'{principal.kind} may not {action} bucket "{bucket.name}"')


def precision_of(request: Request, default: str = "ns") -> str:
    precision = request.query_params.get("precision", default)
    if precision not in PRECISION_NS:
        raise BadRequest(f'invalid precision "{precision}": use ns, us, ms or s')
    return precision


async def write_decoded(request: Request, bucket: Bucket, decoded: Decoded) -> Response:
    """Submit decoded points to the group-commit writer; 204 once they are durable."""
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


@operation(
    "Write line protocol (InfluxDB 2)",
    ["write", "influxdb"],
    body={"text/plain": LINE_PROTOCOL},
    query=[
        *ORG_PARAMS,
        Param("bucket", BUCKET, description="name or id; this or bucketID"),
        Param("bucketID", {"type": "string"}, description="bucket name or id"),
        Param("precision", PRECISION, description="unit of the timestamps (default ns)"),
    ],
    responses={204: None},
    errors=WRITE_ERRORS,
    description="Answers 204 once the points are durable; `Content-Encoding: gzip` accepted.",
)
async def write_v2(request: Request) -> Response:
    """``POST /api/v2/write?org=&bucket=&precision=``: InfluxDB 2 line protocol."""
    principal = authenticate(request)
    org = resolve_org(request, principal)
    if not request.query_params.get("bucket") and not request.query_params.get("bucketID"):
        raise BadRequest("bucket is required: add ?bucket=<name>")
    name = request.query_params.get("bucket") or request.query_params.get("bucketID")
    bucket = resolve_bucket(request, org, name)
    require(principal, "write", bucket)
    decoded = await _decode(request, partial(_lp, precision=precision_of(request)))
    return await write_decoded(request, bucket, decoded)


def _lp(body: bytes, precision: str) -> Decoded:
    return lineprotocol.decode(body, precision)


@operation(
    "Write line protocol (InfluxDB 1.x)",
    ["write", "influxdb"],
    body={"text/plain": LINE_PROTOCOL},
    query=[
        Param("db", BUCKET, True, "the bucket (name or id)"),
        Param(
            "precision",
            {"type": "string", "enum": ["n", "u", "µ", "ns", "us", "ms", "s"]},
            description="unit of the timestamps (default ns)",
        ),
    ],
    responses={204: None},
    errors=WRITE_ERRORS,
    description="Answers 204 once the points are durable; `Content-Encoding: gzip` accepted.",
)
async def write_v1(request: Request) -> Response:
    """``POST /write?db=&precision=``: InfluxDB 1.x line protocol (db names the bucket)."""
    principal = authenticate(request)
    org = resolve_org(request, principal)
    db = request.query_params.get("db")
    if not db:
        raise BadRequest("database is required: add ?db=<bucket name>")
    bucket = resolve_bucket(request, org, db)
    require(principal, "write", bucket)
    precision = request.query_params.get("precision", "ns")
    precision = {"n": "ns", "u": "us", "µ": "us"}.get(precision, precision)
    if precision not in PRECISION_NS:
        raise BadRequest(f'invalid precision "{precision}": use n, u, ms or s')
    decoded = await _decode(request, partial(_lp, precision=precision))
    return await write_decoded(request, bucket, decoded)


@operation(
    "Write a device's telemetry",
    ["write", "devices"],
    body=_any_codec({"anyOf": [DEVICE_BATCH, POINTS]}),
    query=[
        Param("device", NAME_SCHEMA, location="path"),
        BUCKET_PARAM,
        *CODEC_PARAMS,
    ],
    responses={204: None},
    errors=WRITE_ERRORS,
    description="Every point gets tag `device={device}`; a batch's `deviceinfo` updates the "
    "device record once the telemetry is accepted. Answers 204 once the points are durable.",
)
async def device_telemetry(request: Request) -> Response:
    """``POST /api/v1/devices/{device}/telemetry``: seed-000 batches and every other codec."""
    device = check_name("device", request.path_params["device"])
    principal = authenticate(request)
    org = resolve_org(request, principal)
    named = request.query_params.get("bucket")
    if principal.kind == "device":
        # a device key writes its own telemetry into its own bucket, nothing else
        if principal.id != device:
            raise Forbidden(f'device "{principal.id}" may write only its own telemetry')
        bucket = resolve_bucket(request, org, principal.bucket_id)
        if named and named not in (bucket.name, bucket.id):
            raise Forbidden(f'device "{device}" writes to bucket "{bucket.name}" only')
    else:
        bucket = resolve_bucket(request, org, named)
        require(principal, "write", bucket)
    decoded = await _decode(request, _codec(request, device))
    # the device record (deviceinfo, last seen, registration) is the device's or needs
    # write:devices; data alone needs only the bucket
    keeps_record = principal.kind == "device" or principal.allows("write", "devices", device)
    if decoded.attributes is not None and not keeps_record:
        raise Forbidden(
            f'"deviceinfo" changes the record of device "{device}": needs write:devices'
        )
    try:
        response = await write_decoded(request, bucket, decoded)
    except WriteRejected as exc:
        if keeps_record and (exc.written or not decoded.frames):  # taken, in part
            await _record(request, org, bucket, device, decoded)
        raise
    if keeps_record:
        await _record(request, org, bucket, device, decoded)
    return response


async def _record(
    request: Request, org: Org, bucket: Bucket, device: str, decoded: Decoded
) -> None:
    """Update the device record (last seen, deviceinfo) once its telemetry was accepted."""
    devices = request.app.state.registry.devices
    if decoded.attributes is not None:
        await run_in_threadpool(
            devices.record_attributes, org.id, device, decoded.attributes, bucket.id
        )
    elif devices.known(org.id, device):
        devices.touch(org.id, device, bucket.id)
    else:
        await run_in_threadpool(devices.touch, org.id, device, bucket.id)


@operation(
    "Write points of any device",
    ["write"],
    body=_any_codec(POINTS),
    query=[
        Param("bucket", BUCKET, description="name or id", location="path"),
        *CODEC_PARAMS,
    ],
    responses={204: None},
    errors=WRITE_ERRORS,
    description="Answers 204 once the points are durable.",
)
async def bucket_points(request: Request) -> Response:
    """``POST /api/v1/buckets/{bucket}/points``: points of any device, any codec."""
    principal = authenticate(request)
    org = resolve_org(request, principal)
    bucket = resolve_bucket(request, org, request.path_params["bucket"])
    require(principal, "write", bucket)
    decoded = await _decode(request, _codec(request, None))
    return await write_decoded(request, bucket, decoded)


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
