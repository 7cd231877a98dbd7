"""API key last use and expiry; the partition-creating function the worker role calls.

``analytics_events_create_month(date)`` is the one place a monthly partition
is created (storage.partitions.ensure_months calls it). It is SECURITY
DEFINER: it runs as its owner, the owner of ``analytics_events``, because only
the owner may CREATE the table and ATTACH it, and the ingest worker, which
creates a missing month on demand, runs as a role that owns nothing
(storage.roles). It takes a date, builds the table name and the bounds from
it (never from text it was given), has its search_path fixed, and PUBLIC may
not execute it; storage.roles grants EXECUTE to the worker role.

The first partitions (the current month and the next) are created here, once
the function exists, instead of in 0001.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from storage.partitions import ensure_months, months_ahead

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FIRST_MONTHS_AHEAD = 1

# {schema} is the migration's own current_schema(), quoted; nothing else is formatted in.
CREATE_MONTH_FUNCTION = """
CREATE FUNCTION analytics_events_create_month(month_start date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    first_day date := date_trunc('month', month_start)::date;
    part text := 'analytics_events_' || to_char(first_day, 'YYYY_MM');
BEGIN
    IF month_start IS NULL THEN
        RAISE EXCEPTION 'analytics_events_create_month: month_start is null';
    END IF;
    IF to_regclass(quote_ident(part)) IS NOT NULL THEN
        RETURN false;  -- attached already, or kept detached by retention: never re-attached here
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE analytics_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('ALTER TABLE analytics_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part,
                   to_char(first_day, 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char((first_day + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END
$$
"""
FUNCTION_SIGNATURE = "analytics_events_create_month(date)"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))

    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    op.execute(CREATE_MONTH_FUNCTION.format(schema=bind.dialect.identifier_preparer.quote(schema)))
    op.execute(f"REVOKE ALL ON FUNCTION {FUNCTION_SIGNATURE} FROM PUBLIC")

    ensure_months(bind, months_ahead(datetime.now(UTC), FIRST_MONTHS_AHEAD))


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {FUNCTION_SIGNATURE}")
    op.drop_column("api_keys", "expires_at")
    op.drop_column("api_keys", "last_used_at")
