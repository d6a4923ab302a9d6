"""API tokens, the org's secrets and its audit log.

GET|POST /api/v1/tokens          GET|PATCH|DELETE /api/v1/tokens/{token}
GET|PATCH /api/v1/secrets        PUT|DELETE /api/v1/secrets/{key}
GET /api/v1/audit?limit=&before=&action=
"""

from __future__ import annotations

from typing import Any

from pydantic import RootModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation, parse_body, parse_query
from motes.http import actor_of, authenticate
from motes.registry.api_orgs import dump, need
from motes.registry.models import (
    Action,
    Invalid,
    Principal,
    parse_duration,
)
from motes.registry.schemas import (
    AuditEventOut,
    AuditList,
    AuditQuery,
    OrgQuery,
    SecretList,
    SecretOut,
    SecretValue,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
    TokenUpdate,
    iso,
)
from motes.registry.tokens import TokenInfo
from motes.telemetry.api import resolve_org

MAX_TOKEN_SECONDS = 100 * 365 * 86400  # longer is "never", and must fit int64 nanoseconds


def token_out(t: TokenInfo) -> dict[str, Any]:
    return {
        "id": t.id,
        "description": t.description,
        "permissions": ["all"] if t.all_access else [str(p) for p in t.permissions],
        "status": "active" if t.active else "inactive",
        "created_at": iso(t.created_ns),
        "expires_at": iso(t.expires_ns),
        "last_used_at": iso(t.last_used_ns),
        "created_by": t.created_by,
    }


def _context(request: Request, action: Action, kind: str) -> tuple[Principal, str]:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, action, kind)
    return principal, org.id


@operation(
    "API tokens of the org (never their secrets)",
    ["tokens"],
    query=OrgQuery,
    responses={200: TokenList},
)
async def list_tokens(request: Request) -> Response:
    _, org_id = _context(request, "read", "tokens")
    found = await run_in_threadpool(request.app.state.registry.tokens.list, org_id)
    return dump(TokenList(tokens=[TokenOut(**token_out(t)) for t in found]))


@operation(
    "Create an API token: all access, or the listed permissions you hold yourself",
    ["tokens"],
    body=TokenCreate,
    query=OrgQuery,
    responses={201: TokenCreated},
    errors=(400, 401, 403),
)
async def create_token(request: Request) -> Response:
    principal, _ = _context(request, "write", "tokens")
    data = await parse_body(request, TokenCreate)
    expires = parse_duration(data.expires_in) if data.expires_in is not None else 0
    expires = min(expires, MAX_TOKEN_SECONDS)
    if data.expires_in is not None and not expires:
        raise Invalid('"expiresIn" must be a positive duration; leave it out for no expiry')
    registry = request.app.state.registry
    await run_in_threadpool(registry.check_grant, principal, data.permissions or [])
    tokens = registry.tokens
    info, secret = await run_in_threadpool(
        tokens.create,
        principal,
        actor_of(request, principal),
        data.description,
        data.permissions,
        expires,
    )
    return dump(TokenCreated(**token_out(info), token=secret), 201)


@operation("An API token", ["tokens"], query=OrgQuery, responses={200: TokenOut})
async def get_token(request: Request) -> Response:
    _, org_id = _context(request, "read", "tokens")
    tokens = request.app.state.registry.tokens
    found = await run_in_threadpool(tokens.get, org_id, request.path_params["token"])
    return dump(TokenOut(**token_out(found)))


@operation(
    "Change a token's description or status (inactive tokens stop working at once)",
    ["tokens"],
    body=TokenUpdate,
    query=OrgQuery,
    responses={200: TokenOut},
)
async def update_token(request: Request) -> Response:
    principal, _ = _context(request, "write", "tokens")
    data = await parse_body(request, TokenUpdate)
    tokens = request.app.state.registry.tokens
    active = None if data.status is None else data.status == "active"
    found = await run_in_threadpool(
        tokens.update,
        principal,
        request.path_params["token"],
        actor_of(request, principal),
        data.description,
        active,
    )
    return dump(TokenOut(**token_out(found)))


