"""Alerts: rules, their states, the history of state changes and the notification outbox.

``alert_rules`` (per tenant, optionally narrowed to a feature or a model, a
warning and a critical threshold), ``alert_states`` (one row per evaluated
rule, deleted with its rule), ``alert_history`` (every state change, kept
when its rule is deleted) and ``notifications`` (the outbox webhook delivery
reads; one per state change, enforced by a unique key on the history row).
Every primary key leads with ``tenant_id``.

Grants: the worker's evaluator reads the rules and writes states, history and
notifications; the web role manages rules and reads states and history.
storage.roles.TABLE_GRANTS lists them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TENANT_LEN = 64  # schema.event.MAX_TENANT_ID_LEN, frozen here
FEATURE_LEN = 64  # schema.event.MAX_FEATURE_NAME_LEN
MODEL_LEN = 64  # schema.event.MAX_MODEL_LEN
RULE_NAME_LEN = 128
KIND_LEN = 32
STATE_LEN = 16
CREATED_BY_LEN = 128
RULE_KINDS = "'budget_day', 'budget_month', 'cost_spike', 'error_rate', 'latency_p95', 'ingest_health'"
INGEST_METRICS = "'ingest_lag_s', 'rollup_lag_s', 'dead_letters_added', 'partition_horizon_days'"
STATES = "'ok', 'warning', 'critical'"
CHANGES = "'warning', 'critical', 'resolved'"


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(RULE_NAME_LEN), nullable=False),
        sa.Column("kind", sa.String(KIND_LEN), nullable=False),
        sa.Column("feature", sa.String(FEATURE_LEN), nullable=True),
        sa.Column("model", sa.String(MODEL_LEN), nullable=True),
        sa.Column("metric", sa.String(KIND_LEN), nullable=True),
        sa.Column("warning_threshold", sa.Numeric(), nullable=False),
        sa.Column("critical_threshold", sa.Numeric(), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=True),
        sa.Column("min_calls", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("min_amount_usd", sa.Numeric(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", sa.String(CREATED_BY_LEN), server_default="", nullable=False),
        sa.CheckConstraint(f"kind IN ({RULE_KINDS})", name=op.f("ck_alert_rules_kind_known")),
        sa.CheckConstraint(
            f"(kind = 'ingest_health' AND metric IS NOT NULL AND metric IN ({INGEST_METRICS}))"
            " OR (kind <> 'ingest_health' AND metric IS NULL)",
            name=op.f("ck_alert_rules_metric_matches_kind"),
        ),
        sa.CheckConstraint(
            "warning_threshold >= 0 AND critical_threshold >= 0 AND min_calls >= 0"
            " AND coalesce(min_amount_usd, 0) >= 0 AND coalesce(window_minutes, 1) > 0",
            name=op.f("ck_alert_rules_amounts_not_negative"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_alert_rules_tenant_id_name")),
    )
    op.create_table(
        "alert_states",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(STATE_LEN), nullable=False),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("since", _tz(), nullable=False),
        sa.Column("last_notified_at", _tz(), nullable=True),
        sa.Column("evaluated_at", _tz(), nullable=False),
        sa.CheckConstraint(f"state IN ({STATES})", name=op.f("ck_alert_states_state_known")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "rule_id"],
            ["alert_rules.tenant_id", "alert_rules.id"],
            name="alert_states_tenant_id_rule_id_fkey",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "rule_id", name=op.f("pk_alert_states")),
    )
    op.create_table(
        "alert_history",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("rule_name", sa.String(RULE_NAME_LEN), nullable=False),
        sa.Column("from_state", sa.String(STATE_LEN), nullable=False),
        sa.Column("to_state", sa.String(STATE_LEN), nullable=False),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("threshold", sa.Numeric(), nullable=True),
        sa.Column("at", _tz(), nullable=False),
        sa.CheckConstraint(f"from_state IN ({STATES})", name=op.f("ck_alert_history_from_state_known")),
        sa.CheckConstraint(f"to_state IN ({CHANGES})", name=op.f("ck_alert_history_to_state_known")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_alert_history")),
    )
    op.create_index(op.f("ix_alert_history_tenant_id_at"), "alert_history", ["tenant_id", "at"])
    op.create_table(
        "notifications",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("rule_id", sa.BigInteger(), nullable=False),
        sa.Column("history_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(KIND_LEN), nullable=False),
        sa.Column("state", sa.String(STATE_LEN), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('state_change', 'reminder')", name=op.f("ck_notifications_kind_known")),
        sa.CheckConstraint(f"state IN ({CHANGES})", name=op.f("ck_notifications_state_known")),
        sa.CheckConstraint(
            "(kind = 'state_change') = (history_id IS NOT NULL)", name=op.f("ck_notifications_history_matches_kind")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("tenant_id", "history_id", name=op.f("uq_notifications_tenant_id_history_id")),
    )
    op.create_index(op.f("ix_notifications_created_at"), "notifications", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_notifications_created_at"), table_name="notifications")
    op.drop_table("notifications")
    op.drop_index(op.f("ix_alert_history_tenant_id_at"), table_name="alert_history")
    op.drop_table("alert_history")
    op.drop_table("alert_states")
    op.drop_table("alert_rules")
