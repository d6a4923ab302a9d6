"""Devices with keys, channels that connect them, and messages published on channels.

GET  /api/v1/devices?search=&tag=&meta.<k>=<v>&limit=&offset=
POST /api/v1/devices {"id", "name"?, "metadata"?, "tags"?, "bucket"?}   -> 201 with "key"
POST /api/v1/devices/bulk (text/csv)                                    -> 201, all or nothing
GET|PATCH|DELETE /api/v1/devices/{device}
POST|DELETE /api/v1/devices/{device}/key                                -> rotate / revoke
GET /api/v1/devices/{device}/status-history?limit=&before=
GET /api/v1/devices/{device}/rejections?limit=&before=                  -> refused MQTT messages
GET|POST /api/v1/channels   GET|PATCH|DELETE /api/v1/channels/{channel}
GET /api/v1/channels/{channel}/devices   PUT|DELETE /api/v1/channels/{channel}/devices/{device}
POST /api/v1/channels/{channel}/messages[/{subtopic...}]
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation, parse_body, parse_query
from motes.http import actor_of, authenticate, read_body
from motes.registry.api_orgs import dump, need
from motes.registry.common import check_name
from motes.registry.devices import Channel, Device, DeviceSpec
from motes.registry.models import Action, Bucket, Invalid, NotFound, Org, Principal
from motes.registry.schemas import (
    AttributeChange,
    ChannelCreate,
    ChannelDevices,
    ChannelList,
    ChannelOut,
    ChannelUpdate,
    DeviceCreate,
    DeviceCreated,
    DeviceCreatedList,
    DeviceDetail,
    DeviceKey,
    DeviceList,
    DeviceOut,
    DeviceQuery,
    DeviceUpdate,
    OrgQuery,
    RejectionList,
    RejectionOut,
    RejectionQuery,
    StatusChangeOut,
    StatusHistory,
    StatusHistoryQuery,
    iso,
)
from motes.telemetry import codecs
from motes.telemetry.api import resolve_bucket, resolve_org, write_decoded
from motes.telemetry.models import DEVICE_TAG, Decoded
from motes.telemetry.query_api import latest_json

BULK_LIMIT = 4 * 1024 * 1024
MAX_BULK = 10_000
MESSAGES_MEASUREMENT = "messages"


def _bucket_name(request: Request, org: Org, bucket_id: str | None) -> str | None:
    if bucket_id is None:
        return None
    try:
        return request.app.state.registry.bucket(org.id, bucket_id).name  # type: ignore[no-any-return]
    except NotFound:
        return None


def _bucket_id(request: Request, org: Org, name: str | None) -> str | None:
    if name is None:
        return None
    bucket: Bucket = resolve_bucket(request, org, name)
    return bucket.id


def device_out(request: Request, org: Org, d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "metadata": d.metadata,
        "tags": list(d.tags),
        "bucket": _bucket_name(request, org, d.bucket_id),
        "permissions": [str(p) for p in d.permissions],
        "disabled": d.disabled,
        "key_prefix": d.key_prefix,
        "key_created_at": iso(d.key_created_ns),
        "attributes": d.attributes,
        "attributes_updated_at": iso(d.attributes_updated_ns),
        "last_seen": iso(d.last_seen_ns),
        "created_at": iso(d.created_ns),
        "expected_interval_seconds": d.expected_interval_seconds,
        "status": d.status,
        "status_changed_at": iso(d.status_ns),
        "connected": d.connected,
        "last_connect": iso(d.connected_ns),
        "last_disconnect": iso(d.disconnected_ns),
    }


def _context(request: Request, action: Action) -> tuple[Principal, Org]:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, action, "devices", request.path_params.get("device"))
    return principal, org


@operation(
    "Search devices by id or name, tags and metadata (paginated)",
    ["devices"],
    query=DeviceQuery,
    responses={200: DeviceList},
    description="Add `meta.<key>=<value>` parameters to match metadata values.",
)
async def list_devices(request: Request) -> Response:
    _, org = _context(request, "read")
    meta = {k[5:]: v for k, v in request.query_params.items() if k.startswith("meta.")}
    plain = [(k, v) for k, v in request.query_params.multi_items() if not k.startswith("meta.")]
    query = parse_query(_without_meta(request, plain), DeviceQuery)
    devices, total = await run_in_threadpool(
        request.app.state.registry.devices.search,
        org.id,
        query.search,
        query.tag,
        meta,
        query.limit,
        query.offset,
    )
    out = DeviceList(
        devices=[DeviceOut(**device_out(request, org, d)) for d in devices],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )
    return dump(out)


def _without_meta(request: Request, items: list[tuple[str, str]]) -> Request:
    from urllib.parse import urlencode

    scope = dict(request.scope)
    scope["query_string"] = urlencode(items).encode()
    return Request(scope)


def _spec(request: Request, org: Org, principal: Principal, data: DeviceCreate) -> DeviceSpec:
    request.app.state.registry.check_grant(principal, data.permissions)
    check_name("device", data.id)
    return DeviceSpec(
        id=data.id,
        name=data.name,
        metadata=data.metadata,
        tags=tuple(data.tags),
        bucket_id=_bucket_id(request, org, data.bucket),
        permissions=tuple(data.permissions),
        expected_interval_seconds=data.expected_interval_seconds,
    )


@operation(
    "Provision a device; its key is in the answer, and only there",
    ["devices"],
    body=DeviceCreate,
    query=OrgQuery,
    responses={201: DeviceCreated},
    errors=(400, 401, 403, 404, 409),
)
async def create_device(request: Request) -> Response:
    principal, org = _context(request, "write")
    data = await parse_body(request, DeviceCreate)
    spec = _spec(request, org, principal, data)
    devices = request.app.state.registry.devices
    device, key = await run_in_threadpool(
        devices.create, org.id, actor_of(request, principal), spec
    )
    return dump(DeviceCreated(**device_out(request, org, device), key=key), 201)


BULK_COLUMNS = ("id", "name", "tags", "metadata", "bucket", "expected_interval_seconds")


@operation(
    "Provision devices from CSV (id,name,tags,metadata,bucket,expected_interval_seconds): "
    "all or none",
    ["devices"],
    body={"text/csv": {"schema": {"type": "string"}}},
    query=OrgQuery,
    responses={201: DeviceCreatedList},
    errors=(400, 401, 403, 409, 413),
)
async def bulk_devices(request: Request) -> Response:
    principal, org = _context(request, "write")
    body = await read_body(request, BULK_LIMIT)
    specs = _parse_csv(request, org, principal, body)
    devices = request.app.state.registry.devices
    created = await run_in_threadpool(
        devices.create_many, org.id, actor_of(request, principal), specs
    )
    out = DeviceCreatedList(
        devices=[DeviceCreated(**device_out(request, org, d), key=k) for d, k in created]
    )
    return dump(out, 201)


def _parse_csv(request: Request, org: Org, principal: Principal, body: bytes) -> list[DeviceSpec]:
    from motes.http import BadRequest
    from motes.telemetry.models import PointError

    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest("the CSV is not UTF-8") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "id" not in header or set(header) - set(BULK_COLUMNS):
        raise BadRequest(f"the CSV header must name id and any of {', '.join(BULK_COLUMNS[1:])}")
    specs: list[DeviceSpec] = []
    errors: list[PointError] = []
    for row in reader:
        line = reader.line_num
        try:
            metadata = orjson.loads(row["metadata"]) if row.get("metadata") else {}
            interval = _interval(row.get("expected_interval_seconds"))
            data = DeviceCreate(
                id=row.get("id") or "",
                name=row.get("name") or "",
                tags=[t for t in (row.get("tags") or "").split(";") if t],
                metadata=metadata,
                bucket=row.get("bucket") or None,
                expected_interval_seconds=interval,
            )
            specs.append(_spec(request, org, principal, data))
        except (orjson.JSONDecodeError, ValueError, Invalid, NotFound) as exc:
            message = getattr(exc, "message", None) or str(exc).splitlines()[0]
            errors.append(PointError(line, message))
        if len(specs) + len(errors) > MAX_BULK:
            raise BadRequest(f"at most {MAX_BULK} devices per import")
    if errors:
        raise _BulkInvalid(f"{len(errors)} bad line(s), nothing was created", errors)
    if not specs:
        raise BadRequest("the CSV holds no devices")
    return specs


def _interval(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f'expected_interval_seconds "{text}" is not a whole number of seconds')
    return int(text)


class _BulkInvalid(Invalid):
    def __init__(self, message: str, errors: list[Any]) -> None:
        super().__init__(message)
        self.errors = errors


def _readable_device(request: Request) -> tuple[Principal, Org, str]:
    """The org and the path's device, which the caller may read: ``read:devices`` or it is
    the device itself."""
    principal = authenticate(request)
    org = resolve_org(request, principal)
    device_id: str = request.path_params["device"]
    if not (principal.kind == "device" and principal.id == device_id):
        need(principal, "read", "devices", device_id)
    return principal, org, device_id


@operation(
    "A device's record: attributes, history, channels, latest values",
    ["devices"],
    query=OrgQuery,
    responses={200: DeviceDetail},
)
async def get_device(request: Request) -> Response:
    principal, org, device_id = _readable_device(request)
    registry = request.app.state.registry
    device = await run_in_threadpool(registry.devices.get, org.id, device_id)
    history = await run_in_threadpool(registry.devices.history, org.id, device_id)
    channels = await run_in_threadpool(registry.devices.device_channels, org.id, device_id)
    latest: dict[str, dict[str, Any]] = {}
    try:
        bucket = resolve_bucket(request, org, device.bucket_id)
    except NotFound:
        bucket = None
    if bucket is not None and (
        principal.allows("read", "buckets", bucket.id)
        or (principal.kind == "device" and principal.id == device_id)
    ):
        rows = request.app.state.telemetry.latest(bucket, None, {DEVICE_TAG: [device_id]})
        for entry in (e for r in rows for e in latest_json(r, None)):
            for name, value in entry["fields"].items():
                latest[name] = {**value, "measurement": entry["measurement"]}
    out = DeviceDetail(
        **device_out(request, org, device),
        history=[
            AttributeChange(time=iso(h["time_ns"]), attributes=h["attributes"]) for h in history
        ],
        channels=channels,
        latest=latest,
    )
    return dump(out)


@operation(
    "Change a device",
    ["devices"],
    body=DeviceUpdate,
    query=OrgQuery,
    responses={200: DeviceOut},
    errors=(400, 401, 403, 404),
)
async def update_device(request: Request) -> Response:
    principal, org = _context(request, "write")
    data = await parse_body(request, DeviceUpdate)
    registry = request.app.state.registry
    await run_in_threadpool(registry.check_grant, principal, data.permissions or [])
    devices = request.app.state.registry.devices
    device = await run_in_threadpool(
        lambda: devices.update(
            org.id,
            request.path_params["device"],
            actor_of(request, principal),
            name=data.name,
            metadata=data.metadata,
            tags=data.tags,
            bucket_id=_bucket_id(request, org, data.bucket),
            permissions=data.permissions,
            disabled=data.disabled,
            expected_interval_seconds=data.expected_interval_seconds,
        )
    )
    return dump(DeviceOut(**device_out(request, org, device)))


@operation(
    "Delete a device (its telemetry stays in its bucket)",
    ["devices"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404),
)
async def delete_device(request: Request) -> Response:
    principal, org = _context(request, "write")
    devices = request.app.state.registry.devices
    await run_in_threadpool(
        devices.delete, org.id, request.path_params["device"], actor_of(request, principal)
    )
    return Response(status_code=204)


@operation(
    "Give a device a new key; the old one stops at once",
    ["devices"],
    query=OrgQuery,
    responses={201: DeviceKey},
    errors=(401, 403, 404),
)
async def rotate_key(request: Request) -> Response:
    principal, org = _context(request, "write")
    devices = request.app.state.registry.devices
    key = await run_in_threadpool(
        devices.rotate_key, org.id, request.path_params["device"], actor_of(request, principal)
    )
    return dump(DeviceKey(key=key, key_prefix=key[:12]), 201)


@operation(
    "Revoke a device's key: no key works for it any more",
    ["devices"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404),
)
async def revoke_key(request: Request) -> Response:
    principal, org = _context(request, "write")
    devices = request.app.state.registry.devices
    await run_in_threadpool(
        devices.revoke_key, org.id, request.path_params["device"], actor_of(request, principal)
    )
    return Response(status_code=204)


@operation(
    "A device's status changes (online, stale, offline), newest first",
    ["devices"],
    query=StatusHistoryQuery,
    responses={200: StatusHistory},
)
async def status_history(request: Request) -> Response:
    _, org, device_id = _readable_device(request)
    devices = request.app.state.registry.devices
    await run_in_threadpool(devices.get, org.id, device_id)  # 404 before any 400
    query = parse_query(request, StatusHistoryQuery)
    changes = await run_in_threadpool(
        devices.status_history, org.id, device_id, query.limit, query.before
    )
    out = StatusHistory(
        history=[
            StatusChangeOut(id=c.id, time=iso(c.at_ns), status=c.status, reason=c.reason)
            for c in changes
        ]
    )
    return dump(out)


@operation(
    "Messages refused from or for a device (bad payloads, forbidden topics), newest first",
    ["devices"],
    query=RejectionQuery,
    responses={200: RejectionList},
    description="The newest 1000 per device are kept; they appear within about 2 seconds.",
)
async def rejections(request: Request) -> Response:
    _, org, device_id = _readable_device(request)
    registry = request.app.state.registry
    await run_in_threadpool(registry.devices.get, org.id, device_id)  # 404 before any 400
    query = parse_query(request, RejectionQuery)
    found = await run_in_threadpool(
        registry.rejections.list, org.id, device_id, query.limit, query.before
    )
    out = RejectionList(
        rejections=[
            RejectionOut(
                id=x.id, time=iso(x.at_ns), transport=x.transport, topic=x.topic, error=x.error
            )
            for x in found
        ]
    )
    return dump(out)


# -- channels ---------------------------------------------------------------------------------


def channel_out(request: Request, org: Org, c: Channel) -> ChannelOut:
    return ChannelOut(
        id=c.id,
        name=c.name,
        metadata=c.metadata,
        bucket=_bucket_name(request, org, c.bucket_id),
        created_at=iso(c.created_ns),
    )


def _channel_context(request: Request, action: Action) -> tuple[Principal, Org]:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, action, "channels", request.path_params.get("channel"))
    return principal, org


@operation("Channels of the org", ["channels"], query=OrgQuery, responses={200: ChannelList})
async def list_channels(request: Request) -> Response:
    _, org = _channel_context(request, "read")
    found = await run_in_threadpool(request.app.state.registry.devices.channels, org.id)
    return dump(ChannelList(channels=[channel_out(request, org, c) for c in found]))


@operation(
    "Create a channel",
    ["channels"],
    body=ChannelCreate,
    query=OrgQuery,
    responses={201: ChannelOut},
    errors=(400, 401, 403, 404, 409),
)
async def create_channel(request: Request) -> Response:
    principal, org = _channel_context(request, "write")
    data = await parse_body(request, ChannelCreate)
    devices = request.app.state.registry.devices
    channel = await run_in_threadpool(
        devices.create_channel,
        org.id,
        actor_of(request, principal),
        data.id,
        data.name,
        data.metadata,
        _bucket_id(request, org, data.bucket),
    )
    return dump(channel_out(request, org, channel), 201)


@operation("A channel", ["channels"], query=OrgQuery, responses={200: ChannelOut})
async def get_channel(request: Request) -> Response:
    _, org = _channel_context(request, "read")
    devices = request.app.state.registry.devices
    channel = await run_in_threadpool(devices.channel, org.id, request.path_params["channel"])
    return dump(channel_out(request, org, channel))


@operation(
    "Change a channel",
    ["channels"],
    body=ChannelUpdate,
    query=OrgQuery,
    responses={200: ChannelOut},
)
async def update_channel(request: Request) -> Response:
    principal, org = _channel_context(request, "write")
    data = await parse_body(request, ChannelUpdate)
    devices = request.app.state.registry.devices
    channel = await run_in_threadpool(
        lambda: devices.update_channel(
            org.id,
            request.path_params["channel"],
            actor_of(request, principal),
            name=data.name,
            metadata=data.metadata,
            bucket_id=_bucket_id(request, org, data.bucket),
        )
    )
    return dump(channel_out(request, org, channel))


@operation(
    "Delete a channel", ["channels"], query=OrgQuery, responses={204: None}, errors=(401, 403, 404)
)
async def delete_channel(request: Request) -> Response:
    principal, org = _channel_context(request, "write")
    devices = request.app.state.registry.devices
    await run_in_threadpool(
        devices.delete_channel, org.id, request.path_params["channel"], actor_of(request, principal)
    )
    return Response(status_code=204)


@operation(
    "Devices connected to a channel", ["channels"], query=OrgQuery, responses={200: ChannelDevices}
)
async def channel_devices(request: Request) -> Response:
    _, org = _channel_context(request, "read")
    devices = request.app.state.registry.devices
    found = await run_in_threadpool(devices.channel_devices, org.id, request.path_params["channel"])
    return dump(ChannelDevices(devices=found))


@operation(
    "Connect a device to a channel",
    ["channels"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404),
)
async def connect(request: Request) -> Response:
    principal, org = _channel_context(request, "write")
    need(principal, "write", "devices", request.path_params["device"])
    devices = request.app.state.registry.devices
    await run_in_threadpool(
        devices.connect,
        org.id,
        request.path_params["channel"],
        request.path_params["device"],
        actor_of(request, principal),
    )
    return Response(status_code=204)


@operation(
    "Disconnect a device from a channel",
    ["channels"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404),
)
async def disconnect(request: Request) -> Response:
    principal, org = _channel_context(request, "write")
    devices = request.app.state.registry.devices
    await run_in_threadpool(
        devices.disconnect,
        org.id,
        request.path_params["channel"],
        request.path_params["device"],
        actor_of(request, principal),
    )
    return Response(status_code=204)


MESSAGE_TYPES: dict[str, dict[str, Any]] = {
    "application/senml+json": {"schema": {"type": "array", "items": {"type": "object"}}},
    "application/json": {"schema": {}},
    "text/plain": {"schema": {"type": "string"}},
    "application/senml+cbor": {"schema": {"type": "string", "format": "binary"}},
    "application/msgpack": {"schema": {"type": "string", "format": "binary"}},
}


@operation(
    "Publish a message on a channel (stored with channel, publisher and subtopic tags)",
    ["channels"],
    body=MESSAGE_TYPES,
    query=OrgQuery,
    responses={204: None},
    errors=(400, 401, 403, 404, 413, 415, 503),
    description="Without Content-Type the body is read as SenML JSON (Mainflux's default).",
)
async def publish(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    channel_id = request.path_params["channel"]
    subtopic = request.path_params.get("subtopic", "")
    registry = request.app.state.registry
    if principal.kind == "device":
        await run_in_threadpool(registry.devices.check_connected, org.id, channel_id, principal.id)
    else:
        need(principal, "write", "channels", channel_id)
    channel = await run_in_threadpool(registry.devices.channel, org.id, channel_id)
    bucket = resolve_bucket(request, org, channel.bucket_id)
    content_type = request.headers.get("content-type") or "application/senml+json"
    codecs.check_media_type(content_type)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    extra = {"channel": channel_id, "publisher": principal.actor}
    if subtopic:
        extra["subtopic"] = subtopic.strip("/").replace("/", ".")
    publisher = principal.id if principal.kind == "device" else None
    decoded = await run_in_threadpool(_decode_message, content_type, body, publisher, extra)
    return await write_decoded(request, bucket, decoded)


def _decode_message(
    content_type: str, body: bytes, device: str | None, extra: dict[str, str]
) -> Decoded:
    decoded = codecs.decode(content_type, body, device=device, measurement=MESSAGES_MEASUREMENT)
    if not codecs.is_line_protocol(content_type):
        for frame in decoded.frames:
            frame.coerce_numbers = True
    decoded.add_tags(extra)
    return decoded


DEVICE = "/api/v1/devices/{device}"
CHANNEL = "/api/v1/channels/{channel}"
routes = [
    Route("/api/v1/devices", list_devices, methods=["GET"]),
    Route("/api/v1/devices", create_device, methods=["POST"]),
    Route("/api/v1/devices/bulk", bulk_devices, methods=["POST"]),
    Route(DEVICE, get_device, methods=["GET"]),
    Route(DEVICE, update_device, methods=["PATCH"]),
    Route(DEVICE, delete_device, methods=["DELETE"]),
    Route(DEVICE + "/key", rotate_key, methods=["POST"]),
    Route(DEVICE + "/key", revoke_key, methods=["DELETE"]),
    Route(DEVICE + "/status-history", status_history, methods=["GET"]),
    Route(DEVICE + "/rejections", rejections, methods=["GET"]),
    Route("/api/v1/channels", list_channels, methods=["GET"]),
    Route("/api/v1/channels", create_channel, methods=["POST"]),
    Route(CHANNEL, get_channel, methods=["GET"]),
    Route(CHANNEL, update_channel, methods=["PATCH"]),
    Route(CHANNEL, delete_channel, methods=["DELETE"]),
    Route(CHANNEL + "/devices", channel_devices, methods=["GET"]),
    Route(CHANNEL + "/devices/{device}", connect, methods=["PUT"]),
    Route(CHANNEL + "/devices/{device}", disconnect, methods=["DELETE"]),
    Route(CHANNEL + "/messages", publish, methods=["POST"]),
    Route(CHANNEL + "/messages/{subtopic:path}", publish, methods=["POST"]),
]
