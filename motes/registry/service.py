"""Registry rules: first-start setup, buckets, tokens, device records, measurement schemas.

registry = Registry.open("sqlite:///motes-data/registry.sqlite")
token = registry.bootstrap("main", "telemetry", None)   # printed once if generated
auth = registry.authenticate(token)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry import migrations
from motes.registry.models import (
    Bucket,
    Conflict,
    DeviceRecord,
    FieldSpec,
    Invalid,
    MeasurementSchema,
    NotFound,
    Org,
    Permission,
    Token,
    Unauthorized,
)
from motes.registry.tables import (
    buckets,
    device_attribute_history,
    devices,
    measurement_schemas,
    orgs,
    tokens,
)
from motes.telemetry.models import FIELD_TYPES

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
TOKEN_CACHE_SECONDS = 5.0


def _now_ns() -> int:
    return time.time_ns()


def _new_id() -> str:
    return secrets.token_hex(8)


def hash_token(token: str) -> str:
    # API tokens are 256-bit random strings, so a fast hash is as safe as a slow one here.
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise Invalid(
            f'invalid {kind} name "{name}": use 1-255 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit"
        )
    return name


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._token_cache: dict[str, tuple[float, Token]] = {}
        self._attr_cache: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._schema_cache: dict[tuple[str, str], MeasurementSchema | None] = {}
        # orgs and buckets are read on every request and change rarely; this process is
        # the only writer of the registry, so clearing on change keeps the cache exact
        self._orgs: dict[str, Org] = {}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str) -> Registry:
        """Migrate the database at ``url`` to the latest schema and open it."""
        migrations.upgrade(url)
        engine = sa.create_engine(url)
        if engine.dialect.name == "sqlite":
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- setup ----------------------------------------------------------------------------

    def bootstrap(self, org: str, bucket: str, token: str | None) -> str | None:
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
        org_id = _new_id()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(orgs)).scalar_one():
                return None
            conn.execute(orgs.insert().values(id=org_id, name=org, created_ns=_now_ns()))
            _insert_bucket(conn, Bucket(_new_id(), org_id, bucket, 0))
            _insert_token(
                conn, Token(_new_id(), org_id, "operator token (all access)", True), secret
            )
        return secret

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
            row = conn.execute(sa.select(orgs.c.id, orgs.c.name).where(where)).first()
        if row is None:
            raise NotFound(missing)
        org = self._orgs[key] = Org(id=row.id, name=row.name)
        return org

    def create_bucket(self, org_id: str, name: str, retention_seconds: int) -> Bucket:
        check_name("bucket", name)
        if retention_seconds < 0:
            raise Invalid("retention must not be negative")
        bucket = Bucket(id=_new_id(), org_id=org_id, name=name, retention_seconds=retention_seconds)
        try:
            with self.engine.begin() as conn:
                _insert_bucket(conn, bucket)
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

    def bucket_by_name(self, org_id: str, name: str) -> Bucket:
        cached = self._buckets.get((org_id, name))
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(buckets).where(buckets.c.org_id == org_id, buckets.c.name == name)
            ).first()
        if r is None:
            raise NotFound(f'bucket "{name}" not found')
        bucket = self._buckets[(org_id, name)] = Bucket(r.id, r.org_id, r.name, r.retention_seconds)
        return bucket

    def delete_bucket(self, bucket: Bucket) -> None:
        with self._lock, self.engine.begin() as conn:
            for table in (devices, device_attribute_history):
                conn.execute(table.delete().where(table.c.bucket_id == bucket.id))
            conn.execute(
                measurement_schemas.delete().where(measurement_schemas.c.bucket_id == bucket.id)
            )
            conn.execute(buckets.delete().where(buckets.c.id == bucket.id))
        self._schema_cache.clear()
        self._buckets.clear()
        self._attr_cache.clear()

    # -- tokens ---------------------------------------------------------------------------

    def create_token(
        self, org_id: str, description: str, permissions: list[str] | None
    ) -> tuple[Token, str]:
        """A new token; the secret is returned once and only its hash is stored."""
        perms = tuple(Permission.parse(p) for p in permissions or [])
        secret = secrets.token_urlsafe(32)
        return self._store_token(org_id, description, permissions is None, perms, secret), secret

    def _store_token(
        self,
        org_id: str,
        description: str,
        all_access: bool,
        perms: tuple[Permission, ...],
        secret: str,
    ) -> Token:
        token = Token(_new_id(), org_id, description, all_access, perms)
        with self.engine.begin() as conn:
            _insert_token(conn, token, secret)
        return token

    def authenticate(self, secret: str) -> Token:
        digest = hash_token(secret)
        cached = self._token_cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(tokens).where(tokens.c.token_hash == digest)).first()
        if r is None:
            raise Unauthorized("unauthorized access: invalid token")
        token = Token(
            r.id,
            r.org_id,
            r.description,
            bool(r.all_access),
            tuple(Permission.parse(p) for p in r.permissions),
        )
        self._token_cache[digest] = (time.monotonic() + TOKEN_CACHE_SECONDS, token)
        return token

    # -- devices --------------------------------------------------------------------------
    # A device record lives in the bucket its telemetry was written to, so reading or
    # changing it needs the same permission as that bucket's data.

    def record_attributes(
        self, org_id: str, bucket_id: str, device: str, attributes: dict[str, Any]
    ) -> None:
        """Merge a deviceinfo update into the device record; history keeps every change."""
        key = (org_id, bucket_id, device)
        with self._lock:
            current = self._attr_cache.get(key)
            if current is None:
                current = self._stored_attributes(key)
            merged = {**current, **attributes}
            if merged == current and key in self._attr_cache:
                return
            self._store_attributes(key, merged, attributes if merged != current else None)
            self._attr_cache[key] = merged

    def _where(self, table: sa.Table, key: tuple[str, str, str]) -> sa.ColumnElement[bool]:
        org_id, bucket_id, device = key
        return sa.and_(
            table.c.org_id == org_id, table.c.bucket_id == bucket_id, table.c.device == device
        )

    def _stored_attributes(self, key: tuple[str, str, str]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(devices.c.attributes).where(self._where(devices, key)))
            found = row.first()
        return dict(found.attributes) if found else {}

    def _store_attributes(
        self, key: tuple[str, str, str], merged: dict[str, Any], change: dict[str, Any] | None
    ) -> None:
        org_id, bucket_id, device = key
        now = _now_ns()
        values = {"attributes": merged, "attributes_updated_ns": now, "last_seen_ns": now}
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(buckets.c.id).where(buckets.c.id == bucket_id))
            if exists.first() is None:
                return  # the bucket was deleted meanwhile: its records went with it
            updated = conn.execute(
                devices.update().where(self._where(devices, key)).values(**values)
            ).rowcount
            if not updated:
                conn.execute(
                    devices.insert().values(
                        org_id=org_id, bucket_id=bucket_id, device=device, **values
                    )
                )
            if change is not None:
                conn.execute(
                    device_attribute_history.insert().values(
                        org_id=org_id,
                        bucket_id=bucket_id,
                        device=device,
                        time_ns=now,
                        attributes=change,
                    )
                )

    def device(self, org_id: str, bucket_id: str, device: str) -> DeviceRecord:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(devices).where(self._where(devices, (org_id, bucket_id, device)))
            ).first()
        if r is None:
            raise NotFound(f'device "{device}" not found')
        return DeviceRecord(
            org_id, device, dict(r.attributes), r.attributes_updated_ns, r.last_seen_ns
        )

    def attribute_history(
        self, org_id: str, bucket_id: str, device: str, limit: int = 100
    ) -> list[dict[str, Any]]:
        history = device_attribute_history
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(history.c.time_ns, history.c.attributes)
                .where(self._where(history, (org_id, bucket_id, device)))
                .order_by(history.c.time_ns.desc())
                .limit(limit)
            ).all()
        return [{"time_ns": r.time_ns, "attributes": r.attributes} for r in rows]

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
            created_ns=_now_ns(),
        )
    )


def _insert_token(conn: sa.Connection, token: Token, secret: str) -> None:
    conn.execute(
        tokens.insert().values(
            id=token.id,
            org_id=token.org_id,
            description=token.description,
            token_hash=hash_token(secret),
            all_access=token.all_access,
            permissions=[str(p) for p in token.permissions],
            created_ns=_now_ns(),
        )
    )
