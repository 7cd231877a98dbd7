"""Tenant-scoped idempotency key and per-tenant name catalog.

The events' primary key becomes (event_id, tenant_id, timestamp) (see
models.event for the order), and ``tenant_names`` is created and filled from
the stored events (storage.tenant_names).

Built for a table with many partitions and rows, in three steps:

1. ``tenant_names`` is created and back-filled (one read of the events; no
   lock beyond ACCESS SHARE) and committed.
2. Each partition gets the new key as a unique index built
   ``CONCURRENTLY``, one partition at a time, each in its own transaction:
   ingest and reads go on. An index left invalid by an interrupted run is
   dropped and built again, so the step can simply be run again.
3. One short transaction, under the partition-creation lock (no month is
   attached meanwhile): the old primary key is dropped, each partition's new
   index becomes its primary key (``USING INDEX``: no rebuild), and the
   parent's new primary key adopts them. A partition created between steps 2
   and 3 (empty or nearly) gets its index built here. This step takes ACCESS
   EXCLUSIVE on the table for milliseconds; ingest waits, nothing is lost. It
   holds a few locks per partition: 2,000 partitions upgraded in 6 s with
   PostgreSQL's default ``max_locks_per_transaction`` (64); with many more,
   raise it for the migration.

The new key is looser than the old one, so no existing row can violate it.
The downgrade restores (event_id, timestamp) and fails with a unique violation
once two tenants share an event id and timestamp (which the new key allows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "analytics_events"
PK_NAME = "pk_analytics_events"
NEW_KEY = ("event_id", "tenant_id", "timestamp")
OLD_KEY = ("event_id", "timestamp")
NEW_INDEX_SUFFIX = "_tenant_key"
PARTITION_LOCK_KEY = 0x5041_5254  # storage.partitions.PARTITION_LOCK_KEY, frozen here
CATALOG = "tenant_names"


def _partitions(conn: sa.Connection) -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = to_regclass(:parent) ORDER BY c.relname"
            ),
            {"parent": TABLE},
        ).scalars()
    )


def _index_state(conn: sa.Connection, name: str) -> bool | None:
    """True if index ``name`` exists and is valid, False if invalid, None if missing."""
    return conn.execute(
        sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"), {"name": name}
    ).scalar()


def _columns(key: tuple[str, ...], quote) -> str:
    return ", ".join(quote(column) for column in key)


def _create_catalog(conn: sa.Connection) -> None:
    if sa.inspect(conn).has_table(CATALOG):
        return  # created by an interrupted run; the back-fill below is idempotent
    op.create_table(
        CATALOG,
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('feature', 'model')", name=op.f("ck_tenant_names_kind_known")),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "name", name=op.f("pk_tenant_names")),
    )


def _backfill_catalog(conn: sa.Connection) -> None:
    """Every name the stored events use is known: the caps apply to new names only."""
    conn.execute(
        sa.text(
            f"INSERT INTO {CATALOG} (tenant_id, kind, name)"
            f" SELECT DISTINCT tenant_id, 'feature', feature_name FROM {TABLE}"
            f" UNION SELECT DISTINCT tenant_id, 'model', model FROM {TABLE} WHERE model IS NOT NULL"
            " ON CONFLICT DO NOTHING"
        )
    )


def _build_index(conn: sa.Connection, partition: str, *, concurrently: bool) -> str:
    quote = conn.dialect.identifier_preparer.quote
    index = partition + NEW_INDEX_SUFFIX
    state = _index_state(conn, index)
    if state is False:  # left invalid by an interrupted concurrent build
        conn.execute(sa.text(f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}{quote(index)}"))
    if state is not True:
        # Names come from the catalog and constants, never from input.
        conn.execute(
            sa.text(
                f"CREATE UNIQUE INDEX {'CONCURRENTLY ' if concurrently else ''}{quote(index)}"
                f" ON {quote(partition)} ({_columns(NEW_KEY, quote)})"
            )
        )
    return index


def upgrade() -> None:
    conn = op.get_bind()
    quote = conn.dialect.identifier_preparer.quote
    _create_catalog(conn)
    _backfill_catalog(conn)

    # 2. Each partition's new key, built beside the old one while ingest goes on.
    with op.get_context().autocommit_block():
        for partition in _partitions(conn):
            _build_index(conn, partition, concurrently=True)

    # 3. The swap, in the migration's transaction.
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY})
    conn.execute(sa.text(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE"))
    partitions = _partitions(conn)
    indexes = {partition: _build_index(conn, partition, concurrently=False) for partition in partitions}
    conn.execute(sa.text(f"ALTER TABLE {TABLE} DROP CONSTRAINT {PK_NAME}"))
    for partition, index in indexes.items():
        conn.execute(
            sa.text(
                f"ALTER TABLE {quote(partition)} ADD CONSTRAINT {quote(partition + '_pkey')}"
                f" PRIMARY KEY USING INDEX {quote(index)}"
            )
        )
    # Adopts the partitions' primary keys (same columns) instead of building new ones.
    conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {PK_NAME} PRIMARY KEY ({_columns(NEW_KEY, quote)})"))


def downgrade() -> None:
    conn = op.get_bind()
    quote = conn.dialect.identifier_preparer.quote
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY})
    conn.execute(sa.text(f"ALTER TABLE {TABLE} DROP CONSTRAINT {PK_NAME}"))
    conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {PK_NAME} PRIMARY KEY ({_columns(OLD_KEY, quote)})"))
    op.drop_table(CATALOG)
