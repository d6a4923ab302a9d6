"""Initial registry: orgs, buckets, tokens, devices, measurement schemas.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "buckets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("retention_seconds", sa.BigInteger, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("description", sa.String(512), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("all_access", sa.Boolean, nullable=False),
        sa.Column("permissions", sa.JSON, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("bucket_id", sa.String(32), primary_key=True),
        sa.Column("device", sa.String(256), primary_key=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("attributes_updated_ns", sa.BigInteger),
        sa.Column("last_seen_ns", sa.BigInteger),
    )
    op.create_table(
        "device_attribute_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("bucket_id", sa.String(32), nullable=False),
        sa.Column("device", sa.String(256), nullable=False),
        sa.Column("time_ns", sa.BigInteger, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_device_history",
        "device_attribute_history",
        ["org_id", "bucket_id", "device", "time_ns"],
    )
    op.create_table(
        "measurement_schemas",
        sa.Column("bucket_id", sa.String(32), sa.ForeignKey("buckets.id"), primary_key=True),
        sa.Column("measurement", sa.String(256), primary_key=True),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("strict", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "measurement_schemas",
        "device_attribute_history",
        "devices",
        "tokens",
        "buckets",
        "orgs",
    ):
        op.drop_table(table)
