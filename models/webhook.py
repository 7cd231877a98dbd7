"""Webhooks (where a tenant's notifications go) and the delivery log (one row per notification and webhook).

A webhook's ``secret`` signs every delivery (alerts.signing). HMAC needs the
secret itself, so it is stored as generated, not hashed; only the worker role
may read the column (storage.roles grants the web role the other columns), and
the API shows it once, in the answer to the creation.

``deliveries`` is both the work list of the delivery tasks and the log a
tenant reads: ``status`` pending (not tried yet, or a lease while queued),
failed (tried, retried at ``next_attempt_at``), delivered (a 2xx answer; never
sent again) or gave_up (still failing WEBHOOK_RETRY_FOR_S after the
notification). One row per (tenant, notification, webhook) by a unique key, so
the dispatcher running twice creates nothing twice. Deleting a webhook deletes
its log.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TenantId

FORMAT_JSON: Final = "json"
FORMAT_SLACK: Final = "slack"
FORMATS: Final = (FORMAT_JSON, FORMAT_SLACK)

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"
GAVE_UP: Final = "gave_up"
DELIVERY_STATUSES: Final = (PENDING, DELIVERED, FAILED, GAVE_UP)
OPEN_STATUSES: Final = (PENDING, FAILED)  # still to be tried

MAX_URL_LEN: Final = 2048
SECRET_LEN: Final = 128
FORMAT_LEN: Final = 16
STATUS_LEN: Final = 16
MAX_ERROR_LEN: Final = 500  # the stored error message is cut to this


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Webhook(Base):
    __tablename__ = "webhooks"

    tenant_id: Mapped[TenantId]
    id: Mapped[int] = mapped_column(BigInteger, autoincrement=True)
    url: Mapped[str] = mapped_column(String(MAX_URL_LEN))
    secret: Mapped[str] = mapped_column(String(SECRET_LEN))
    format: Mapped[str] = mapped_column(String(FORMAT_LEN), server_default=FORMAT_JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        CheckConstraint(_one_of("format", FORMATS), name="format_known"),
    )


class Delivery(Base):
    __tablename__ = "deliveries"

    tenant_id: Mapped[TenantId]
    id: Mapped[int] = mapped_column(BigInteger, autoincrement=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    webhook_id: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # attempts made so far
    status: Mapped[str] = mapped_column(String(STATUS_LEN), server_default=PENDING)
    http_status: Mapped[int | None] = mapped_column(SmallInteger)  # of the last attempt; None: no answer
    error: Mapped[str | None] = mapped_column(Text)  # of the last failed attempt
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        UniqueConstraint("tenant_id", "notification_id", "webhook_id"),
        ForeignKeyConstraint(["tenant_id", "webhook_id"], ["webhooks.tenant_id", "webhooks.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(
            ["tenant_id", "notification_id"], ["notifications.tenant_id", "notifications.id"], ondelete="CASCADE"
        ),
        CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status_known"),
        CheckConstraint("(status = 'delivered') = (delivered_at IS NOT NULL)", name="delivered_at_matches_status"),
        Index("ix_deliveries_due", "next_attempt_at", postgresql_where=text("status IN ('pending', 'failed')")),
    )
