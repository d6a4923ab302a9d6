"""Orgs and their members.

GET  /api/v1/orgs                 POST /api/v1/orgs {"name", "owner"?}
GET|PATCH /api/v1/orgs/{org}
GET  /api/v1/users                POST /api/v1/users {"email", "role", "name"?, "password"?}
GET|PATCH|DELETE /api/v1/users/{user}
POST /api/v1/users/{user}/password-reset
"""

from __future__ import annotations

import contextlib
from typing import cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import InvalidInput, operation, parse_body
from motes.http import JSONResponse, actor_of, authenticate, credentials_from
from motes.registry.models import Action, Forbidden, NotFound, Org, Principal
from motes.registry.schemas import (
    InvitationAnswer,
    InvitationCreated,
    InvitationList,
    InvitationOut,
    OrgCreate,
    OrgCreated,
    OrgList,
    OrgQuery,
    OrgRef,
    OrgUpdate,
    ResetIssued,
    Role,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    UserUpdate,
    iso,
)
from motes.registry.users import Invitation, OwnerSpec, User
from motes.telemetry.api import resolve_org


def need(principal: Principal, action: Action, kind: str, ident: str | None = None) -> None:
    if not principal.allows(action, kind, ident):
        raise Forbidden(f"this needs {action}:{kind}" + (f"/{ident}" if ident else ""))


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=as_role(user.role),
        disabled=user.disabled,
        created_at=iso(user.created_ns),
        last_login_at=iso(user.last_login_ns),
    )


def as_role(role: str | None) -> Role | None:
    return cast("Role | None", role)


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
        orgs = [
            OrgRef(id=o.id, name=o.name, created_at=iso(o.created_ns), role=role)
            for o, role in pairs
        ]
    else:
        org = resolve_org(request, principal)
        orgs = [OrgRef(id=org.id, name=org.name, created_at=iso(org.created_ns))]
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
        org=OrgRef(
            id=org.id,
            name=org.name,
            created_at=iso(org.created_ns),
            role="owner" if user is None else None,
        ),
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
    return dump(
        OrgRef(
            id=org.id, name=org.name, created_at=iso(org.created_ns), role=as_role(principal.role)
        )
    )


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
    return dump(
        OrgRef(
            id=org.id, name=data.name, created_at=iso(org.created_ns), role=as_role(principal.role)
        )
    )


@operation("Members of the org", ["users"], query=OrgQuery, responses={200: UserList})
async def list_users(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "read", "users")
    members = await run_in_threadpool(request.app.state.registry.users.members, org.id)
    return dump(UserList(users=[user_out(u) for u in members]))


@operation(
    "Add a member: a new account for an unknown email, an invitation for a known one",
    ["users"],
    body=UserCreate,
    query=OrgQuery,
    responses={201: UserCreated, 202: InvitationCreated},
    errors=(400, 401, 403, 409),
    description="An email that already has an account gets an invitation (202) that its "
    "holder accepts with POST /api/v1/me/invitations/{invitation} and the invitation's code; "
    "nothing of the account is shown.",
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
    if isinstance(user, Invitation):
        invited = InvitationCreated(**invitation_out(user).model_dump(), code=user.code or "")
        return dump(invited, 202)
    out = UserCreated(**user_out(user).model_dump(), setup_token=setup)
    return dump(out, 201)


def invitation_out(invitation: Invitation) -> InvitationOut:
    org = invitation.org
    return InvitationOut(
        id=invitation.id,
        org=OrgRef(id=org.id, name=org.name, created_at=iso(org.created_ns)),
        email=invitation.email,
        role=as_role(invitation.role) or "viewer",
        created_at=iso(invitation.created_ns),
        expires_at=iso(invitation.expires_ns),
    )


@operation(
    "Open invitations of the org", ["users"], query=OrgQuery, responses={200: InvitationList}
)
async def list_invitations(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "read", "users")
    found = await run_in_threadpool(request.app.state.registry.users.invitations, org.id)
    return dump(InvitationList(invitations=[invitation_out(i) for i in found]))


@operation(
    "Withdraw an invitation",
    ["users"],
    query=OrgQuery,
    responses={204: None},
    errors=(401, 403, 404),
)
async def revoke_invitation(request: Request) -> Response:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    need(principal, "write", "users")
    users = request.app.state.registry.users
    await run_in_threadpool(
        users.revoke_invitation,
        org.id,
        request.path_params["invitation"],
        actor_of(request, principal),
    )
    return Response(status_code=204)


def _signed_in(request: Request) -> Principal:
    """The signed-in account, which may belong to no org yet; naming an org it is not a
    member of is refused as everywhere else."""
    scheme, secret = credentials_from(request)
    if scheme != "bearer":
        raise Forbidden("only signed-in users have invitations")
    if request.query_params.get("org") or request.query_params.get("orgID"):
        authenticate(request)
    principal: Principal = request.app.state.registry.sessions.authenticate_account(secret)
    return principal


@operation(
    "Invitations to join orgs, for the signed-in user",
    ["auth"],
    responses={200: InvitationList},
    errors=(401, 403),
)
async def my_invitations(request: Request) -> Response:
    principal = _signed_in(request)
    users = request.app.state.registry.users
    found = await run_in_threadpool(lambda: users.invitations(user_id=principal.id))
    return dump(InvitationList(invitations=[invitation_out(i) for i in found]))


async def _answer(request: Request, accept: bool) -> Response:
    principal = _signed_in(request)
    code = ""
    if accept:
        # no code is a wrong code (403), so a foreign invitation is a 404 either way
        with contextlib.suppress(InvalidInput):
            code = (await parse_body(request, InvitationAnswer)).code
    users = request.app.state.registry.users
    await run_in_threadpool(
        users.answer_invitation,
        principal.id,
        request.path_params["invitation"],
        accept,
        actor_of(request, principal),
        code,
    )
    return Response(status_code=204)


@operation(
    "Accept an invitation with its code: become a member",
    ["auth"],
    body=InvitationAnswer,
    responses={204: None},
    errors=(400, 401, 403, 404),
)
async def accept_invitation(request: Request) -> Response:
    return await _answer(request, True)


@operation("Decline an invitation", ["auth"], responses={204: None}, errors=(401, 403, 404))
async def decline_invitation(request: Request) -> Response:
    return await _answer(request, False)


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
    Route("/api/v1/invitations", list_invitations, methods=["GET"]),
    Route("/api/v1/invitations/{invitation}", revoke_invitation, methods=["DELETE"]),
    Route("/api/v1/me/invitations", my_invitations, methods=["GET"]),
    Route("/api/v1/me/invitations/{invitation}", accept_invitation, methods=["POST"]),
    Route("/api/v1/me/invitations/{invitation}", decline_invitation, methods=["DELETE"]),
]
