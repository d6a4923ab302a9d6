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
    sa.Column("created_by", sa.String(128)),
    sa.Column("user_id", sa.String(32)),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("operator", sa.Boolean, nullable=False, default=False),
    sa.Column("expires_ns", sa.BigInteger),
    sa.Column("last_used_ns", sa.BigInteger),
)

measurement_schemas = sa.Table(
    "measurement_schemas",
    metadata,
    sa.Column("bucket_id", sa.String(32), sa.ForeignKey("buckets.id"), primary_key=True),
    sa.Column("measurement", sa.String(256), primary_key=True),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("strict", sa.Boolean, nullable=False, default=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("password_hash", sa.String(256)),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("operator", sa.Boolean, nullable=False, default=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("password_changed_ns", sa.BigInteger),
    sa.Column("last_login_ns", sa.BigInteger),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Index("ix_memberships_user", "user_id"),
)

# an existing account asked to join an org: a member only once the account holder accepts
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False),  # the code the inviter passes on
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_ns", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("org_id", "user_id"),
)

# one-time tokens that let a user set a password: account setup and admin-issued resets
password_tokens = sa.Table(
    "password_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("org_id", sa.String(32), nullable=False),  # whose admin issued it
    sa.Column("expires_ns", sa.BigInteger, nullable=False),
    sa.Column("used_ns", sa.BigInteger),
)

# a sign-in session: one chain of rotating refresh tokens and the access tokens they issue
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("client_id", sa.String(128)),
    sa.Column("scope", sa.String(512)),
    sa.Column("remote", sa.String(64)),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("expires_ns", sa.BigInteger, nullable=False),
    sa.Column("revoked_ns", sa.BigInteger),
    sa.Index("ix_sessions_user", "user_id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(32), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("used_ns", sa.BigInteger),
    sa.Index("ix_refresh_session", "session_id"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("bucket_id", sa.String(32)),
    sa.Column("permissions", sa.JSON, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("key_hash", sa.String(64), unique=True),
    sa.Column("key_prefix", sa.String(16)),
    sa.Column("key_created_ns", sa.BigInteger),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("attributes_updated_ns", sa.BigInteger),
    sa.Column("last_seen_ns", sa.BigInteger),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    # online status (motes/registry/status.py): kept here so every process sees one answer
    sa.Column("expected_interval_seconds", sa.Integer),
    sa.Column("connected", sa.Boolean, nullable=False, default=False),
    sa.Column("connected_ns", sa.BigInteger),
    sa.Column("disconnected_ns", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False, default="offline"),
    sa.Column("status_ns", sa.BigInteger),
)

device_history = sa.Table(
    "device_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(32), nullable=False),
    sa.Column("device", sa.String(256), nullable=False),
    sa.Column("time_ns", sa.BigInteger, nullable=False),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Index("ix_device_history", "org_id", "device", "time_ns"),
)

# every change of a device's status (online, offline, stale) and why
device_status_history = sa.Table(
    "device_status_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(32), nullable=False),
    sa.Column("device_id", sa.String(256), nullable=False),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(128), nullable=False),
    sa.Index("ix_device_status_history", "org_id", "device_id", "at_ns"),
)

# MQTT messages the platform refused, for the device's owner (motes/registry/rejections.py);
# device_id is NULL for refusals of token and user connections. SQLite autoincrements only
# an INTEGER primary key, which is 64-bit there anyway
device_rejections = sa.Table(
    "device_rejections",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("org_id", sa.String(32), nullable=False),
    sa.Column("device_id", sa.String(256)),
    sa.Column("at_ns", sa.BigInteger, nullable=False),
    sa.Column("transport", sa.String(16), nullable=False),
    sa.Column("topic", sa.String(1024), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Index("ix_device_rejections", "org_id", "device_id", "id"),
)

# commands sent to devices (persistent RPC); motes/registry/commands.py has the state machine
device_commands = sa.Table(
    "device_commands",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("org_id", sa.String(32), nullable=False),
    sa.Column("device_id", sa.String(256), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.String(320), nullable=False),
    sa.Column("expires_ns", sa.BigInteger, nullable=False),
    sa.Column("sent_ns", sa.BigInteger),
    sa.Column("delivered_ns", sa.BigInteger),
    sa.Column("completed_ns", sa.BigInteger),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("response", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Index("ix_device_commands", "org_id", "device_id", "state", "created_ns"),
    # the expiry sweep looks for open commands past their time, across orgs
    sa.Index("ix_device_commands_due", "state", "expires_ns"),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("bucket_id", sa.String(32)),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
)

channel_devices = sa.Table(
    "channel_devices",
    metadata,
    sa.Column("org_id", sa.String(32), primary_key=True),
    sa.Column("channel_id", sa.String(256), primary_key=True),
    sa.Column("device_id", sa.String(256), primary_key=True),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Index("ix_channel_devices_device", "org_id", "device_id"),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("nonce", sa.LargeBinary, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("updated_ns", sa.BigInteger, nullable=False),
)

# one row: bumped by every change to credentials, so each process knows when to forget the
# credentials it verified (see motes/registry/common.py TTLCache)
credential_epoch = sa.Table(
    "credential_epoch",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("org_id", sa.String(32)),
    sa.Column("time_ns", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.String(320), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(512), nullable=False, default=""),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("remote", sa.String(64)),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Index("ix_audit_org", "org_id", "id"),
)
