"""Identity and tenancy: users, memberships, sessions, org-level devices, channels, secrets,
audit log; API tokens gain status, expiry, last use and their creator.

Device records were kept per bucket before; they become one record per (org, device): the
attributes of a device written to several buckets are merged, the newest change winning.

Revision ID: 0002
Revises: 0001
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("created_by", sa.String(128)))
        batch.add_column(sa.Column("user_id", sa.String(32)))
        batch.add_column(sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()))
        batch.add_column(
            sa.Column("operator", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("expires_ns", sa.BigInteger))
        batch.add_column(sa.Column("last_used_ns", sa.BigInteger))
    # the first start's all-access token is the operator token
    op.execute(
        "UPDATE tokens SET operator = true WHERE all_access = true AND "
        "description = 'operator token (all access)'"
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("operator", sa.Boolean, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("password_changed_ns", sa.BigInteger),
        sa.Column("last_login_ns", sa.BigInteger),
    )
    op.create_table(
        "memberships",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_memberships_user", "memberships", ["user_id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("expires_ns", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("org_id", "user_id"),
    )
    op.create_table(
        "password_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("expires_ns", sa.BigInteger, nullable=False),
        sa.Column("used_ns", sa.BigInteger),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("client_id", sa.String(128)),
        sa.Column("scope", sa.String(512)),
        sa.Column("remote", sa.String(64)),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("expires_ns", sa.BigInteger, nullable=False),
        sa.Column("revoked_ns", sa.BigInteger),
    )
    op.create_index("ix_sessions_user", "sessions", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("used_ns", sa.BigInteger),
    )
    op.create_index("ix_refresh_session", "refresh_tokens", ["session_id"])

    conn = op.get_bind()
    old = conn.execute(
        sa.text(
            "SELECT org_id, bucket_id, device, attributes, attributes_updated_ns, last_seen_ns "
            "FROM devices ORDER BY attributes_updated_ns"
        ).columns(attributes=sa.JSON)  # SQLite hands JSON back as text unless told its type
    ).all()
    history = conn.execute(
        sa.text("SELECT org_id, device, time_ns, attributes FROM device_attribute_history").columns(
            attributes=sa.JSON
        )
    ).all()
    op.drop_table("devices")
    op.drop_index("ix_device_history", "device_attribute_history")
    op.drop_table("device_attribute_history")
    devices = op.create_table(
        "devices",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("bucket_id", sa.String(32)),
        sa.Column("permissions", sa.JSON, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("key_hash", sa.String(64), unique=True),
        sa.Column("key_prefix", sa.String(16)),
        sa.Column("key_created_ns", sa.BigInteger),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("attributes_updated_ns", sa.BigInteger),
        sa.Column("last_seen_ns", sa.BigInteger),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    device_history = op.create_table(
        "device_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("device", sa.String(256), nullable=False),
        sa.Column("time_ns", sa.BigInteger, nullable=False),
        sa.Column("attributes", sa.JSON, nullable=False),
    )
    op.create_index("ix_device_history", "device_history", ["org_id", "device", "time_ns"])
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in old:  # oldest change first, so the newest wins
        attributes = row.attributes if isinstance(row.attributes, dict) else {}
        record = merged.setdefault(
            (row.org_id, row.device),
            {
                "org_id": row.org_id,
                "id": row.device,
                "name": "",
                "metadata": {},
                "tags": [],
                "permissions": [],
                "disabled": False,
                "attributes": {},
                "attributes_updated_ns": None,
                "last_seen_ns": None,
                "created_ns": row.attributes_updated_ns or 0,
            },
        )
        record["bucket_id"] = row.bucket_id
        record["attributes"] = {**record["attributes"], **attributes}
        record["attributes_updated_ns"] = row.attributes_updated_ns
        seen = [s for s in (record["last_seen_ns"], row.last_seen_ns) if s is not None]
        record["last_seen_ns"] = max(seen) if seen else None
    if merged:
        op.bulk_insert(devices, list(merged.values()))
    if history:
        op.bulk_insert(device_history, [dict(r._mapping) for r in history])

    op.create_table(
        "channels",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("id", sa.String(256), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("bucket_id", sa.String(32)),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "channel_devices",
        sa.Column("org_id", sa.String(32), primary_key=True),
        sa.Column("channel_id", sa.String(256), primary_key=True),
        sa.Column("device_id", sa.String(256), primary_key=True),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_channel_devices_device", "channel_devices", ["org_id", "device_id"])
    op.create_table(
        "secrets",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("nonce", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_ns", sa.BigInteger, nullable=False),
    )
    epoch = op.create_table(
        "credential_epoch",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(epoch, [{"id": 1, "epoch": 0}])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(32)),
        sa.Column("time_ns", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("remote", sa.String(64)),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_org", "audit_log", ["org_id", "id"])


def downgrade() -> None:
    raise NotImplementedError("the identity migration is not reversible: restore a backup")
