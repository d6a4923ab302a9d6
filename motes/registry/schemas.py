"""Request and response bodies of the identity API (camelCase on the wire).

Each model is both the validator of what comes in and the OpenAPI schema of what goes
out, so the served document and the code cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from motes.apispec import ApiModel

Role = Literal["viewer", "member", "admin", "owner"]
Email = str
Password = str


def iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    stamp = datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class OrgQuery(ApiModel):
    """``?org=`` / ``?orgID=``: the org a request acts in (a user's, or the credential's)."""

    org: str | None = Field(None, description="org name")
    org_id: str | None = Field(None, alias="orgID", description="org id")


# -- me, passwords -----------------------------------------------------------------------


class OrgRef(ApiModel):
    id: str
    name: str
    role: Role | None = None
    created_at: str | None = None


class Me(ApiModel):
    kind: Literal["user", "token", "device"]
    id: str
    email: str | None = None
    name: str | None = None
    org: OrgRef
    role: Role | None = None
    permissions: list[str]
    orgs: list[OrgRef] | None = None


class PasswordChange(ApiModel):
    current_password: str = Field(max_length=256)
    password: Password = Field(min_length=8, max_length=256)


class PasswordReset(ApiModel):
    reset_token: str = Field(max_length=256)
    password: Password = Field(min_length=8, max_length=256)


# -- orgs and users -----------------------------------------------------------------------


class OwnerIn(ApiModel):
    email: Email = Field(max_length=320)
    name: str = Field("", max_length=256)
    password: Password | None = Field(None, min_length=8, max_length=256)


class OrgCreate(ApiModel):
    name: str = Field(max_length=255)
    owner: OwnerIn | None = None


class OrgUpdate(ApiModel):
    name: str = Field(max_length=255)


class UserOut(ApiModel):
    id: str
    email: str
    name: str
    role: Role | None
    disabled: bool
    created_at: str | None
    last_login_at: str | None


class OrgCreated(ApiModel):
    org: OrgRef
    owner: UserOut | None = None
    setup_token: str | None = None


class OrgList(ApiModel):
    orgs: list[OrgRef]


class UserCreate(ApiModel):
    email: Email = Field(max_length=320)
    name: str = Field("", max_length=256)
    role: Role
    password: Password | None = Field(None, min_length=8, max_length=256)


class UserCreated(UserOut):
    setup_token: str | None = None


class InvitationOut(ApiModel):
    id: str
    org: OrgRef
    email: str
    role: Role
    created_at: str | None
    expires_at: str | None


class InvitationCreated(InvitationOut):
    code: str = Field(
        description="pass it to the person by your own channel: accepting needs it (shown once)"
    )


class InvitationAnswer(ApiModel):
    code: str = Field(max_length=256)


class InvitationList(ApiModel):
    invitations: list[InvitationOut]


class UserUpdate(ApiModel):
    name: str | None = Field(None, max_length=256)
    role: Role | None = None
    disabled: bool | None = None


class UserList(ApiModel):
    users: list[UserOut]


class ResetIssued(ApiModel):
    reset_token: str
    expires_at: str | None


# -- devices and channels -----------------------------------------------------------------

Metadata = dict[str, Any]


class DeviceCreate(ApiModel):
    id: str = Field(max_length=255)
    name: str = Field("", max_length=256)
    metadata: Metadata = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, max_length=64)
    bucket: str | None = Field(None, description="bucket name; default: the org's first bucket")
    permissions: list[str] = Field(default_factory=list, description="read permissions only")


class DeviceUpdate(ApiModel):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    tags: list[str] | None = Field(None, max_length=64)
    bucket: str | None = None
    permissions: list[str] | None = None
    disabled: bool | None = None


class AttributeChange(ApiModel):
    time: str | None
    attributes: dict[str, Any]


class DeviceOut(ApiModel):
    id: str
    name: str
    metadata: Metadata
    tags: list[str]
    bucket: str | None
    permissions: list[str]
    disabled: bool
    key_prefix: str | None
    key_created_at: str | None
    attributes: dict[str, Any]
    attributes_updated_at: str | None
    last_seen: str | None
    created_at: str | None


class DeviceDetail(DeviceOut):
    history: list[AttributeChange]
    channels: list[str]
    latest: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="field -> {time, value, measurement}: the latest value of each field the "
        "device sent (when the caller may read the device's bucket)",
    )


class DeviceCreated(DeviceOut):
    key: str = Field(description="the device key, shown only here")


class DeviceList(ApiModel):
    devices: list[DeviceOut]
    total: int
    limit: int
    offset: int


class DeviceCreatedList(ApiModel):
    devices: list[DeviceCreated]


class DeviceKey(ApiModel):
    key: str
    key_prefix: str


class DeviceQuery(OrgQuery):
    search: str | None = Field(None, max_length=256)
    tag: list[str] = Field(default_factory=list)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000_000)


class ChannelCreate(ApiModel):
    id: str = Field(max_length=255)
    name: str = Field("", max_length=256)
    metadata: Metadata = Field(default_factory=dict)
    bucket: str | None = None


class ChannelUpdate(ApiModel):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    bucket: str | None = None


class ChannelOut(ApiModel):
    id: str
    name: str
    metadata: Metadata
    bucket: str | None
    created_at: str | None


class ChannelList(ApiModel):
    channels: list[ChannelOut]


class ChannelDevices(ApiModel):
    devices: list[str]


# -- tokens, secrets, audit -----------------------------------------------------------------


class TokenCreate(ApiModel):
    description: str = Field("", max_length=512)
    permissions: list[str] | None = Field(
        None, min_length=1, description='e.g. ["read:buckets/<id>"]; absent: all access'
    )
    expires_in: str | int | None = Field(None, description='a duration ("30d") or seconds')


class TokenUpdate(ApiModel):
    description: str | None = Field(None, max_length=512)
    status: Literal["active", "inactive"] | None = None


class TokenOut(ApiModel):
    id: str
    description: str
    permissions: list[str]
    status: Literal["active", "inactive"]
    created_at: str | None
    expires_at: str | None
    last_used_at: str | None
    created_by: str | None


class TokenCreated(TokenOut):
    token: str = Field(description="the token, shown only here")


class TokenList(ApiModel):
    tokens: list[TokenOut]


class SecretValue(ApiModel):
    value: str = Field(max_length=65536)


class SecretOut(ApiModel):
    key: str
    created_at: str | None
    updated_at: str | None


class SecretList(ApiModel):
    secrets: list[SecretOut]


class AuditEventOut(ApiModel):
    id: int
    time: str | None
    actor: str
    action: str
    target: str
    outcome: str
    remote: str | None
    details: dict[str, Any]


class AuditList(ApiModel):
    events: list[AuditEventOut]


class AuditQuery(OrgQuery):
    limit: int = Field(100, ge=1, le=1000)
    before: int | None = Field(
        None, ge=0, le=2**63 - 1, description="events with a smaller id (paging)"
    )
    action: str | None = Field(None, max_length=64)


class OAuthTokenOut(ApiModel):
    access_token: str = Field(alias="access_token")
    token_type: Literal["Bearer"] = Field(alias="token_type")
    expires_in: int = Field(alias="expires_in")
    refresh_token: str = Field(alias="refresh_token")
    scope: str


class OAuthErrorOut(ApiModel):
    error: str
    error_description: str = Field(alias="error_description")
