"""Authentication and ACL hooks for external brokers, in the shapes they call.

EMQX (HTTP authentication and authorization, JSON bodies)::

    POST /api/v1/mqtt/auth   {"username", "password", "clientid"}  -> {"result": "allow"|"deny",
                                                                        "is_superuser": bool}
    POST /api/v1/mqtt/acl    {"username", "clientid", "topic", "action": "publish"|"subscribe"}
                                                                     -> {"result": "allow"|"deny"}

mosquitto-go-auth (HTTP backend, ``http_response_mode status``, JSON or form parameters)::

    POST /api/v1/mqtt/go-auth/user       username, password, clientid  -> 200 | 403
    POST /api/v1/mqtt/go-auth/superuser  username                      -> 200 | 403
    POST /api/v1/mqtt/go-auth/acl        username, clientid, topic, acc (1 read, 2 write,
                                         3 readwrite, 4 subscribe)      -> 200 | 403

Devices sign in with their id and key, as with the embedded broker; the Motes worker signs in
as ``MOTES_MQTT_SERVICE_USER`` (default ``motes``) with an all-access token and is the only
superuser. Because an external broker has one topic space for everyone, a device id (or channel
id) that exists in more than one org is refused here: it would name two devices' topics.
The hooks are off (401) until ``MOTES_MQTT_HOOK_SECRET`` is set; every call must then carry
``Authorization: Bearer <secret>`` (they answer about every org's device ids).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation
from motes.http import JSONResponse
from motes.mqtt.models import Identity
from motes.mqtt.platform import Client
from motes.registry.models import Principal, RegistryError
from motes.registry.service import Registry
from motes.registry.tables import channels, devices

log = logging.getLogger("motes.mqtt.hooks")
LOCATE_SECONDS = 30.0


class Locator:
    """Which org a device or channel id belongs to, across orgs (cached 30 s)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[tuple[str, str], tuple[float, tuple[str, str | None] | None]] = {}

    def __call__(self, kind: str, ident: str) -> tuple[str, str | None] | None:
        """(org id, bucket id) of the one device/channel with this id; None if none or many."""
        hit = self._cache.get((kind, ident))
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        table = devices if kind == "device" else channels
        with self.registry.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.org_id, table.c.bucket_id).where(table.c.id == ident).limit(2)
            ).all()
        found = (rows[0].org_id, rows[0].bucket_id) if len(rows) == 1 else None
        if len(rows) > 1:
            log.warning("%s id %r exists in several orgs: refused on external brokers", kind, ident)
        self._cache[(kind, ident)] = (now + LOCATE_SECONDS, found)
        return found


