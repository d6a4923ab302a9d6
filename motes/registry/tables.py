"""SQLAlchemy Core tables of the registry. Alembic migrations in ``migrations/`` build them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, unique=True),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
)

buckets = sa.Table(
    "buckets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("retention_seconds", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("org_id", "name"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("description", sa.String(512), nullable=False, default=""),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("all_access", sa.Boolean, nullable=False, default=False),
    sa.Column("permissions", sa.JSON, nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("bucket_id", sa.String(32), primary_key=True),
    sa.Column("device", sa.String(256), primary_key=True),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("attributes_updated_ns", sa.BigInteger),
    sa.Column("last_seen_ns", sa.BigInteger),
)

device_attribute_history = sa.Table(
    "device_attribute_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(32), nullable=False),
    sa.Column("bucket_id", sa.String(32), nullable=False),
    sa.Column("device", sa.String(256), nullable=False),
    sa.Column("time_ns", sa.BigInteger, nullable=False),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Index("ix_device_history", "org_id", "bucket_id", "device", "time_ns"),
)

measurement_schemas = sa.Table(
    "measurement_schemas",
    metadata,
    sa.Column("bucket_id", sa.String(32), sa.ForeignKey("buckets.id"), primary_key=True),
    sa.Column("measurement", sa.String(256), primary_key=True),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("strict", sa.Boolean, nullable=False, default=True),
)
