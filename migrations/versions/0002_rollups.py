"""Rollups: pending-batch log, batch_id on events, hourly/daily/daily-user rollups.

Events stored before this revision get ``batch_id`` 0 and one pending batch 0
covering them, so the first rollup run adds them like any other batch.

The two SQL functions are the database side of storage.histogram; their
constant (relative error 2 %) is frozen here on purpose: changing it means a
new revision and a rebuild of the rollups.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PRE_EXISTING_BATCH = 0  # the sequence starts at 1, so 0 cannot collide
ROLLUP_FILLFACTOR = 80

LATENCY_BUCKET_FUNCTION = """
CREATE FUNCTION rollup_latency_bucket(latency_ms integer) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN latency_ms <= 0 THEN 0
                ELSE 1 + ceil(ln(latency_ms::float8) / ln(1.02::float8 / 0.98::float8))
           END::smallint
$$
"""

# Adds two sparse histograms (ascending bucket indexes + counts) bucket by bucket.
HIST_MERGE_FUNCTION = """
CREATE FUNCTION rollup_hist_merge(
    a_buckets smallint[], a_counts integer[], b_buckets smallint[], b_counts integer[],
    OUT buckets smallint[], OUT counts integer[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(bucket ORDER BY bucket), array_agg(n ORDER BY bucket)
    FROM (SELECT bucket, sum(n)::integer AS n
          FROM (SELECT * FROM unnest(a_buckets, a_counts)
                UNION ALL
                SELECT * FROM unnest(b_buckets, b_counts)) AS both_(bucket, n)
          GROUP BY bucket) AS merged
$$
"""


def _figures() -> list[sa.Column]:
    return [
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum", sa.BigInteger(), nullable=False),
        sa.Column("latency_min", sa.Integer(), nullable=False),
        sa.Column("latency_max", sa.Integer(), nullable=False),
        sa.Column("latency_hist_buckets", postgresql.ARRAY(sa.SmallInteger()), nullable=False),
        sa.Column("latency_hist_counts", postgresql.ARRAY(sa.Integer()), nullable=False),
    ]


def _rollup_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature_name", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        *_figures(),
        sa.PrimaryKeyConstraint("tenant_id", "bucket", "feature_name", "model", name=f"pk_{name}"),
    )


def upgrade() -> None:
    op.create_table(
        "rollup_pending_batches",
        sa.Column("batch_id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("min_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_rollup_pending_batches"),
    )

    # A constant default is a catalog change, not a rewrite; it is dropped at
    # once so that every writer has to name its batch.
    op.add_column(
        "analytics_events",
        sa.Column("batch_id", sa.BigInteger(), nullable=False, server_default=str(PRE_EXISTING_BATCH)),
    )
    op.alter_column("analytics_events", "batch_id", server_default=None)
    op.execute(
        sa.text(
            "INSERT INTO rollup_pending_batches (batch_id, min_ts, max_ts)"
            " SELECT :batch, min(timestamp), max(timestamp) FROM analytics_events"
            " HAVING count(*) > 0"
        ).bindparams(batch=PRE_EXISTING_BATCH)
    )
    op.create_index(
        "ix_analytics_events_batch_id",
        "analytics_events",
        ["batch_id"],
        postgresql_using="brin",
        postgresql_with={"pages_per_range": 16, "autosummarize": "on"},
    )

    _rollup_table("rollup_hourly")
    _rollup_table("rollup_daily")
    op.create_table(
        "rollup_daily_users",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature_name", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "feature_name", "user_id", name="pk_rollup_daily_users"),
    )

    # Room on each page for the upserts' new row versions: HOT updates skip the
    # index insert and keep the tables from bloating (rows are updated all day).
    for table in ("rollup_hourly", "rollup_daily", "rollup_daily_users"):
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {ROLLUP_FILLFACTOR})")

    op.execute(LATENCY_BUCKET_FUNCTION)
    op.execute(HIST_MERGE_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION rollup_hist_merge(smallint[], integer[], smallint[], integer[])")
    op.execute("DROP FUNCTION rollup_latency_bucket(integer)")
    op.drop_table("rollup_daily_users")
    op.drop_table("rollup_daily")
    op.drop_table("rollup_hourly")
    op.drop_index("ix_analytics_events_batch_id", table_name="analytics_events")
    op.drop_column("analytics_events", "batch_id")
    op.drop_table("rollup_pending_batches")