async def _params(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return {}
        return body if isinstance(body, dict) else {}
    # form-encoded (mosquitto-go-auth's default), parsed here: no multipart dependency
    return dict(parse_qsl((await request.body()).decode(errors="replace")))


def _trusted(request: Request) -> bool:
    """Only the broker calls these: they answer about any org's device ids, so they are off
    (401) until MOTES_MQTT_HOOK_SECRET is set, and then need it."""
    secret = request.app.state.settings.mqtt_hook_secret
    if not secret:
        return False
    given = request.headers.get("authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {secret}".encode())


async def _authenticate(request: Request, p: dict[str, Any]) -> tuple[bool, bool]:
    """(allowed, superuser) for user name + password."""
    registry: Registry = request.app.state.registry
    username, password = str(p.get("username") or ""), str(p.get("password") or "")
    if not password:
        return False, False
    service_user = request.app.state.settings.mqtt_service_user
    scheme = "bearer" if password.startswith("eyJ") else "token"
    try:
        principal = await run_in_threadpool(registry.authenticate, scheme, password)
    except RegistryError:
        return False, False
    if principal.kind == "device":
        if username != principal.id or username == service_user:
            return False, False
        located = await run_in_threadpool(request.app.state.mqtt.locator, "device", username)
        return located is not None, False
    if username == service_user and principal.all_access:
        return True, True
    return False, False


async def _acl(request: Request, username: str, topic: str, publish: bool) -> bool:
    mqtt = request.app.state.mqtt
    if username == request.app.state.settings.mqtt_service_user:
        return True  # the worker: checked as superuser at sign-in
    located = await run_in_threadpool(mqtt.locator, "device", username)
    if located is None:
        return False
    org_id, bucket_id = located
    principal = Principal("device", username, org_id, bucket_id=bucket_id)
    identity = Identity(org_id, f"device {username}", username, Client(principal, None))
    hooks = mqtt.hooks
    if topic.startswith("channels/"):  # a channel id names one org on a shared broker
        parts = topic.split("/")
        if len(parts) < 2 or await run_in_threadpool(mqtt.locator, "channel", parts[1]) is None:
            return False
    verdict = (
        hooks.may_publish(identity, topic) if publish else hooks.may_subscribe(identity, topic)
    )
    if not isinstance(verdict, bool):
        verdict = await verdict
    return bool(verdict)


def _deny() -> Response:
    return JSONResponse({"result": "deny"}, status_code=200)


HOOK = {"application/json": {"type": "object"}}


@operation(
    "MQTT sign-in hook (EMQX HTTP authentication)",
    ["mqtt"],
    body={"application/json": {"type": "object"}},
    responses={200: HOOK, 401: None},
    errors=(),
    auth=False,
    description="Devices: user name = device id, password = key. The worker: user name "
    "`MOTES_MQTT_SERVICE_USER`, password an all-access token (superuser).",
)
async def emqx_auth(request: Request) -> Response:
    if not _trusted(request):
        return Response(status_code=401)
    allowed, superuser = await _authenticate(request, await _params(request))
    if not allowed:
        return _deny()
    return JSONResponse({"result": "allow", "is_superuser": superuser})


@operation(
    "MQTT topic hook (EMQX HTTP authorization)",
    ["mqtt"],
    body={"application/json": {"type": "object"}},
    responses={200: HOOK, 401: None},
    errors=(),
    auth=False,
    description='`action` is "publish" or "subscribe"; the same ACLs as the embedded broker.',
)
async def emqx_acl(request: Request) -> Response:
    if not _trusted(request):
        return Response(status_code=401)
    p = await _params(request)
    action = p.get("action")
    if action not in ("publish", "subscribe") or not p.get("topic"):
        return _deny()
    allowed = await _acl(
        request, str(p.get("username") or ""), str(p["topic"]), action == "publish"
    )
    return JSONResponse({"result": "allow" if allowed else "deny"})


def _status(ok: bool) -> Response:
    return Response(status_code=200 if ok else 403)


Endpoint = Callable[[Request], Awaitable[Response]]


def _go_auth(summary: str) -> Callable[[Endpoint], Endpoint]:
    return operation(
        summary,
        ["mqtt"],
        body={
            "application/json": {"type": "object"},
            "application/x-www-form-urlencoded": {"type": "object"},
        },
        responses={200: None, 401: None, 403: None},
        errors=(),
        auth=False,
        description="`http_response_mode status`: 200 allows, 403 denies.",
    )


@_go_auth("MQTT sign-in hook (mosquitto-go-auth)")
async def go_auth_user(request: Request) -> Response:
    if not _trusted(request):
        return Response(status_code=401)
    allowed, _ = await _authenticate(request, await _params(request))
    return _status(allowed)


@_go_auth("MQTT superuser hook (mosquitto-go-auth)")
async def go_auth_superuser(request: Request) -> Response:
    if not _trusted(request):
        return Response(status_code=401)
    p = await _params(request)
    # only the worker's user name; its sign-in already needed an all-access token
    return _status(p.get("username") == request.app.state.settings.mqtt_service_user)


@_go_auth("MQTT topic hook (mosquitto-go-auth)")
async def go_auth_acl(request: Request) -> Response:
    if not _trusted(request):
        return Response(status_code=401)
    p = await _params(request)
    try:
        acc = int(p.get("acc") or 0)
    except (TypeError, ValueError):
        return _status(False)
    topic = str(p.get("topic") or "")
    if acc not in (1, 2, 3, 4) or not topic:
        return _status(False)
    username = str(p.get("username") or "")
    ok = True
    if acc in (2, 3):
        ok = await _acl(request, username, topic, True)
    if ok and acc in (1, 3, 4):
        ok = await _acl(request, username, topic, False)
    return _status(ok)


routes = [
    Route("/api/v1/mqtt/auth", emqx_auth, methods=["POST"]),
    Route("/api/v1/mqtt/acl", emqx_acl, methods=["POST"]),
    Route("/api/v1/mqtt/go-auth/user", go_auth_user, methods=["POST"]),
    Route("/api/v1/mqtt/go-auth/superuser", go_auth_superuser, methods=["POST"]),
    Route("/api/v1/mqtt/go-auth/acl", go_auth_acl, methods=["POST"]),
]
