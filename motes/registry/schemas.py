"""Request and response bodies of the identity API (camelCase on the wire).

Each model is both the validator of what comes in and the OpenAPI schema of what goes
out, so the served document and the code cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, RootModel

from motes.apispec import ApiModel

Role = Literal["viewer", "member", "admin", "owner"]
DeviceStatus = Literal["online", "stale", "offline"]
CommandState = Literal["queued", "sent", "delivered", "succeeded", "failed", "expired", "canceled"]
#: a command's name: like other names, but at most 128 characters (an MQTT topic level)
COMMAND_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_INTERVAL_SECONDS = 365 * 86400
MAX_COMMAND_SECONDS = 30 * 86400
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
    expected_interval_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_INTERVAL_SECONDS,
        description="how often the device sends data; without data for longer it is offline "
        "(stale while connected over MQTT)",
    )


class DeviceUpdate(ApiModel):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    tags: list[str] | None = Field(None, max_length=64)
    bucket: str | None = None
    permissions: list[str] | None = None
    disabled: bool | None = None
    expected_interval_seconds: int | None = Field(
        None, ge=0, le=MAX_INTERVAL_SECONDS, description="seconds; 0 removes the interval"
    )


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
    expected_interval_seconds: int | None
    status: DeviceStatus
    status_changed_at: str | None
    connected: bool = Field(description="an MQTT connection is open")
    last_connect: str | None
    last_disconnect: str | None


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


class StatusChangeOut(ApiModel):
    id: int
    time: str | None
    status: DeviceStatus
    reason: str


class StatusHistory(ApiModel):
    history: list[StatusChangeOut]


class StatusHistoryQuery(OrgQuery):
    limit: int = Field(100, ge=1, le=1000)
    before: int | None = Field(
        None, ge=0, le=2**63 - 1, description="entries with a smaller id (paging)"
    )


class RejectionOut(ApiModel):
    id: int
    time: str | None
    transport: str = Field(description='how it came: "mqtt"')
    topic: str
    error: str = Field(description="what was wrong (at most 1000 characters)")


class RejectionList(ApiModel):
    rejections: list[RejectionOut]


class RejectionQuery(StatusHistoryQuery):
    """``?limit=&before=``: the newest refusals, or those older than an entry id."""


class CommandCreate(ApiModel):
    name: str = Field(min_length=1, max_length=128, pattern=COMMAND_NAME_PATTERN)
    params: Any = Field(default_factory=dict, description="any JSON, at most 64 KiB")
    timeout_seconds: int = Field(
        86400,
        ge=1,
        le=MAX_COMMAND_SECONDS,
        description="the command expires if the device has not answered by then",
    )


class CommandOut(ApiModel):
    id: str
    device_id: str
    name: str
    params: Any
    state: CommandState
    created_at: str | None
    created_by: str
    expires_at: str | None
    sent_at: str | None
    delivered_at: str | None
    completed_at: str | None
    attempts: int = Field(description="how often it was published to the device")
    response: Any = Field(description="the device's result")
    error: str | None


class CommandList(ApiModel):
    commands: list[CommandOut]


class PendingCommands(RootModel[list[CommandOut]]):
    """The commands handed to the device (now delivered), oldest first; [] when none came."""


class CommandQuery(OrgQuery):
    state: CommandState | None = None
    limit: int = Field(100, ge=1, le=1000)
    after: str | None = Field(
        None, max_length=32, description="a command id: the commands older than it (paging)"
    )


class PendingQuery(OrgQuery):
    wait: int = Field(
        0, ge=0, le=60, description="seconds to wait for a command when none is pending"
    )


class CommandAnswer(ApiModel):
    status: Literal["succeeded", "failed"]
    result: Any = Field(None, description="any JSON, at most 64 KiB")
    error: str | None = Field(None, max_length=4096)


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
