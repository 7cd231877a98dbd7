"""Token buckets and provider on events; rollups keyed by provider and input band.

``analytics_events`` gains ``cache_read_tokens``, ``cache_write_tokens``,
``reasoning_tokens`` (integer, NOT NULL DEFAULT 0) and ``provider`` (NULL),
and its ``counts_valid`` check gains the bucket rules (cache reads + writes
<= input, reasoning <= output). Adding a column with a constant default is a
catalog change on the partitioned parent and every partition, not a rewrite;
the new check is added on the parent, which adds it to every partition and
validates their rows (one scan per partition under the ACCESS EXCLUSIVE lock
of this transaction; existing rows hold zeros, so none can fail).

The rollups gain ``provider`` ('' for none, like ``model``), ``input_band``
(schema.bands) and the bucket sums, and their primary keys are rebuilt with
the new columns. ``rollup_daily_users`` gains ``model``, ``provider``,
``input_band`` in its key and the token sums. Rows stored before this
revision keep their figures under provider '' and band 0, and their users'
input/output/cache/reasoning sums read 0: the rollup rebuild
(storage.rollups.rebuild, ``analytics rollups rebuild``) over the days whose
events are still kept recomputes them with the new keys and sums.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

EVENTS = "analytics_events"
COUNTS_CHECK = "ck_analytics_events_counts_valid"
OLD_COUNTS = (
    "input_tokens >= 0 AND output_tokens >= 0 AND latency_ms >= 0 AND tokens_used >= input_tokens + output_tokens"
)
NEW_COUNTS = (
    OLD_COUNTS + " AND cache_read_tokens >= 0 AND cache_write_tokens >= 0 AND reasoning_tokens >= 0"
    " AND cache_read_tokens + cache_write_tokens <= input_tokens"
    " AND reasoning_tokens <= output_tokens"
)
PROVIDER_LEN = 64  # schema.event.MAX_PROVIDER_LEN, frozen here
MODEL_LEN = 64
BUCKET_SUMS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
ROLLUPS = ("rollup_hourly", "rollup_daily")
USERS = "rollup_daily_users"
OLD_KEY = ("tenant_id", "bucket", "feature_name", "model")
NEW_KEY = (*OLD_KEY, "provider", "input_band")
OLD_USER_KEY = ("tenant_id", "day", "feature_name", "user_id")
NEW_USER_KEY = (*OLD_USER_KEY, "model", "provider", "input_band")
USER_SUMS = ("input_tokens", "output_tokens", *BUCKET_SUMS)


def _int_column(name: str, kind: type[sa.Integer] = sa.Integer) -> sa.Column:
    return sa.Column(name, kind(), nullable=False, server_default="0")


def _rekey(table: str, key: tuple[str, ...]) -> None:
    op.drop_constraint(op.f(f"pk_{table}"), table, type_="primary")
    op.create_primary_key(op.f(f"pk_{table}"), table, list(key))


def upgrade() -> None:
    for name in BUCKET_SUMS:
        op.add_column(EVENTS, _int_column(name))
    op.add_column(EVENTS, sa.Column("provider", sa.String(PROVIDER_LEN), nullable=True))
    op.drop_constraint(op.f(COUNTS_CHECK), EVENTS, type_="check")
    op.create_check_constraint(op.f(COUNTS_CHECK), EVENTS, NEW_COUNTS)

    for table in ROLLUPS:
        op.add_column(table, sa.Column("provider", sa.String(PROVIDER_LEN), nullable=False, server_default=""))
        op.add_column(table, _int_column("input_band"))
        for name in BUCKET_SUMS:
            op.add_column(table, _int_column(name, sa.BigInteger))
        _rekey(table, NEW_KEY)

    op.add_column(USERS, sa.Column("model", sa.String(MODEL_LEN), nullable=False, server_default=""))
    op.add_column(USERS, sa.Column("provider", sa.String(PROVIDER_LEN), nullable=False, server_default=""))
    op.add_column(USERS, _int_column("input_band"))
    for name in USER_SUMS:
        op.add_column(USERS, _int_column(name, sa.BigInteger))
    _rekey(USERS, NEW_USER_KEY)


def downgrade() -> None:
    """Back to one row per old key: rows that differ only in the new key columns are summed first."""
    _merge_users()
    op.drop_constraint(op.f(f"pk_{USERS}"), USERS, type_="primary")
    for name in ("model", "provider", "input_band", *USER_SUMS):
        op.drop_column(USERS, name)
    op.create_primary_key(op.f(f"pk_{USERS}"), USERS, list(OLD_USER_KEY))

    for table in ROLLUPS:
        _merge_rollup(table)
        op.drop_constraint(op.f(f"pk_{table}"), table, type_="primary")
        for name in ("provider", "input_band", *BUCKET_SUMS):
            op.drop_column(table, name)
        op.create_primary_key(op.f(f"pk_{table}"), table, list(OLD_KEY))

    op.drop_constraint(op.f(COUNTS_CHECK), EVENTS, type_="check")
    op.create_check_constraint(op.f(COUNTS_CHECK), EVENTS, OLD_COUNTS)
    for name in ("provider", *BUCKET_SUMS):
        op.drop_column(EVENTS, name)


def _merge_users() -> None:
    key = ", ".join(OLD_USER_KEY)
    op.execute(
        f"CREATE TEMP TABLE merged_users ON COMMIT DROP AS SELECT {key}, sum(calls) AS calls,"
        f" sum(errors) AS errors, sum(tokens_used) AS tokens_used FROM {USERS} GROUP BY {key}"
    )
    op.execute(f"DELETE FROM {USERS}")
    op.execute(
        f"INSERT INTO {USERS} ({key}, calls, errors, tokens_used)"
        f" SELECT {key}, calls, errors, tokens_used FROM merged_users"
    )


def _merge_rollup(table: str) -> None:
    """Sum the rows of one old key; histograms are merged with rollup_hist_merge (0002) pairwise."""
    # The first row of each old key (by provider, band) absorbs the others one by one.
    op.execute(
        f"""
        DO $$
        DECLARE extra record;
        BEGIN
            FOR extra IN
                SELECT t.* FROM {table} t
                WHERE (t.provider, t.input_band) <> (
                    SELECT f.provider, f.input_band FROM {table} f
                    WHERE (f.tenant_id, f.bucket, f.feature_name, f.model)
                          = (t.tenant_id, t.bucket, t.feature_name, t.model)
                    ORDER BY f.provider, f.input_band LIMIT 1)
            LOOP
                UPDATE {table} r SET
                    calls = r.calls + extra.calls, errors = r.errors + extra.errors,
                    input_tokens = r.input_tokens + extra.input_tokens,
                    output_tokens = r.output_tokens + extra.output_tokens,
                    tokens_used = r.tokens_used + extra.tokens_used,
                    latency_sum = r.latency_sum + extra.latency_sum,
                    latency_min = least(r.latency_min, extra.latency_min),
                    latency_max = greatest(r.latency_max, extra.latency_max),
                    latency_hist_buckets = (rollup_hist_merge(r.latency_hist_buckets, r.latency_hist_counts,
                        extra.latency_hist_buckets, extra.latency_hist_counts)).buckets,
                    latency_hist_counts = (rollup_hist_merge(r.latency_hist_buckets, r.latency_hist_counts,
                        extra.latency_hist_buckets, extra.latency_hist_counts)).counts
                WHERE (r.tenant_id, r.bucket, r.feature_name, r.model)
                      = (extra.tenant_id, extra.bucket, extra.feature_name, extra.model)
                  AND (r.provider, r.input_band) = (
                    SELECT f.provider, f.input_band FROM {table} f
                    WHERE (f.tenant_id, f.bucket, f.feature_name, f.model)
                          = (extra.tenant_id, extra.bucket, extra.feature_name, extra.model)
                    ORDER BY f.provider, f.input_band LIMIT 1);
                DELETE FROM {table} d
                WHERE (d.tenant_id, d.bucket, d.feature_name, d.model, d.provider, d.input_band)
                      = (extra.tenant_id, extra.bucket, extra.feature_name, extra.model,
                         extra.provider, extra.input_band);
            END LOOP;
        END $$
        """
    )
