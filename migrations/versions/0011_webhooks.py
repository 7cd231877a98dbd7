"""Webhooks and their delivery log.

``webhooks`` holds where a tenant's notifications go (URL, signing secret,
json or slack format); ``deliveries`` one row per notification and webhook:
the delivery tasks' work list and the log a tenant reads. A partial index
finds the deliveries due (pending or failed) by ``next_attempt_at``. Every
primary key leads with ``tenant_id``; deleting a webhook deletes its log.

Grants: the worker reads webhooks (the secret included) and writes deliveries;
the web role manages webhooks without ever reading a secret back, and reads the
log. storage.roles.TABLE_GRANTS lists them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TENANT_LEN = 64  # schema.event.MAX_TENANT_ID_LEN, frozen here
URL_LEN = 2048
SECRET_LEN = 128
FORMAT_LEN = 16
STATUS_LEN = 16


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("url", sa.String(URL_LEN), nullable=False),
        sa.Column("secret", sa.String(SECRET_LEN), nullable=False),
        sa.Column("format", sa.String(FORMAT_LEN), server_default="json", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("format IN ('json', 'slack')", name=op.f("ck_webhooks_format_known")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_webhooks")),
    )
    op.create_table(
        "deliveries",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("notification_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("webhook_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.String(STATUS_LEN), server_default="pending", nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.Column("next_attempt_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.Column("last_attempt_at", _tz(), nullable=True),
        sa.Column("delivered_at", _tz(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'gave_up')", name=op.f("ck_deliveries_status_known")
        ),
        sa.CheckConstraint(
            "(status = 'delivered') = (delivered_at IS NOT NULL)",
            name=op.f("ck_deliveries_delivered_at_matches_status"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "webhook_id"],
            ["webhooks.tenant_id", "webhooks.id"],
            name="deliveries_tenant_id_webhook_id_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "notification_id"],
            ["notifications.tenant_id", "notifications.id"],
            name="deliveries_tenant_id_notification_id_fkey",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint(
            "tenant_id",
            "notification_id",
            "webhook_id",
            name=op.f("uq_deliveries_tenant_id_notification_id_webhook_id"),
        ),
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('pending', 'failed')"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_table("webhooks")
