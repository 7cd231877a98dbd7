"""Prices: overrides, the materialized rate table, its scopes and the registry of priced pairs.

``price_overrides`` keeps every price an operator set (a correction marks the
row it replaces ``superseded_by``; one active row per tenant, pattern,
provider and date). ``cost_rates`` holds, per schedule (tenant '' = global),
model, provider, input band (-1 = any) and hour of day (-1 = all day), the
rates in force over ``[valid_from, valid_to)``; the cost queries join it at
query time, so nothing here touches events or rollups. ``cost_rate_scopes``
names the tenants with a schedule of their own for a pair, ``priced_models``
the pairs materialized (pricing.rates fills both).

Grants: the worker materializes rates during rollups (cost_rates,
cost_rate_scopes, priced_models) and reads overrides; the web role writes
overrides through the admin API and refreshes the rates in the same
transaction. storage.roles.TABLE_GRANTS lists them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TENANT_LEN = 64  # schema.event.MAX_TENANT_ID_LEN, frozen here
MODEL_LEN = 64  # schema.event.MAX_MODEL_LEN
PROVIDER_LEN = 64  # schema.event.MAX_PROVIDER_LEN
SOURCE_LEN = 16
SET_BY_LEN = 128
RATES = ("input_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok", "output_per_mtok", "reasoning_per_mtok")
NULLABLE_OVERRIDE_RATES = ("cache_read_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok")


def _tz() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "price_overrides",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(TENANT_LEN), server_default="", nullable=False),
        sa.Column("model_pattern", sa.String(MODEL_LEN), nullable=False),
        sa.Column("provider", sa.String(PROVIDER_LEN), server_default="", nullable=False),
        sa.Column("effective_from", sa.Date(), nullable=False),
        *(sa.Column(rate, sa.Numeric(), nullable=rate in NULLABLE_OVERRIDE_RATES) for rate in RATES),
        sa.Column("call_fee", sa.Numeric(), server_default=sa.text("0"), nullable=False),
        sa.Column("set_by", sa.String(SET_BY_LEN), server_default="", nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _tz(), server_default=sa.func.now(), nullable=False),
        sa.Column("superseded_by", sa.BigInteger(), nullable=True),
        sa.Column("superseded_at", _tz(), nullable=True),
        sa.CheckConstraint(
            "input_per_mtok >= 0 AND output_per_mtok >= 0 AND call_fee >= 0"
            " AND coalesce(cache_read_per_mtok, 0) >= 0 AND coalesce(cache_write_per_mtok, 0) >= 0"
            " AND coalesce(reasoning_per_mtok, 0) >= 0",
            name=op.f("ck_price_overrides_rates_not_negative"),
        ),
        sa.CheckConstraint("length(btrim(reason)) > 0", name=op.f("ck_price_overrides_reason_given")),
        sa.CheckConstraint("length(model_pattern) > 0", name=op.f("ck_price_overrides_pattern_given")),
        sa.CheckConstraint(
            "(superseded_by IS NULL) = (superseded_at IS NULL)", name=op.f("ck_price_overrides_superseded_both")
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["price_overrides.id"],
            name="price_overrides_superseded_by_fkey",
            deferrable=True,
            initially="DEFERRED",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_overrides")),
    )
    op.create_index(
        "uq_price_overrides_active",
        "price_overrides",
        ["tenant_id", "model_pattern", "provider", "effective_from"],
        unique=True,
        postgresql_where=sa.text("superseded_by IS NULL"),
    )
    op.create_table(
        "cost_rates",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("model", sa.String(MODEL_LEN), nullable=False),
        sa.Column("provider", sa.String(PROVIDER_LEN), nullable=False),
        sa.Column("input_band", sa.Integer(), nullable=False),
        sa.Column("hour_of_day", sa.SmallInteger(), nullable=False),
        sa.Column("valid_from", _tz(), nullable=False),
        sa.Column("valid_to", _tz(), nullable=False),
        *(sa.Column(rate, sa.Numeric(), nullable=False) for rate in RATES),
        sa.Column("call_fee", sa.Numeric(), nullable=False),
        sa.Column("source", sa.String(SOURCE_LEN), nullable=False),
        sa.Column("override_id", sa.BigInteger(), nullable=True),
        sa.Column("approximate", sa.Boolean(), nullable=False),
        sa.CheckConstraint("source IN ('catalog', 'override')", name=op.f("ck_cost_rates_source_known")),
        sa.CheckConstraint("valid_from < valid_to", name=op.f("ck_cost_rates_period_not_empty")),
        sa.CheckConstraint("hour_of_day BETWEEN -1 AND 23", name=op.f("ck_cost_rates_hour_known")),
        sa.CheckConstraint(
            "(source = 'override') = (override_id IS NOT NULL)", name=op.f("ck_cost_rates_override_named")
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "model", "provider", "input_band", "hour_of_day", "valid_from", name=op.f("pk_cost_rates")
        ),
    )
    op.create_table(
        "cost_rate_scopes",
        sa.Column("tenant_id", sa.String(TENANT_LEN), nullable=False),
        sa.Column("model", sa.String(MODEL_LEN), nullable=False),
        sa.Column("provider", sa.String(PROVIDER_LEN), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "model", "provider", name=op.f("pk_cost_rate_scopes")),
    )
    op.create_table(
        "priced_models",
        sa.Column("model", sa.String(MODEL_LEN), nullable=False),
        sa.Column("provider", sa.String(PROVIDER_LEN), nullable=False),
        sa.Column("first_seen", _tz(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("model", "provider", name=op.f("pk_priced_models")),
    )


def downgrade() -> None:
    op.drop_table("priced_models")
    op.drop_table("cost_rate_scopes")
    op.drop_table("cost_rates")
    op.drop_index("uq_price_overrides_active", table_name="price_overrides")
    op.drop_table("price_overrides")
