"""Partitioned analytics_events and dead_letters.

The first monthly partitions are created by 0005, through the function that is
the one place partitions are created (storage.partitions.ensure_months).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("feature_name", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(128), nullable=True),
        sa.CheckConstraint("status IN ('success', 'error')", name=op.f("ck_analytics_events_status_known")),
        sa.CheckConstraint(
            "input_tokens >= 0 AND output_tokens >= 0 AND latency_ms >= 0"
            " AND tokens_used >= input_tokens + output_tokens",
            name=op.f("ck_analytics_events_counts_valid"),
        ),
        sa.PrimaryKeyConstraint("event_id", "timestamp", name="pk_analytics_events"),
        postgresql_partition_by="RANGE (timestamp)",
    )
    op.create_index(
        "ix_analytics_events_tenant_id_feature_name_timestamp",
        "analytics_events",
        ["tenant_id", "feature_name", "timestamp"],
    )
    op.create_index("ix_analytics_events_timestamp_status", "analytics_events", ["timestamp", "status"])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint("fingerprint", name="uq_dead_letters_fingerprint"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("analytics_events")  # drops its partitions with it
