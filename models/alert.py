"""Alert rules, their current state, the history of state changes and the notification outbox.

A rule belongs to a tenant and may be narrowed to a feature or a model; it has
a warning and a critical threshold in the unit of its kind (USD for budgets, a
fraction for the error rate, milliseconds for latency, a ratio to the baseline
for a cost spike, the metric's unit for ingest health). ``alert_states`` holds
one row per evaluated rule; every change of state adds an ``alert_history`` row
and, in the same transaction, a ``notifications`` row: the outbox the webhook
delivery reads. A notification's ``id`` (a UUID) is the stable id receivers
deduplicate by.

Every primary key leads with ``tenant_id`` (the schema stays distributable by
tenant). History and notifications keep no foreign key to the rule: deleting a
rule keeps its record and its pending notifications (the payload names the rule).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TenantId
from schema.event import MAX_FEATURE_NAME_LEN, MAX_MODEL_LEN

BUDGET_DAY: Final = "budget_day"
BUDGET_MONTH: Final = "budget_month"
COST_SPIKE: Final = "cost_spike"
ERROR_RATE: Final = "error_rate"
LATENCY_P95: Final = "latency_p95"
INGEST_HEALTH: Final = "ingest_health"
RULE_KINDS: Final = (BUDGET_DAY, BUDGET_MONTH, COST_SPIKE, ERROR_RATE, LATENCY_P95, INGEST_HEALTH)

INGEST_LAG_S: Final = "ingest_lag_s"
ROLLUP_LAG_S: Final = "rollup_lag_s"
DEAD_LETTERS_ADDED: Final = "dead_letters_added"
PARTITION_HORIZON_DAYS: Final = "partition_horizon_days"
INGEST_METRICS: Final = (INGEST_LAG_S, ROLLUP_LAG_S, DEAD_LETTERS_ADDED, PARTITION_HORIZON_DAYS)
LOWER_IS_WORSE: Final = frozenset({PARTITION_HORIZON_DAYS})  # fewer days of partitions ahead is the danger

OK: Final = "ok"
WARNING: Final = "warning"
CRITICAL: Final = "critical"
RESOLVED: Final = "resolved"  # history's name for the change back to ok
STATES: Final = (OK, WARNING, CRITICAL)

STATE_CHANGE: Final = "state_change"
REMINDER: Final = "reminder"
NOTIFICATION_KINDS: Final = (STATE_CHANGE, REMINDER)

RULE_NAME_LEN: Final = 128
KIND_LEN: Final = 32
STATE_LEN: Final = 16
CREATED_BY_LEN: Final = 128


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class AlertRule(Base):
    __tablename__ = "alert_rules"

    tenant_id: Mapped[TenantId]
    id: Mapped[int] = mapped_column(BigInteger, autoincrement=True)
    name: Mapped[str] = mapped_column(String(RULE_NAME_LEN))
    kind: Mapped[str] = mapped_column(String(KIND_LEN))
    feature: Mapped[str | None] = mapped_column(String(MAX_FEATURE_NAME_LEN))  # None: every feature
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL_LEN))  # None: every model
    metric: Mapped[str | None] = mapped_column(String(KIND_LEN))  # ingest_health only
    warning_threshold: Mapped[Decimal] = mapped_column(Numeric(asdecimal=True))
    critical_threshold: Mapped[Decimal] = mapped_column(Numeric(asdecimal=True))
    window_minutes: Mapped[int | None] = mapped_column(Integer)  # error_rate, latency_p95
    min_calls: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    min_amount_usd: Mapped[Decimal | None] = mapped_column(Numeric(asdecimal=True))  # cost_spike
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(CREATED_BY_LEN), server_default="")

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        UniqueConstraint("tenant_id", "name"),
        CheckConstraint(_one_of("kind", RULE_KINDS), name="kind_known"),
        CheckConstraint(
            f"(kind = '{INGEST_HEALTH}' AND metric IS NOT NULL AND {_one_of('metric', INGEST_METRICS)})"
            f" OR (kind <> '{INGEST_HEALTH}' AND metric IS NULL)",
            name="metric_matches_kind",
        ),
        CheckConstraint(
            "warning_threshold >= 0 AND critical_threshold >= 0 AND min_calls >= 0"
            " AND coalesce(min_amount_usd, 0) >= 0 AND coalesce(window_minutes, 1) > 0",
            name="amounts_not_negative",
        ),
    )


class AlertState(Base):
    __tablename__ = "alert_states"

    tenant_id: Mapped[TenantId]
    rule_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(STATE_LEN))
    value: Mapped[Decimal | None] = mapped_column(Numeric(asdecimal=True))  # None: not enough data
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "rule_id"),
        ForeignKeyConstraint(["tenant_id", "rule_id"], ["alert_rules.tenant_id", "alert_rules.id"], ondelete="CASCADE"),
        CheckConstraint(_one_of("state", STATES), name="state_known"),
    )


class AlertHistory(Base):
    __tablename__ = "alert_history"

    tenant_id: Mapped[TenantId]
    id: Mapped[int] = mapped_column(BigInteger, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(BigInteger)
    rule_name: Mapped[str] = mapped_column(String(RULE_NAME_LEN))
    from_state: Mapped[str] = mapped_column(String(STATE_LEN))
    to_state: Mapped[str] = mapped_column(String(STATE_LEN))
    value: Mapped[Decimal | None] = mapped_column(Numeric(asdecimal=True))
    threshold: Mapped[Decimal | None] = mapped_column(Numeric(asdecimal=True))  # None: resolved without data
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        CheckConstraint(_one_of("from_state", STATES), name="from_state_known"),
        CheckConstraint(_one_of("to_state", (WARNING, CRITICAL, RESOLVED)), name="to_state_known"),
        Index(None, "tenant_id", "at"),
    )


class Notification(Base):
    __tablename__ = "notifications"

    tenant_id: Mapped[TenantId]
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    rule_id: Mapped[int] = mapped_column(BigInteger)
    history_id: Mapped[int | None] = mapped_column(BigInteger)  # None: a reminder
    kind: Mapped[str] = mapped_column(String(KIND_LEN))
    state: Mapped[str] = mapped_column(String(STATE_LEN))  # warning | critical | resolved
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        # One notification per state change, whatever retries the evaluator makes.
        UniqueConstraint("tenant_id", "history_id"),
        CheckConstraint(_one_of("kind", NOTIFICATION_KINDS), name="kind_known"),
        CheckConstraint(_one_of("state", (WARNING, CRITICAL, RESOLVED)), name="state_known"),
        CheckConstraint(f"(kind = '{STATE_CHANGE}') = (history_id IS NOT NULL)", name="history_matches_kind"),
        Index(None, "created_at"),
    )
