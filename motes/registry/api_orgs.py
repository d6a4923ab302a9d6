"""Orgs and their members.

GET  /api/v1/orgs                 POST /api/v1/orgs {"name", "owner"?}
GET|PATCH /api/v1/orgs/{org}
GET  /api/v1/users                POST /api/v1/users {"email", "role", "name"?, "password"?}
GET|PATCH|DELETE /api/v1/users/{user}
POST /api/v1/users/{user}/password-reset
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation, parse_body
from motes.http import JSONResponse, actor_of, authenticate
from motes.registry.models import Forbidden, NotFound, Org, Principal
from motes.registry.schemas import (
    OrgCreate,
    OrgCreated,
    OrgList,
    OrgQuery,
    OrgRef,
    OrgUpdate,
    ResetIssued,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    UserUpdate,
    iso,
)
from motes.registry.users import OwnerSpec, User
from motes.telemetry.api import resolve_org


def need(principal: Principal, action: str, kind: str, ident: str | None = None) -> None:
    if not principal.allows(action, kind, ident):  # type: ignore[arg-type]
        raise Forbidden(f"this needs {action}:{kind}" + (f"/{ident}" if ident else ""))


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=user.role,  # type: ignore[arg-type]
        disabled=user.disabled,
        created_at=iso(user.created_ns),
        last_login_at=iso(user.last_login_ns),
    )


def dump(model: object, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True), status_code=status)  # type: ignore[attr-defined]


@operation(
    "Orgs the credentials belong to",
    ["orgs"],
    query=OrgQuery,
    responses={200: OrgList},
    errors=(401, 403),
)
async def list_orgs(request: Request) -> Response:
    principal = authenticate(request)
    registry = request.app.state.registry
    if principal.kind == "user":
        pairs = await run_in_threadpool(registry.users.orgs_of, principal.id)
        orgs = [OrgRef(id=o.id, name=o.name, role=role) for o, role in pairs]
    else:
        org = resolve_org(request, principal)
        orgs = [OrgRef(id=org.id, name=org.name)]
    return dump(OrgList(orgs=orgs))


@operation(
    "Create an org with its default bucket and owner (operators)",
    ["orgs"],
    body=OrgCreate,
    responses={201: OrgCreated},
    errors=(400, 401, 403, 409),
)
async def create_org(request: Request) -> Response:
    principal = authenticate(request)
    data = await parse_body(request, OrgCreate)
    owner = None
    if data.owner is not None:
        owner = OwnerSpec(data.owner.email, data.owner.name, data.owner.password)
    registry = request.app.state.registry
    org, user, setup = await run_in_threadpool(
        registry.users.create_org, principal, actor_of(request, principal), data.name, owner
    )
    out = OrgCreated(
        org=OrgRef(id=org.id, name=org.name, role="owner" if user is None else None),
        owner=user_out(user) if user else None,
        setup_token=setup,
    )
    return dump(out, 201)


def _path_org(request: Request) -> tuple[Principal, Org]:
    """The org in the path (id or name), which the credentials must belong to."""
    named = request.path_params["org"]
    principal = authenticate(request, org=named)
    org = resolve_org(request, principal)
    if named not in (org.id, org.name):
        raise NotFound(f'org "{named}" not found')
    return principal, org


@operation("An org", ["orgs"], query=OrgQuery, responses={200: OrgRef}, errors=(401, 403, 404))
async def get_org(request: Request) -> Response:
    principal, org = _path_org(request)
    need(principal, "read", "orgs")
    return dump(OrgRef(id=org.id, name=org.name, role=principal.role))  # type: ignore[arg-type]


@operation(
    "Rename an org (owners)",
    ["orgs"],
    body=OrgUpdate,
    query=OrgQuery,
    responses={200: OrgRef},
    errors=(400, 401, 403, 404, 409),
)
async def update_org(request: Request) -> Response:
    principal, org = _path_org(request)
    need(principal, "write", "orgs")
    data = await parse_body(request, OrgUpdate)
    registry = request.app.state.registry
    await run_in_threadpool(registry.rename_org, org.id, actor_of(request, principal), data.name)
    return dump(OrgRef(id=org.id, name=data.name, role=principal.role))  # type: ignore[arg-type]


@operation("Members of the org", ["users"], query=OrgQuery, responses={200: UserList})
async def list_users(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "read", "users")
    members = await run_in_threadpool(request.app.state.registry.users.members, org.id)
    return dump(UserList(users=[user_out(u) for u in members]))


@operation(
    "Add a member (a new account for an unknown email)",
    ["users"],
    body=UserCreate,
    query=OrgQuery,
    responses={201: UserCreated},
    errors=(400, 401, 403, 409),
)
async def create_user(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "write", "users")
    data = await parse_body(request, UserCreate)
    users = request.app.state.registry.users
    user, setup = await run_in_threadpool(
        users.add,
        org.id,
        principal,
        actor_of(request, principal),
        data.email,
        data.name,
        data.role,
        data.password,
    )
    out = UserCreated(**user_out(user).model_dump(), setup_token=setup)
    return dump(out, 201)


@operation("A member", ["users"], query=OrgQuery, responses={200: UserOut})
async def get_user(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    user_id = request.path_params["user"]
    if principal.kind != "user" or principal.id != user_id:
        need(principal, "read", "users")
    user = await run_in_threadpool(request.app.state.registry.users.member, org.id, user_id)
    return dump(user_out(user))


@operation(
    "Change a member's name, role or disabled state",
    ["users"],
    body=UserUpdate,
    query=OrgQuery,
    responses={200: UserOut},
    errors=(400, 401, 403, 404, 409),
)
async def update_user(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "write", "users")
    data = await parse_body(request, UserUpdate)
    users = request.app.state.registry.users
    user = await run_in_threadpool(
        lambda: users.update(
            org.id,
            request.path_params["user"],
            principal,
            actor_of(request, principal),
            name=data.name,
            role=data.role,
            disabled=data.disabled,
        )
    )
    return dump(user_out(user))


@operation(
    "Remove a member from the org",
    ["users"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404, 409),
)
async def delete_user(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "write", "users")
    users = request.app.state.registry.users
    await run_in_threadpool(
        users.remove, org.id, request.path_params["user"], principal, actor_of(request, principal)
    )
    return Response(status_code=204)


@operation(
    "Issue a one-time password reset token for a member",
    ["users"],
    query=OrgQuery,
    responses={201: ResetIssued},
    errors=(401, 403, 404, 409),
)
async def reset_password(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "write", "users")
    users = request.app.state.registry.users
    token, expires = await run_in_threadpool(
        users.issue_reset,
        org.id,
        request.path_params["user"],
        principal,
        actor_of(request, principal),
    )
    return dump(ResetIssued(reset_token=token, expires_at=iso(expires)), 201)


routes = [
    Route("/api/v1/orgs", list_orgs, methods=["GET"]),
    Route("/api/v1/orgs", create_org, methods=["POST"]),
    Route("/api/v1/orgs/{org}", get_org, methods=["GET"]),
    Route("/api/v1/orgs/{org}", update_org, methods=["PATCH"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user}", get_user, methods=["GET"]),
    Route("/api/v1/users/{user}", update_user, methods=["PATCH"]),
    Route("/api/v1/users/{user}", delete_user, methods=["DELETE"]),
    Route("/api/v1/users/{user}/password-reset", reset_password, methods=["POST"]),
]
