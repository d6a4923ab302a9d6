"""Sign-in and the caller's own account: OAuth2 token/revoke, logout, me, passwords.

POST /oauth/token     grant_type=password|refresh_token (form)      RFC 6749
POST /oauth/revoke    token=...                                     RFC 7009
POST /api/v1/logout
GET  /api/v1/me
PUT  /api/v1/me/password    {"currentPassword", "password"}
POST /api/v1/password       {"resetToken", "password"}   (no credentials)
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation, parse_body
from motes.http import JSONResponse, actor_of, authenticate, read_body, remote_of
from motes.registry.common import Actor
from motes.registry.models import Forbidden
from motes.registry.schemas import (
    Me,
    OAuthErrorOut,
    OAuthTokenOut,
    OrgQuery,
    OrgRef,
    PasswordChange,
    PasswordReset,
)
from motes.registry.sessions import OAuthError
from motes.telemetry.api import resolve_org

FORM = "application/x-www-form-urlencoded"
FORM_LIMIT = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1

_TOKEN_FORM = {
    FORM: {
        "schema": {
            "type": "object",
            "required": ["grant_type"],
            "properties": {
                "grant_type": {"type": "string", "enum": ["password", "refresh_token"]},
                "username": {"type": "string", "description": "the user's email"},
                "password": {"type": "string"},
                "refresh_token": {"type": "string"},
                "scope": {"type": "string"},
                "client_id": {"type": "string"},
            },
        }
    }
}
_OAUTH_ERROR = {"application/json": OAuthErrorOut}


def _oauth_error(exc: OAuthError) -> Response:
    headers = dict(NO_STORE)
    if exc.status == 429:
        headers["Retry-After"] = str(exc.retry_after or 60)
    body = {"error": exc.error, "error_description": exc.message}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise OAuthError("invalid_request", f"send the parameters as {FORM}")
    body = await read_body(request, FORM_LIMIT)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "the form is not UTF-8") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:  # RFC 6749 §3.1: parameters must not repeat
            raise OAuthError("invalid_request", f'parameter "{key}" given twice')
        form[key] = value
    return form


def _client_id(request: Request, form: dict[str, str]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            return base64.b64decode(value).decode().partition(":")[0] or None
        except (ValueError, UnicodeDecodeError):
            return None
    return form.get("client_id") or None


@operation(
    "Get access and refresh tokens (OAuth2 password or refresh_token grant)",
    ["auth"],
    body=_TOKEN_FORM,
    responses={200: OAuthTokenOut, 400: _OAUTH_ERROR, 429: _OAUTH_ERROR},
    errors=(413,),
    auth=False,
    description="Errors answer in RFC 6749's shape: 400 invalid_request, "
    "unsupported_grant_type or invalid_grant; 429 slow_down after repeated failures.",
)
async def oauth_token(request: Request) -> Response:
    try:
        form = await _form(request)
        grant = form.get("grant_type")
        sessions = request.app.state.registry.sessions
        remote = remote_of(request)
        if grant == "password":
            if not form.get("username") or "password" not in form:
                raise OAuthError("invalid_request", "username and password are required")
            pair = await run_in_threadpool(
                sessions.password_grant,
                form["username"],
                form["password"],
                _client_id(request, form),
                form.get("scope", ""),
                remote,
            )
        elif grant == "refresh_token":
            if not form.get("refresh_token"):
                raise OAuthError("invalid_request", "refresh_token is required")
            pair = await run_in_threadpool(sessions.refresh_grant, form["refresh_token"], remote)
        elif not grant:
            raise OAuthError("invalid_request", "grant_type is required")
        else:
            raise OAuthError("unsupported_grant_type", f'grant type "{grant}" is not supported')
    except OAuthError as exc:
        return _oauth_error(exc)
    body = {
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
        "scope": pair.scope,
    }
    return JSONResponse(body, headers=NO_STORE)


_REVOKE_FORM = {
    FORM: {
        "schema": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": {"type": "string"}, "token_type_hint": {"type": "string"}},
        }
    }
}


@operation(
    "Revoke a refresh or access token: its session ends (RFC 7009)",
    ["auth"],
    body=_REVOKE_FORM,
    responses={200: None, 400: _OAUTH_ERROR},
    errors=(413,),
    auth=False,
)
async def oauth_revoke(request: Request) -> Response:
    try:
        form = await _form(request)
        if not form.get("token"):
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as exc:
        return _oauth_error(exc)
    sessions = request.app.state.registry.sessions
    await run_in_threadpool(sessions.revoke, form["token"], remote_of(request))
    return Response(status_code=200, headers=NO_STORE)


@operation("End the caller's sign-in session", ["auth"], responses={204: None}, errors=(401, 403))
async def logout(request: Request) -> Response:
    principal = authenticate(request)
    if principal.session_id is None:
        raise Forbidden("only signed-in users have a session to end; delete tokens instead")
    sessions = request.app.state.registry.sessions
    await run_in_threadpool(sessions.end, principal.session_id, remote_of(request))
    return Response(status_code=204)


@operation(
    "Who the credentials are, in which org, with what permissions",
    ["auth"],
    query=OrgQuery,
    responses={200: Me},
    errors=(401, 403),
)
async def me(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    registry = request.app.state.registry
    out = Me(
        kind=principal.kind,
        id=principal.id,
        org=OrgRef(id=org.id, name=org.name, role=principal.role),  # type: ignore[arg-type]
        role=principal.role,  # type: ignore[arg-type]
        permissions=principal.permission_strings(),
    )
    if principal.kind == "user":
        user = await run_in_threadpool(registry.users.user, principal.id)
        out.email, out.name = user.email, user.name
        memberships = await run_in_threadpool(registry.users.orgs_of, principal.id)
        out.orgs = [OrgRef(id=o.id, name=o.name, role=role) for o, role in memberships]
    return JSONResponse(out.model_dump(mode="json", by_alias=True, exclude_none=True))


@operation(
    "Change the signed-in user's password (ends all their sessions)",
    ["auth"],
    body=PasswordChange,
    responses={204: None},
    errors=(400, 401, 403),
)
async def change_password(request: Request) -> Response:
    principal = authenticate(request)
    if principal.kind != "user":
        raise Forbidden("only users have passwords")
    data = await parse_body(request, PasswordChange)
    users = request.app.state.registry.users
    await run_in_threadpool(
        users.change_password,
        principal.id,
        data.current_password,
        data.password,
        actor_of(request, principal),
    )
    return Response(status_code=204)


@operation(
    "Set a password with a one-time setup or reset token",
    ["auth"],
    body=PasswordReset,
    responses={204: None},
    errors=(400,),
    auth=False,
)
async def set_password(request: Request) -> Response:
    data = await parse_body(request, PasswordReset)
    users = request.app.state.registry.users
    actor = Actor("anonymous", remote_of(request))
    await run_in_threadpool(users.use_reset, data.reset_token, data.password, actor)
    return Response(status_code=204)


routes = [
    Route("/oauth/token", oauth_token, methods=["POST"]),
    Route("/oauth/revoke", oauth_revoke, methods=["POST"]),
    Route("/api/v1/logout", logout, methods=["POST"]),
    Route("/api/v1/me", me, methods=["GET"]),
    Route("/api/v1/me/password", change_password, methods=["PUT"]),
    Route("/api/v1/password", set_password, methods=["POST"]),
]
