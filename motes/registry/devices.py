"""Devices (Mainflux "things") with server-made keys, and channels that connect them.

devices = Devices(engine, cache)
device, key = devices.create("org1", actor, DeviceSpec("sample", name="Greenhouse 1"))
principal = devices.authenticate(key)          # kind "device", id "sample"
devices.record_attributes("org1", "sample", {"fw": "1.2"}, bucket_id)
devices.set_connected("org1", "sample", True, "connect")   # MQTT; status in status.py
devices.sweep_status()                                      # every few seconds
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry import rejections, status
from motes.registry.common import (
    SYSTEM,
    Actor,
    TTLCache,
    audit,
    check_name,
    hash_secret,
    new_secret,
    now_ns,
)
from motes.registry.models import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Permission,
    Principal,
    Unauthorized,
)
from motes.registry.status import StatusChange
from motes.registry.tables import (
    channel_devices,
    channels,
    device_commands,
    device_history,
    devices,
)

KEY_PREFIX = "mdk_"
MAX_TAGS = 64
MAX_METADATA_BYTES = 16 * 1024

log = logging.getLogger("motes.registry")


@dataclass(frozen=True)
class DeviceSpec:
    id: str
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    bucket_id: str | None = None
    permissions: tuple[str, ...] = ()
    expected_interval_seconds: int | None = None


@dataclass(frozen=True)
class DeviceEvent:
    """A committed change others may mirror: ``kind`` is created, key (rotated), key-revoked,
    disabled, enabled, deleted, connected or disconnected (``channel``). ``key`` is the new
    key (created, key): the only moment it exists outside the device."""

    kind: str
    org_id: str
    device_id: str
    key: str | None = None
    channel: str | None = None


@dataclass(frozen=True)
class Device:
    org_id: str
    id: str
    name: str
    metadata: dict[str, Any]
    tags: tuple[str, ...]
    bucket_id: str | None
    permissions: tuple[Permission, ...]
    disabled: bool
    key_prefix: str | None
    key_created_ns: int | None
    attributes: dict[str, Any]
    attributes_updated_ns: int | None
    last_seen_ns: int | None
    created_ns: int
    expected_interval_seconds: int | None = None
    connected: bool = False
    connected_ns: int | None = None  # the last MQTT connect
    disconnected_ns: int | None = None  # the last MQTT disconnect
    status: str = status.OFFLINE  # online, stale or offline (see status.py)
    status_ns: int | None = None

    @classmethod
    def of(cls, r: Any) -> Device:
        return cls(
            org_id=r.org_id,
            id=r.id,
            name=r.name,
            metadata=dict(r.metadata),
            tags=tuple(r.tags),
            bucket_id=r.bucket_id,
            permissions=tuple(Permission.parse(p) for p in r.permissions),
            disabled=bool(r.disabled),
            key_prefix=r.key_prefix,
            key_created_ns=r.key_created_ns,
            attributes=dict(r.attributes),
            attributes_updated_ns=r.attributes_updated_ns,
            last_seen_ns=r.last_seen_ns,
            created_ns=r.created_ns,
            expected_interval_seconds=r.expected_interval_seconds,
            connected=bool(r.connected),
            connected_ns=r.connected_ns,
            disconnected_ns=r.disconnected_ns,
            status=r.status,
            status_ns=r.status_ns,
        )


@dataclass(frozen=True)
class Channel:
    org_id: str
    id: str
    name: str
    metadata: dict[str, Any]
    bucket_id: str | None
    created_ns: int


def _check_fields(name: str, metadata: Any, tags: Iterable[str]) -> None:
    import orjson

    if len(name) > 256:
        raise Invalid("a name has at most 256 characters")
    if not isinstance(metadata, dict):
        raise Invalid('"metadata" must be a JSON object')
    if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise Invalid(f'"metadata" is larger than {MAX_METADATA_BYTES} bytes')
    tags = list(tags)
    if len(tags) > MAX_TAGS:
        raise Invalid(f"a device has at most {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, str) or not 0 < len(tag) <= 64:
            raise Invalid(f'invalid tag "{tag}": 1-64 characters')


def _now() -> int:
    return now_ns()  # for methods whose ``now_ns`` parameter hides the function


def _device_permissions(perms: Iterable[str]) -> list[str]:
    parsed = [Permission.parse(p) for p in perms]
    for p in parsed:
        if p.action != "read":
            raise Invalid(f'devices may be granted read permissions only, not "{p}"')
    return [str(p) for p in dict.fromkeys(parsed)]


# a device's last-seen time, only ever forward (flush_seen)
_SEEN = (
    devices.update()
    .where(
        devices.c.org_id == sa.bindparam("o"),
        devices.c.id == sa.bindparam("d"),
        sa.or_(devices.c.last_seen_ns.is_(None), devices.c.last_seen_ns < sa.bindparam("s")),
    )
    .values(last_seen_ns=sa.bindparam("s"))
)


class Devices:
    def __init__(self, engine: Engine, cache: TTLCache) -> None:
        self.engine = engine
        self._cache = cache
        self._known: set[tuple[str, str]] = set()
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._attributes: dict[tuple[str, str], dict[str, Any]] = {}
        self._listeners: list[Callable[[DeviceEvent], None]] = []

    def listen(self, callback: Callable[[DeviceEvent], None]) -> None:
        """Call ``callback`` after each committed change of a device's credentials, state or
        channels (mirrors such as Mosquitto's dynamic security follow them)."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[DeviceEvent], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _emit(self, kind: str, org_id: str, device_id: str, **more: Any) -> None:
        event = DeviceEvent(kind, org_id, device_id, **more)
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:  # a mirror's failure must not fail the change itself
                log.exception("device event listener failed")

    # -- provisioning -----------------------------------------------------------------

    def create(self, org_id: str, actor: Actor, spec: DeviceSpec) -> tuple[Device, str]:
        return self.create_many(org_id, actor, [spec])[0]

    def create_many(
        self, org_id: str, actor: Actor, specs: list[DeviceSpec]
    ) -> list[tuple[Device, str]]:
        """Create every device or none; each gets a key, returned once."""
        rows, keys = [], []
        seen: set[str] = set()
        for spec in specs:
            check_name("device", spec.id)
            _check_fields(spec.name, spec.metadata, spec.tags)
            status.check_interval(spec.expected_interval_seconds)
            if spec.id in seen:
                raise Conflict(f'device "{spec.id}" is listed twice')
            seen.add(spec.id)
            key = new_secret(KEY_PREFIX)
            keys.append(key)
            now = now_ns()
            rows.append(
                {
                    "org_id": org_id,
                    "id": spec.id,
                    "name": spec.name,
                    "metadata": spec.metadata,
                    "tags": list(dict.fromkeys(spec.tags)),
                    "bucket_id": spec.bucket_id,
                    "permissions": _device_permissions(spec.permissions),
                    "disabled": False,
                    "key_hash": hash_secret(key),
                    "key_prefix": key[:12],
                    "key_created_ns": now,
                    "attributes": {},
                    "created_ns": now,
                    "expected_interval_seconds": spec.expected_interval_seconds,
                }
            )
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.select(devices.c.id, devices.c.key_hash).where(
                    devices.c.org_id == org_id, devices.c.id.in_(list(seen))
                )
            ).all()
            # a device that registered itself by sending data, without a key, is provisioned
            # in place (keeping its data and status); one that already has a key is a conflict
            keyed = sorted(r.id for r in taken if r.key_hash is not None)
            if keyed:
                raise Conflict(f'device "{keyed[0]}" already exists')
            existing = {r.id for r in taken}
            for row in rows:
                if row["id"] in existing:
                    values = {k: v for k, v in row.items() if k not in ("attributes", "created_ns")}
                    conn.execute(
                        devices.update()
                        .where(devices.c.org_id == org_id, devices.c.id == row["id"])
                        .values(**values)
                    )
                    if row["expected_interval_seconds"] is not None:
                        last = self._seen.get((org_id, str(row["id"])))
                        reason = status.INTERVAL_CHANGED
                        status.refresh(conn, org_id, str(row["id"]), last, now_ns(), reason)
                else:
                    conn.execute(devices.insert().values(**row))
                audit(conn, actor, org_id, "device.create", f"device:{row['id']}")
        created = [self.get(org_id, str(row["id"])) for row in rows]
        with self._lock:
            self._known.update((org_id, d.id) for d in created)
        for device, key in zip(created, keys, strict=True):
            self._emit("created", org_id, device.id, key=key)
        return list(zip(created, keys, strict=True))

    def get(self, org_id: str, device_id: str) -> Device:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(devices).where(devices.c.org_id == org_id, devices.c.id == device_id)
            ).first()
        if r is None:
            raise NotFound(f'device "{device_id}" not found')
        return self._fresh(Device.of(r))

    def _fresh(self, device: Device) -> Device:
        seen = self._seen.get((device.org_id, device.id))
        if seen is not None and seen > (device.last_seen_ns or 0):
            return replace(device, last_seen_ns=seen)
        return device

    def search(
        self,
        org_id: str,
        text: str | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Device], int]:
        where = [devices.c.org_id == org_id]
        if text:
            needle = text.lower()
            where.append(
                sa.or_(
                    sa.func.lower(devices.c.id).contains(needle, autoescape=True),
                    sa.func.lower(devices.c.name).contains(needle, autoescape=True),
                )
            )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(devices).where(*where).order_by(devices.c.id)).all()
        wanted = set(tags)
        found = [
            d
            for d in map(Device.of, rows)
            if wanted <= set(d.tags)
            and all(str(d.metadata.get(k)) == v for k, v in (metadata or {}).items())
        ]
        return [self._fresh(d) for d in found[offset : offset + limit]], len(found)

    def update(self, org_id: str, device_id: str, actor: Actor, **changes: Any) -> Device:
        """Change the fields given (None: unchanged); ``expected_interval_seconds=0`` clears
        the interval."""
        current = self.get(org_id, device_id)
        values = {k: v for k, v in changes.items() if v is not None}
        if "expected_interval_seconds" in values:
            interval = values["expected_interval_seconds"] or None  # 0: none
            values["expected_interval_seconds"] = status.check_interval(interval)
        _check_fields(
            values.get("name", current.name),
            values.get("metadata", current.metadata),
            values.get("tags", current.tags),
        )
        if "permissions" in values:
            values["permissions"] = _device_permissions(values["permissions"])
        if "tags" in values:
            values["tags"] = list(dict.fromkeys(values["tags"]))
        if values:
            with self.engine.begin() as conn:
                conn.execute(
                    devices.update()
                    .where(devices.c.org_id == org_id, devices.c.id == device_id)
                    .values(**values)
                )
                audit(
                    conn,
                    actor,
                    org_id,
                    "device.update",
                    f"device:{device_id}",
                    changed=sorted(values),
                )
                if "expected_interval_seconds" in values:
                    seen = self._seen.get((org_id, device_id))
                    status.refresh(conn, org_id, device_id, seen, now_ns(), status.INTERVAL_CHANGED)
            self._cache.clear()
            if "disabled" in values:
                self._emit("disabled" if values["disabled"] else "enabled", org_id, device_id)
        return self.get(org_id, device_id)

    def delete(self, org_id: str, device_id: str, actor: Actor) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(
                devices.delete().where(devices.c.org_id == org_id, devices.c.id == device_id)
            ).rowcount
            if not gone:
                raise NotFound(f'device "{device_id}" not found')
            conn.execute(
                channel_devices.delete().where(
                    channel_devices.c.org_id == org_id, channel_devices.c.device_id == device_id
                )
            )
            conn.execute(
                device_history.delete().where(
                    device_history.c.org_id == org_id, device_history.c.device == device_id
                )
            )
            conn.execute(
                device_commands.delete().where(
                    device_commands.c.org_id == org_id, device_commands.c.device_id == device_id
                )
            )
            status.forget_device(conn, org_id, device_id)
            rejections.forget_device(conn, org_id, device_id)
            audit(conn, actor, org_id, "device.delete", f"device:{device_id}")
        with self._lock:
            self._known.discard((org_id, device_id))
            self._seen.pop((org_id, device_id), None)
            self._attributes.pop((org_id, device_id), None)
        self._cache.clear()
        self._emit("deleted", org_id, device_id)

    def rotate_key(self, org_id: str, device_id: str, actor: Actor) -> str:
        key = new_secret(KEY_PREFIX)
        self._set_key(org_id, device_id, actor, key, "device.key_rotate")
        self._emit("key", org_id, device_id, key=key)
        return key

    def revoke_key(self, org_id: str, device_id: str, actor: Actor) -> None:
        self._set_key(org_id, device_id, actor, None, "device.key_revoke")
        self._emit("key-revoked", org_id, device_id)

    def _set_key(
        self, org_id: str, device_id: str, actor: Actor, key: str | None, action: str
    ) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(
                devices.update()
                .where(devices.c.org_id == org_id, devices.c.id == device_id)
                .values(
                    key_hash=hash_secret(key) if key else None,
                    key_prefix=key[:12] if key else None,
                    key_created_ns=now_ns() if key else None,
                )
            ).rowcount
            if not done:
                raise NotFound(f'device "{device_id}" not found')
            audit(conn, actor, org_id, action, f"device:{device_id}")
        self._cache.clear()  # the old key stops now, not when its cache entry ages out

    def authenticate(self, key: str) -> Principal:
        digest = hash_secret(key)
        cached: Principal | None = self._cache.get("d:" + digest)
        if cached is not None:
            return cached
        generation = self._cache.generation
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(
                    devices.c.org_id,
                    devices.c.id,
                    devices.c.permissions,
                    devices.c.disabled,
                    devices.c.bucket_id,
                ).where(devices.c.key_hash == digest)
            ).first()
        if r is None:
            raise Unauthorized("unauthorized access: invalid device key")
        if r.disabled:
            raise Unauthorized(f'unauthorized access: device "{r.id}" is disabled')
        principal = Principal(
            "device",
            r.id,
            r.org_id,
            tuple(Permission.parse(p) for p in r.permissions),
            label=r.id,
            bucket_id=r.bucket_id,
        )
        self._cache.put("d:" + digest, principal, generation)
        return principal

    # -- records (deviceinfo, last seen) ----------------------------------------------

    def known(self, org_id: str, device_id: str) -> bool:
        return (org_id, device_id) in self._known

    def touch(self, org_id: str, device_id: str, bucket_id: str) -> None:
        """Note traffic from a device; an unknown id registers the device (without a key)."""
        key = (org_id, device_id)
        self._seen[key] = now_ns()
        if key not in self._known:
            self._register(org_id, device_id, bucket_id)

    def _register(self, org_id: str, device_id: str, bucket_id: str) -> None:
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(
                    sa.select(devices.c.id).where(
                        devices.c.org_id == org_id, devices.c.id == device_id
                    )
                ).first()
                if exists is None:
                    conn.execute(
                        devices.insert().values(
                            org_id=org_id,
                            id=device_id,
                            name="",
                            metadata={},
                            tags=[],
                            bucket_id=bucket_id,
                            permissions=[],
                            disabled=False,
                            attributes={},
                            created_ns=now_ns(),
                        )
                    )
                    audit(conn, SYSTEM, org_id, "device.register", f"device:{device_id}")
        except sa.exc.IntegrityError:
            pass  # registered concurrently
        with self._lock:
            self._known.add((org_id, device_id))

    def record_attributes(
        self, org_id: str, device_id: str, attributes: dict[str, Any], bucket_id: str
    ) -> None:
        """Merge a deviceinfo update into the record; history keeps every change."""
        self.touch(org_id, device_id, bucket_id)
        key = (org_id, device_id)
        with self._lock:
            current = self._attributes.get(key)
            if current is None:
                try:
                    current = self.get(org_id, device_id).attributes
                except NotFound:
                    return  # deleted meanwhile
            merged = {**current, **attributes}
            if merged == current:
                self._attributes[key] = merged
                return
            now = now_ns()
            with self.engine.begin() as conn:
                conn.execute(
                    devices.update()
                    .where(devices.c.org_id == org_id, devices.c.id == device_id)
                    .values(attributes=merged, attributes_updated_ns=now, last_seen_ns=now)
                )
                conn.execute(
                    device_history.insert().values(
                        org_id=org_id, device=device_id, time_ns=now, attributes=attributes
                    )
                )
            self._attributes[key] = merged

    def flush_seen(self) -> None:
        """Write last-seen times noted since the last flush (called every few seconds)."""
        pending = list(self._seen.items())
        if not pending:
            return
        rows = [{"o": org_id, "d": device_id, "s": seen} for (org_id, device_id), seen in pending]
        with self.engine.begin() as conn:
            conn.execute(_SEEN, rows)  # one statement, executed for each row
        for key, seen in pending:
            if self._seen.get(key) == seen:
                self._seen.pop(key, None)

    # -- online status (rules in status.py) -------------------------------------------

    def set_connected(
        self,
        org_id: str,
        device_id: str,
        connected: bool,
        reason: str,
        at_ns: int | None = None,
    ) -> None:
        """Note an MQTT connect or disconnect ("connect", "disconnect", "last-will",
        "keep-alive timeout"); an unknown device is ignored. A connect counts as traffic."""
        at = now_ns() if at_ns is None else at_ns
        self.set_connected_many([(org_id, device_id, connected, reason, at)])

    def set_connected_many(self, events: list[tuple[str, str, bool, str, int]]) -> None:
        """Several (org, device, connected, reason, at_ns) events in one transaction: a
        broker that 10,000 devices connect to at once must not commit 10,000 times."""
        with self.engine.begin() as conn:
            noted = status.set_connected_many(conn, events, self._seen)
        for org_id, device_id, connected, _, at in noted:
            if connected and at > self._seen.get((org_id, device_id), 0):
                self._seen[(org_id, device_id)] = at

    def sweep_status(self, now_ns: int | None = None) -> int:
        """Move devices to stale, offline or back online as their data stops or resumes;
        returns how many changed. The app calls it every 2 seconds."""
        seen = dict(self._seen)  # the latest traffic, also what flush_seen has yet to write
        with self.engine.begin() as conn:
            return status.sweep(conn, seen, _now() if now_ns is None else now_ns)

    def status_history(
        self, org_id: str, device_id: str, limit: int = 100, before: int | None = None
    ) -> list[StatusChange]:
        """A device's status changes, newest first; ``before`` (an entry id) pages back."""
        with self.engine.connect() as conn:
            return status.history(conn, org_id, device_id, limit, before)

    def history(self, org_id: str, device_id: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(device_history.c.time_ns, device_history.c.attributes)
                .where(device_history.c.org_id == org_id, device_history.c.device == device_id)
                .order_by(device_history.c.time_ns.desc())
                .limit(limit)
            ).all()
        return [{"time_ns": r.time_ns, "attributes": r.attributes} for r in rows]

    def forget_bucket(self, conn: sa.Connection, bucket_id: str) -> None:
        for table in (devices, channels):
            conn.execute(
                table.update().where(table.c.bucket_id == bucket_id).values(bucket_id=None)
            )

    # -- channels ---------------------------------------------------------------------

    def create_channel(
        self,
        org_id: str,
        actor: Actor,
        channel_id: str,
        name: str,
        metadata: dict[str, Any],
        bucket_id: str | None,
    ) -> Channel:
        check_name("channel", channel_id)
        _check_fields(name, metadata, ())
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    channels.insert().values(
                        org_id=org_id,
                        id=channel_id,
                        name=name,
                        metadata=metadata,
                        bucket_id=bucket_id,
                        created_ns=now_ns(),
                    )
                )
                audit(conn, actor, org_id, "channel.create", f"channel:{channel_id}")
        except sa.exc.IntegrityError as exc:
            raise Conflict(f'channel "{channel_id}" already exists') from exc
        return self.channel(org_id, channel_id)

    def channels(self, org_id: str) -> list[Channel]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(channels).where(channels.c.org_id == org_id).order_by(channels.c.id)
            ).all()
        return [
            Channel(r.org_id, r.id, r.name, dict(r.metadata), r.bucket_id, r.created_ns)
            for r in rows
        ]

    def channel(self, org_id: str, channel_id: str) -> Channel:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(channels).where(channels.c.org_id == org_id, channels.c.id == channel_id)
            ).first()
        if r is None:
            raise NotFound(f'channel "{channel_id}" not found')
        return Channel(r.org_id, r.id, r.name, dict(r.metadata), r.bucket_id, r.created_ns)

    def update_channel(self, org_id: str, channel_id: str, actor: Actor, **changes: Any) -> Channel:
        current = self.channel(org_id, channel_id)
        values = {k: v for k, v in changes.items() if v is not None}
        _check_fields(
            values.get("name", current.name), values.get("metadata", current.metadata), ()
        )
        if values:
            with self.engine.begin() as conn:
                conn.execute(
                    channels.update()
                    .where(channels.c.org_id == org_id, channels.c.id == channel_id)
                    .values(**values)
                )
                audit(conn, actor, org_id, "channel.update", f"channel:{channel_id}")
        return self.channel(org_id, channel_id)

    def delete_channel(self, org_id: str, channel_id: str, actor: Actor) -> None:
        members = self.channel_devices(org_id, channel_id)
        self._delete_channel(org_id, channel_id, actor)
        for device_id in members:
            self._emit("disconnected", org_id, device_id, channel=channel_id)

    def _delete_channel(self, org_id: str, channel_id: str, actor: Actor) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(
                channels.delete().where(channels.c.org_id == org_id, channels.c.id == channel_id)
            ).rowcount
            if not gone:
                raise NotFound(f'channel "{channel_id}" not found')
            conn.execute(
                channel_devices.delete().where(
                    channel_devices.c.org_id == org_id, channel_devices.c.channel_id == channel_id
                )
            )
            audit(conn, actor, org_id, "channel.delete", f"channel:{channel_id}")

    def connect(self, org_id: str, channel_id: str, device_id: str, actor: Actor) -> None:
        self.channel(org_id, channel_id)
        self.get(org_id, device_id)
        with self.engine.begin() as conn:
            if self._connected(conn, org_id, channel_id, device_id):
                return
            conn.execute(
                channel_devices.insert().values(
                    org_id=org_id, channel_id=channel_id, device_id=device_id, created_ns=now_ns()
                )
            )
            audit(conn, actor, org_id, "channel.connect", f"channel:{channel_id}", device=device_id)
        self._emit("connected", org_id, device_id, channel=channel_id)

    def disconnect(self, org_id: str, channel_id: str, device_id: str, actor: Actor) -> None:
        self.channel(org_id, channel_id)
        with self.engine.begin() as conn:
            gone = conn.execute(
                channel_devices.delete().where(
                    channel_devices.c.org_id == org_id,
                    channel_devices.c.channel_id == channel_id,
                    channel_devices.c.device_id == device_id,
                )
            ).rowcount
            if not gone:
                raise NotFound(f'device "{device_id}" is not connected to "{channel_id}"')
            audit(
                conn, actor, org_id, "channel.disconnect", f"channel:{channel_id}", device=device_id
            )
        self._emit("disconnected", org_id, device_id, channel=channel_id)

    def channel_devices(self, org_id: str, channel_id: str) -> list[str]:
        self.channel(org_id, channel_id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(channel_devices.c.device_id)
                .where(
                    channel_devices.c.org_id == org_id, channel_devices.c.channel_id == channel_id
                )
                .order_by(channel_devices.c.device_id)
            ).all()
        return [r.device_id for r in rows]

    def device_channels(self, org_id: str, device_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(channel_devices.c.channel_id)
                .where(channel_devices.c.org_id == org_id, channel_devices.c.device_id == device_id)
                .order_by(channel_devices.c.channel_id)
            ).all()
        return [r.channel_id for r in rows]

    def check_connected(self, org_id: str, channel_id: str, device_id: str) -> None:
        with self.engine.connect() as conn:
            if not self._connected(conn, org_id, channel_id, device_id):
                raise Forbidden(f'device "{device_id}" is not connected to channel "{channel_id}"')

    @staticmethod
    def _connected(conn: sa.Connection, org_id: str, channel_id: str, device_id: str) -> bool:
        return (
            conn.execute(
                sa.select(channel_devices.c.device_id).where(
                    channel_devices.c.org_id == org_id,
                    channel_devices.c.channel_id == channel_id,
                    channel_devices.c.device_id == device_id,
                )
            ).first()
            is not None
        )
