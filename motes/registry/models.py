"""Registry data: orgs, buckets, principals and permissions, device records, schemas.

Exceptions::

    RegistryError
    ├── NotFound          (404)
    ├── Conflict          name already taken (409)
    ├── Invalid           bad values (400)
    ├── Unauthorized      missing or unknown token (401)
    ├── Forbidden         credentials lack the permission (403)
    └── Throttled         too many failed sign-ins (429)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["read", "write"]


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    created_ns: int | None = None


@dataclass(frozen=True)
class Bucket:
    id: str
    org_id: str
    name: str
    retention_seconds: int  # 0: keep forever

    def to_dict(self, org_name: str) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "org": org_name,
            "orgID": self.org_id,
            "retentionSeconds": self.retention_seconds,
            "retention": format_duration(self.retention_seconds),
        }


RESOURCE_TYPES = ("buckets", "devices", "channels", "tokens", "users", "secrets", "audit", "orgs")
#: types whose permissions may name one object: ``read:buckets/<id>``
OBJECT_TYPES = ("buckets", "devices", "channels")


@dataclass(frozen=True)
class Permission:
    """``read``/``write`` on a resource type (``buckets``) or one object (``buckets/<id>``)."""

    action: Action
    resource: str

    def __str__(self) -> str:
        return f"{self.action}:{self.resource}"

    @property
    def type(self) -> str:
        return self.resource.partition("/")[0]

    @classmethod
    def parse(cls, text: str) -> Permission:
        action, _, resource = text.partition(":")
        kind, slash, ident = resource.partition("/")
        if (
            action not in ("read", "write")
            or kind not in RESOURCE_TYPES
            or (slash and (not ident or "/" in ident))
            or (ident and kind not in OBJECT_TYPES)
        ):
            raise Invalid(
                f'invalid permission "{text}": expected read:<type> or write:<type> with type '
                f"one of {', '.join(RESOURCE_TYPES)}, or read|write:<type>/<id> for "
                f"{', '.join(OBJECT_TYPES)}"
            )
        return cls(action, resource)  # type: ignore[arg-type]


def _perms(spec: str) -> tuple[Permission, ...]:
    return tuple(Permission.parse(p) for p in spec.split())


ROLES = ("viewer", "member", "admin", "owner")
_VIEWER = "read:buckets read:devices read:channels read:orgs"
_MEMBER = _VIEWER + " write:buckets write:devices write:channels"
_ADMIN = _MEMBER + (
    " read:tokens write:tokens read:users write:users read:secrets write:secrets read:audit"
)
ROLE_PERMISSIONS: dict[str, tuple[Permission, ...]] = {
    "viewer": _perms(_VIEWER),
    "member": _perms(_MEMBER),
    "admin": _perms(_ADMIN),
    "owner": (),  # all access in the org
}

PrincipalKind = Literal["token", "user", "device"]


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, in which org, with what permissions.

    ``all_access`` is an owner's reach in ``org_id`` (all-access tokens, org owners);
    ``operator`` may also create orgs. Nothing reaches beyond ``org_id``.
    """

    kind: PrincipalKind
    id: str
    org_id: str
    permissions: tuple[Permission, ...] = ()
    all_access: bool = False
    role: str | None = None
    operator: bool = False
    session_id: str | None = None
    label: str = ""
    expires_ns: int | None = None
    bucket_id: str | None = None  # a device's bucket

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"

    def allows(self, action: Action, resource_type: str, resource_id: str | None = None) -> bool:
        """May act on the object ``resource_id`` (or, if None, on every object of the type)."""
        if self.all_access:
            return True
        wanted = {resource_type}
        if resource_id is not None:
            wanted.add(f"{resource_type}/{resource_id}")
        return any(p.action == action and p.resource in wanted for p in self.permissions)

    def holds(self, permission: Permission) -> bool:
        kind, _, ident = permission.resource.partition("/")
        return self.allows(permission.action, kind, ident or None)

    def permission_strings(self) -> list[str]:
        return ["all"] if self.all_access else [str(p) for p in self.permissions]


@dataclass
class DeviceRecord:
    org_id: str
    device: str
    attributes: dict[str, object] = field(default_factory=dict)
    attributes_updated_ns: int | None = None
    last_seen_ns: int | None = None


@dataclass(frozen=True)
class FieldSpec:
    type: str
    unit: str | None = None


@dataclass(frozen=True)
class MeasurementSchema:
    bucket_id: str
    measurement: str
    fields: dict[str, FieldSpec]
    strict: bool = True  # reject fields the schema does not name


class RegistryError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RegistryError):
    pass


class Conflict(RegistryError):
    pass


class Invalid(RegistryError):
    pass


class Unauthorized(RegistryError):
    pass


class Forbidden(RegistryError):
    pass


class Throttled(RegistryError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


MAX_DURATION_SECONDS = 1000 * 365 * 86_400


def parse_duration(text: str | int) -> int:
    """Seconds in an InfluxDB-style duration: ``parse_duration("1d12h") == 129600``; 0 = forever."""
    if isinstance(text, int):
        if not 0 <= text <= MAX_DURATION_SECONDS:
            raise Invalid("duration must be from 0 to 1000 years")
        return text
    s = text.strip()
    if s in ("", "0", "inf", "infinite"):
        return 0
    if s.isascii() and s.isdigit():
        return parse_duration(int(s))
    total, num = 0, ""
    for ch in s:
        if ch in "0123456789":
            num += ch
        elif ch in _UNITS and num:
            total += int(num) * _UNITS[ch]
            num = ""
        else:
            raise Invalid(f'invalid duration "{text}": use e.g. 30d, 72h, 90m, 0 for forever')
    if num:
        raise Invalid(f'invalid duration "{text}": a number needs a unit (w, d, h, m, s)')
    return parse_duration(total)


def format_duration(seconds: int) -> str:
    if seconds == 0:
        return "infinite"
    out = ""
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out
