"""Prices: local overrides, the materialized rate table and its registries (pricing/).

``price_overrides`` keeps every price an operator set; a correction never
updates a price in place: the corrected row is kept with ``superseded_by``
naming its replacement, and at most one row per (tenant, pattern, provider,
effective_from) is active (partial unique index). ``cost_rates`` is what the
cost queries join: per (tenant schedule, model, provider, input band, hour of
day) the rates in force over ``[valid_from, valid_to)``; ``-infinity`` and
``infinity`` are the open ends, so the columns are read through ``isfinite``.
``cost_rate_scopes`` says which tenants have a schedule of their own for a pair
(the others use tenant ''); ``priced_models`` lists the pairs materialized.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, TenantId
from schema.event import MAX_MODEL_LEN, MAX_PROVIDER_LEN

GLOBAL: Final = ""  # tenant_id of the global overrides and of the global rate schedule
ANY_PROVIDER: Final = ""  # provider of an override that applies whatever the provider
SOURCE_CATALOG: Final = "catalog"
SOURCE_OVERRIDE: Final = "override"
SOURCE_LEN: Final = 16
SET_BY_LEN: Final = 128
REASON_MAX_LEN: Final = 1000

Money = Numeric(asdecimal=True)  # unconstrained numeric: exact, never float


class PriceOverride(Base):
    __tablename__ = "price_overrides"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[TenantId] = mapped_column(server_default=GLOBAL)
    model_pattern: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN), server_default=ANY_PROVIDER)
    effective_from: Mapped[date] = mapped_column(Date)
    input_per_mtok: Mapped[Decimal] = mapped_column(Money)
    cache_read_per_mtok: Mapped[Decimal | None] = mapped_column(Money)  # None: priced as input
    cache_write_per_mtok: Mapped[Decimal | None] = mapped_column(Money)  # None: priced as input
    output_per_mtok: Mapped[Decimal] = mapped_column(Money)
    reasoning_per_mtok: Mapped[Decimal | None] = mapped_column(Money)  # None: priced as output
    call_fee: Mapped[Decimal] = mapped_column(Money, server_default=text("0"))
    set_by: Mapped[str] = mapped_column(String(SET_BY_LEN), server_default="")
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Deferred: a correction names its replacement before the replacement's row exists (pricing.overrides).
    superseded_by: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("price_overrides.id", deferrable=True, initially="DEFERRED")
    )
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND call_fee >= 0"
            " AND coalesce(cache_read_per_mtok, 0) >= 0 AND coalesce(cache_write_per_mtok, 0) >= 0"
            " AND coalesce(reasoning_per_mtok, 0) >= 0",
            name="rates_not_negative",
        ),
        CheckConstraint("length(btrim(reason)) > 0", name="reason_given"),
        CheckConstraint("length(model_pattern) > 0", name="pattern_given"),
        CheckConstraint("(superseded_by IS NULL) = (superseded_at IS NULL)", name="superseded_both"),
        Index(
            "uq_price_overrides_active",
            "tenant_id",
            "model_pattern",
            "provider",
            "effective_from",
            unique=True,
            postgresql_where=text("superseded_by IS NULL"),
        ),
    )


class CostRate(Base):
    __tablename__ = "cost_rates"

    tenant_id: Mapped[TenantId]
    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN))
    input_band: Mapped[int] = mapped_column(Integer)  # -1: every band
    hour_of_day: Mapped[int] = mapped_column(SmallInteger)  # -1: all day
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # may be -infinity
    valid_to: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # may be infinity
    input_per_mtok: Mapped[Decimal] = mapped_column(Money)
    cache_read_per_mtok: Mapped[Decimal] = mapped_column(Money)
    cache_write_per_mtok: Mapped[Decimal] = mapped_column(Money)
    output_per_mtok: Mapped[Decimal] = mapped_column(Money)
    reasoning_per_mtok: Mapped[Decimal] = mapped_column(Money)
    call_fee: Mapped[Decimal] = mapped_column(Money)
    source: Mapped[str] = mapped_column(String(SOURCE_LEN))
    override_id: Mapped[int | None] = mapped_column(BigInteger)
    approximate: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "model", "provider", "input_band", "hour_of_day", "valid_from"),
        CheckConstraint(f"source IN ('{SOURCE_CATALOG}', '{SOURCE_OVERRIDE}')", name="source_known"),
        CheckConstraint("valid_from < valid_to", name="period_not_empty"),
        CheckConstraint("hour_of_day BETWEEN -1 AND 23", name="hour_known"),
        CheckConstraint("(source = 'override') = (override_id IS NOT NULL)", name="override_named"),
    )


class CostRateScope(Base):
    __tablename__ = "cost_rate_scopes"

    tenant_id: Mapped[TenantId]
    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN))

    __table_args__ = (PrimaryKeyConstraint("tenant_id", "model", "provider"),)


class PricedModel(Base):
    __tablename__ = "priced_models"

    model: Mapped[str] = mapped_column(String(MAX_MODEL_LEN))
    provider: Mapped[str] = mapped_column(String(MAX_PROVIDER_LEN))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (PrimaryKeyConstraint("model", "provider"),)
