"""Drop the SQL function ``rollup_latency_bucket`` (migration 0002): nothing calls it any more.

The rollups and the query layer embed the latency-bucket formula as an
expression rendered by storage.histogram (``bucket_sql``), the one source of
its constants; a STRICT SQL function whose body is a CASE is never inlined,
so calling it cost a function call per event. The function only kept a second
copy of the formula alive. The expression divides by the same double as the
function did (tests check it), so the rollups stored before stay valid.

The downgrade recreates the function exactly as 0002 wrote it (taken from
0002's module, not copied here).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FUNCTION_SIGNATURE = "rollup_latency_bucket(integer)"
CREATED_BY = "0002"


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {FUNCTION_SIGNATURE}")


def downgrade() -> None:
    op.execute(context.script.get_revision(CREATED_BY).module.LATENCY_BUCKET_FUNCTION)
