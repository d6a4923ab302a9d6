"""The registry: first-start setup, orgs, buckets, schemas, and the identity services.

registry = Registry.open("sqlite:///motes-data/registry.sqlite", master_key=key)
token = registry.bootstrap("main", "telemetry", None)   # printed once if generated
principal = registry.authenticate("token", token)
registry.devices.create(...); registry.users.add(...); registry.tokens.create(...)
registry.commands.create(...)                            # commands for devices
registry.rejections.list(org_id, device_id)              # MQTT messages refused
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry import migrations
from motes.registry.commands import Commands
from motes.registry.common import (
    SYSTEM,
    Actor,
    TTLCache,
    audit,
    check_name,
    hash_secret,
    new_id,
    now_ns,
)
from motes.registry.crypto import SecretBox, derive
from motes.registry.devices import Devices
from motes.registry.models import (
    Bucket,
    Conflict,
    FieldSpec,
    Forbidden,
    Invalid,
    MeasurementSchema,
    NotFound,
    Org,
    Permission,
    Principal,
    Unauthorized,
)
from motes.registry.rejections import Rejections
from motes.registry.secrets import Secrets
from motes.registry.sessions import Sessions
from motes.registry.tables import audit_log, buckets, measurement_schemas, memberships, orgs
from motes.registry.tokens import Tokens, insert_token
from motes.registry.users import Users
from motes.telemetry.models import FIELD_TYPES

__all__ = ["Registry", "check_name", "hash_secret"]

DEVICE_KEY_SCHEMES = ("thing", "device")


@dataclass(frozen=True)
class AuditEvent:
    id: int
    time_ns: int
    actor: str
    action: str
    target: str
    outcome: str
    remote: str | None
    details: dict[str, Any]


class Registry:
    def __init__(
        self,
        engine: Engine,
        master_key: bytes | None = None,
        default_bucket: str = "telemetry",
        access_seconds: int = 900,
        refresh_seconds: int = 30 * 86400,
    ) -> None:
        self.engine = engine
        master = master_key or secrets.token_bytes(32)
        self.credentials = TTLCache(engine)
        # orgs, buckets and schemas follow the same epoch: a bucket deleted or a schema
        # declared through another process is seen here within the epoch check interval
        self.credentials.on_forget.append(self._forget_catalog)
        self.tokens = Tokens(engine, self.credentials)
        self.users = Users(engine, self.credentials, default_bucket)
        self.sessions = Sessions(
            engine, self.credentials, derive(master, "jwt"), access_seconds, refresh_seconds
        )
        self.devices = Devices(engine, self.credentials)
        self.commands = Commands(engine)
        self.rejections = Rejections(engine)
        self.secrets = Secrets(engine, SecretBox(derive(master, "secrets")))
        self._schema_cache: dict[tuple[str, str], MeasurementSchema | None] = {}
        # orgs and buckets are read on every request and change rarely; this process is
        # the only writer of the registry, so clearing on change keeps the cache exact
        self._orgs: dict[str, Org] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, **options: Any) -> Registry:
        """Migrate the database at ``url`` to the latest schema and open it."""
        migrations.upgrade(url)
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return cls(engine, **options)

    def close(self) -> None:
        self.engine.dispose()

    # -- setup ----------------------------------------------------------------------------

    def bootstrap(
        self,
        org: str,
        bucket: str,
        token: str | None,
        admin_email: str | None = None,
        admin_password: str | None = None,
    ) -> str | None:
        """Create org, bucket and operator token on an empty registry, all or nothing.

        Returns the operator token when this call created it, else None.
        """
        with self.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(orgs)).scalar_one():
                return None  # set up before: the init settings are not used again
        check_name("org", org)
        check_name("bucket", bucket)
        if token and len(token) < 16:
            raise Invalid("MOTES_INIT_TOKEN must be at least 16 characters")
        secret = token or secrets.token_urlsafe(32)
        org_id = new_id()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(orgs)).scalar_one():
                return None
            conn.execute(orgs.insert().values(id=org_id, name=org, created_ns=now_ns()))
            _insert_bucket(conn, Bucket(new_id(), org_id, bucket, 0))
            insert_token(
                conn,
                org_id,
                "operator token (all access)",
                secret,
                all_access=True,
                operator=True,
                created_by="system",
            )
            audit(conn, SYSTEM, org_id, "org.create", f"org:{org_id}", name=org)
            if admin_email and admin_password:
                self.users.make_operator(conn, admin_email, admin_password, org_id)
        return secret

    # -- credentials ----------------------------------------------------------------------

    def authenticate(
        self, scheme: str, secret: str, org_id: str | None = None, org_name: str | None = None
    ) -> Principal:
        """The principal behind credentials; ``org_*`` choose among a user's orgs."""
        if scheme in DEVICE_KEY_SCHEMES or secret.startswith("mdk_"):
            return self.devices.authenticate(secret)
        if scheme == "bearer" and secret.startswith("eyJ") and secret.count(".") == 2:
            return self.sessions.authenticate(secret, org_id, org_name)
        if scheme in DEVICE_KEY_SCHEMES:
            raise Unauthorized("unauthorized access: invalid device key")
        return self.tokens.authenticate(secret)

    def check_grant(self, by: Principal, permissions: list[str]) -> None:
        """``by`` may hand out ``permissions``: it holds each, and each object named is one of
        its org's (a token must not point at another org's bucket, even uselessly)."""
        for text in permissions:
            permission = Permission.parse(text)
            if not by.holds(permission):
                raise Forbidden(f'you cannot grant "{permission}": you do not hold it')
            kind, _, ident = permission.resource.partition("/")
            if not ident:
                continue
            if kind == "buckets":
                self.bucket(by.org_id, ident)
            elif kind == "devices":
                self.devices.get(by.org_id, ident)
            else:
                self.devices.channel(by.org_id, ident)

    def audit_events(
        self, org_id: str, limit: int = 100, before: int | None = None, action: str | None = None
    ) -> list[AuditEvent]:
        # account events (sign-ins, sign-outs, passwords) belong to no org: show those by or
        # about members (a sign-out's target is the session, its actor the member)
        members = sa.select(sa.literal("user:") + memberships.c.user_id).where(
            memberships.c.org_id == org_id
        )
        query = sa.select(audit_log).where(
            sa.or_(
                audit_log.c.org_id == org_id,
                sa.and_(
                    audit_log.c.org_id.is_(None),
                    sa.or_(audit_log.c.target.in_(members), audit_log.c.actor.in_(members)),
                ),
            )
        )
        if before is not None:
            query = query.where(audit_log.c.id < before)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(audit_log.c.id.desc()).limit(limit)).all()
        return [
            AuditEvent(r.id, r.time_ns, r.actor, r.action, r.target, r.outcome, r.remote, r.details)
            for r in rows
        ]

    # -- orgs and buckets -----------------------------------------------------------------

    def org_by_name(self, name: str) -> Org:
        return self._org("name:" + name, orgs.c.name == name, f'org "{name}" not found')

    def org(self, org_id: str) -> Org:
        return self._org("id:" + org_id, orgs.c.id == org_id, f'org "{org_id}" not found')

    def _org(self, key: str, where: sa.ColumnElement[bool], missing: str) -> Org:
        cached = self._orgs.get(key)
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(orgs.c.id, orgs.c.name, orgs.c.created_ns).where(where)
            ).first()
        if row is None:
            raise NotFound(missing)
        org = self._orgs[key] = Org(row.id, row.name, row.created_ns)
        return org

    def create_bucket(
        self, org_id: str, name: str, retention_seconds: int, actor: Actor = SYSTEM
    ) -> Bucket:
        check_name("bucket", name)
        if retention_seconds < 0:
            raise Invalid("retention must not be negative")
        bucket = Bucket(id=new_id(), org_id=org_id, name=name, retention_seconds=retention_seconds)
        try:
            with self.engine.begin() as conn:
                _insert_bucket(conn, bucket)
                audit(conn, actor, org_id, "bucket.create", f"bucket:{bucket.id}", name=name)
        except sa.exc.IntegrityError as exc:
            raise Conflict(f'bucket "{name}" already exists') from exc
        return bucket

    def buckets(self, org_id: str) -> list[Bucket]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(buckets).where(buckets.c.org_id == org_id).order_by(buckets.c.name)
            ).all()
        return [Bucket(r.id, r.org_id, r.name, r.retention_seconds) for r in rows]

    def all_buckets(self) -> list[Bucket]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(buckets)).all()
        return [Bucket(r.id, r.org_id, r.name, r.retention_seconds) for r in rows]

    def find_bucket(self, org_id: str, name_or_id: str) -> Bucket:
        """A bucket by name, else by id; both answers are cached (one query on a miss)."""
        cached = self._buckets.get((org_id, name_or_id)) or self._buckets.get(
            (org_id, "id:" + name_or_id)
        )
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(buckets).where(
                    buckets.c.org_id == org_id,
                    sa.or_(buckets.c.name == name_or_id, buckets.c.id == name_or_id),
                )
            ).all()
        if not rows:
            raise NotFound(f'bucket "{name_or_id}" not found')
        r = next((r for r in rows if r.name == name_or_id), rows[0])
        bucket = Bucket(r.id, r.org_id, r.name, r.retention_seconds)
        self._buckets[(org_id, bucket.name)] = bucket
        self._buckets[(org_id, "id:" + bucket.id)] = bucket
        return bucket

    def _forget_catalog(self) -> None:
        self._orgs.clear()
        self._buckets.clear()
        self._schema_cache.clear()

    def bucket(self, org_id: str, bucket_id: str) -> Bucket:
        cached = self._buckets.get((org_id, "id:" + bucket_id))
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(buckets).where(buckets.c.org_id == org_id, buckets.c.id == bucket_id)
            ).first()
        if r is None:
            raise NotFound(f'bucket "{bucket_id}" not found')
        bucket = Bucket(r.id, r.org_id, r.name, r.retention_seconds)
        self._buckets[(org_id, "id:" + bucket_id)] = bucket
        return bucket

    def delete_bucket(self, bucket: Bucket, actor: Actor = SYSTEM) -> None:
        with self._lock, self.engine.begin() as conn:
            self.devices.forget_bucket(conn, bucket.id)
            conn.execute(
                measurement_schemas.delete().where(measurement_schemas.c.bucket_id == bucket.id)
            )
            conn.execute(buckets.delete().where(buckets.c.id == bucket.id))
            audit(
                conn, actor, bucket.org_id, "bucket.delete", f"bucket:{bucket.id}", name=bucket.name
            )
        self.credentials.clear()  # forgets the catalog here and tells the other processes

    def rename_org(self, org_id: str, actor: Actor, name: str) -> None:
        self.users.rename_org(org_id, actor, name)
        self._orgs.clear()
        self.credentials.clear()

    # -- measurement schemas --------------------------------------------------------------

    def set_schema(self, schema: MeasurementSchema) -> None:
        for name, spec in schema.fields.items():
            if spec.type not in FIELD_TYPES:
                raise Invalid(f'field "{name}": type must be one of {", ".join(FIELD_TYPES)}')
        values = {
            "fields": {n: {"type": s.type, "unit": s.unit} for n, s in schema.fields.items()},
            "strict": schema.strict,
        }
        with self.engine.begin() as conn:
            conn.execute(
                measurement_schemas.delete().where(
                    measurement_schemas.c.bucket_id == schema.bucket_id,
                    measurement_schemas.c.measurement == schema.measurement,
                )
            )
            conn.execute(
                measurement_schemas.insert().values(
                    bucket_id=schema.bucket_id, measurement=schema.measurement, **values
                )
            )
        self.credentials.clear()
        self._schema_cache[(schema.bucket_id, schema.measurement)] = schema

    def schema(self, bucket_id: str, measurement: str) -> MeasurementSchema | None:
        key = (bucket_id, measurement)
        if key in self._schema_cache:
            return self._schema_cache[key]
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(measurement_schemas).where(
                    measurement_schemas.c.bucket_id == bucket_id,
                    measurement_schemas.c.measurement == measurement,
                )
            ).first()
        schema = None
        if r is not None:
            fields = {n: FieldSpec(v["type"], v.get("unit")) for n, v in r.fields.items()}
            schema = MeasurementSchema(bucket_id, measurement, fields, bool(r.strict))
        self._schema_cache[key] = schema
        return schema


def _insert_bucket(conn: sa.Connection, bucket: Bucket) -> None:
    conn.execute(
        buckets.insert().values(
            id=bucket.id,
            org_id=bucket.org_id,
            name=bucket.name,
            retention_seconds=bucket.retention_seconds,
            created_ns=now_ns(),
        )
    )