@operation(
    "Delete a token", ["tokens"], query=OrgQuery, responses={204: None}, errors=(401, 403, 404)
)
async def delete_token(request: Request) -> Response:
    principal, _ = _context(request, "write", "tokens")
    tokens = request.app.state.registry.tokens
    await run_in_threadpool(
        tokens.delete, principal, request.path_params["token"], actor_of(request, principal)
    )
    return Response(status_code=204)


class SecretMap(RootModel[dict[str, str]]):
    """``{"<key>": "<value>", ...}``"""


@operation(
    "Names of the org's secrets (values are never returned)",
    ["secrets"],
    query=OrgQuery,
    responses={200: SecretList},
    errors=(401, 403),
)
async def list_secrets(request: Request) -> Response:
    _, org_id = _context(request, "read", "secrets")
    found = await run_in_threadpool(request.app.state.registry.secrets.list, org_id)
    out = [
        SecretOut(key=s.key, created_at=iso(s.created_ns), updated_at=iso(s.updated_ns))
        for s in found
    ]
    return dump(SecretList(secrets=out))


@operation(
    "Set several secrets at once",
    ["secrets"],
    body=SecretMap,
    query=OrgQuery,
    responses={204: None},
    errors=(400, 401, 403),
)
async def patch_secrets(request: Request) -> Response:
    principal, org_id = _context(request, "write", "secrets")
    data = await parse_body(request, SecretMap)
    secrets = request.app.state.registry.secrets
    await run_in_threadpool(secrets.put, org_id, actor_of(request, principal), data.root)
    return Response(status_code=204)


@operation(
    "Set one secret",
    ["secrets"],
    body=SecretValue,
    query=OrgQuery,
    responses={204: None},
    errors=(400, 401, 403),
)
async def put_secret(request: Request) -> Response:
    principal, org_id = _context(request, "write", "secrets")
    data = await parse_body(request, SecretValue)
    secrets = request.app.state.registry.secrets
    await run_in_threadpool(
        secrets.put, org_id, actor_of(request, principal), {request.path_params["key"]: data.value}
    )
    return Response(status_code=204)


@operation(
    "Delete a secret", ["secrets"], query=OrgQuery, responses={204: None}, errors=(401, 403, 404)
)
async def delete_secret(request: Request) -> Response:
    principal, org_id = _context(request, "write", "secrets")
    secrets = request.app.state.registry.secrets
    await run_in_threadpool(
        secrets.delete, org_id, request.path_params["key"], actor_of(request, principal)
    )
    return Response(status_code=204)


@operation(
    "Security-relevant events of the org, newest first",
    ["audit"],
    query=AuditQuery,
    responses={200: AuditList},
    errors=(400, 401, 403),
)
async def audit(request: Request) -> Response:
    _, org_id = _context(request, "read", "audit")
    query = parse_query(request, AuditQuery)
    events = await run_in_threadpool(
        request.app.state.registry.audit_events, org_id, query.limit, query.before, query.action
    )
    out = [
        AuditEventOut(
            id=e.id,
            time=iso(e.time_ns),
            actor=e.actor,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            remote=e.remote,
            details=e.details,
        )
        for e in events
    ]
    return dump(AuditList(events=out))


routes = [
    Route("/api/v1/tokens", list_tokens, methods=["GET"]),
    Route("/api/v1/tokens", create_token, methods=["POST"]),
    Route("/api/v1/tokens/{token}", get_token, methods=["GET"]),
    Route("/api/v1/tokens/{token}", update_token, methods=["PATCH"]),
    Route("/api/v1/tokens/{token}", delete_token, methods=["DELETE"]),
    Route("/api/v1/secrets", list_secrets, methods=["GET"]),
    Route("/api/v1/secrets", patch_secrets, methods=["PATCH"]),
    Route("/api/v1/secrets/{key}", put_secret, methods=["PUT"]),
    Route("/api/v1/secrets/{key}", delete_secret, methods=["DELETE"]),
    Route("/api/v1/audit", audit, methods=["GET"]),
]
