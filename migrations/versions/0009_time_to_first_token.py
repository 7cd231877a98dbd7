"""Time to first token on events, and its count, sums and histogram in the rollups.

``analytics_events`` gains ``time_to_first_token_ms`` (integer, NULL: the call
did not stream) and the check ``time_to_first_token_valid`` (0 <= it <=
latency_ms). A nullable column without a default is a catalog change on the
parent and every partition; the check is added on the parent, which adds it to
every partition and validates their rows (one scan per partition under this
transaction's ACCESS EXCLUSIVE lock; existing rows hold NULL, so none fails).

``rollup_hourly`` and ``rollup_daily`` gain ``streamed_calls`` and ``ttft_sum``
(bigint, 0), ``ttft_min``/``ttft_max`` (NULL while a cell has no streamed
call) and the sparse histogram ``ttft_hist_buckets``/``ttft_hist_counts``
(empty arrays), the same bucket scheme as latency's (storage.histogram). Rows
rolled up before this revision read as cells without streamed calls, which
they are: no event had a time to first token before it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

EVENTS = "analytics_events"
TTFT_CHECK = "ck_analytics_events_time_to_first_token_valid"
TTFT_RULE = "time_to_first_token_ms >= 0 AND time_to_first_token_ms <= latency_ms"
ROLLUPS = ("rollup_hourly", "rollup_daily")
EMPTY_ARRAY = "{}"


def _rollup_columns() -> list[sa.Column]:
    return [
        sa.Column("streamed_calls", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ttft_sum", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ttft_min", sa.Integer(), nullable=True),
        sa.Column("ttft_max", sa.Integer(), nullable=True),
        sa.Column("ttft_hist_buckets", postgresql.ARRAY(sa.SmallInteger()), nullable=False, server_default=EMPTY_ARRAY),
        sa.Column("ttft_hist_counts", postgresql.ARRAY(sa.Integer()), nullable=False, server_default=EMPTY_ARRAY),
    ]


def upgrade() -> None:
    op.add_column(EVENTS, sa.Column("time_to_first_token_ms", sa.Integer(), nullable=True))
    op.create_check_constraint(op.f(TTFT_CHECK), EVENTS, TTFT_RULE)
    for table in ROLLUPS:
        for column in _rollup_columns():
            op.add_column(table, column)


def downgrade() -> None:
    for table in ROLLUPS:
        for column in reversed(_rollup_columns()):
            op.drop_column(table, column.name)
    op.drop_constraint(op.f(TTFT_CHECK), EVENTS, type_="check")
    op.drop_column(EVENTS, "time_to_first_token_ms")
