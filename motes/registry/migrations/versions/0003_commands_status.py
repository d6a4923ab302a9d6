"""Device commands (persistent RPC) and device online status.

Devices gain an expected reporting interval, their MQTT connection state and a status
(online, offline, stale) with a history of its changes; commands sent to devices are kept
with their state, so they survive a restart. Existing devices start offline, not connected.
MQTT messages the platform refused are kept for their device's owner (device_rejections).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("expected_interval_seconds", sa.Integer))
        # server defaults give the devices already there values for the NOT NULL columns
        batch.add_column(
            sa.Column("connected", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("connected_ns", sa.BigInteger))
        batch.add_column(sa.Column("disconnected_ns", sa.BigInteger))
        batch.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="offline")
        )
        batch.add_column(sa.Column("status_ns", sa.BigInteger))
    op.create_table(
        "device_status_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(256), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(128), nullable=False),
    )
    op.create_index(
        "ix_device_status_history", "device_status_history", ["org_id", "device_id", "at_ns"]
    )
    op.create_table(
        "device_commands",
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
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("response", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_index(
        "ix_device_commands",
        "device_commands",
        ["org_id", "device_id", "state", "created_ns"],
    )
    op.create_index("ix_device_commands_due", "device_commands", ["state", "expires_ns"])
    op.create_table(
        "device_rejections",
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
    )
    op.create_index("ix_device_rejections", "device_rejections", ["org_id", "device_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_device_rejections", "device_rejections")
    op.drop_table("device_rejections")
    op.drop_index("ix_device_commands_due", "device_commands")
    op.drop_index("ix_device_commands", "device_commands")
    op.drop_table("device_commands")
    op.drop_index("ix_device_status_history", "device_status_history")
    op.drop_table("device_status_history")
    with op.batch_alter_table("devices") as batch:
        for column in (
            "status_ns",
            "status",
            "disconnected_ns",
            "connected_ns",
            "connected",
            "expected_interval_seconds",
        ):
            batch.drop_column(column)
