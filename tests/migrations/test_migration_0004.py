"""Migration 0004 on a database that already holds events in many partitions.

A scratch database of its own is brought to 0003, filled (partitions and rows
made with plain SQL, as the 0003 schema had them), and upgraded to 0004: the
primary key becomes (event_id, tenant_id, timestamp) on the table and every
partition, no row is lost, the name catalog is back-filled, and then the same
event id and timestamp can be stored for two tenants. Downgrade and upgrade
again work too.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from devtools.scratch_db import ScratchDatabase, add_month_partitions

PARTITIONS = 60  # months 2001-01 .. 2005-12
ROWS_PER_PARTITION = 200
TENANTS = ("mig-a", "mig-b", "mig-c")
NEW_KEY = ["event_id", "tenant_id", "timestamp"]
OLD_KEY = ["event_id", "timestamp"]


def fill(engine: Engine) -> int:
    """Partitions and rows as a 0003 database has them; returns the number of rows."""
    with engine.begin() as conn:
        add_month_partitions(conn, PARTITIONS)
        conn.execute(
            text(
                "INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id, model,"
                " input_tokens, output_tokens, tokens_used, latency_ms, status, error_type, batch_id)"
                " SELECT gen_random_uuid(), timestamptz '2001-01-01' + (s * interval '1 month') + (r * interval '1 minute'),"
                "  (ARRAY[:a, :b, :c])[1 + r % 3], 'feature-' || (r % 7), 'u', CASE WHEN r % 5 = 0 THEN NULL"
                "  ELSE 'model-' || (r % 4) END, 1, 2, 3, 4, 'success', NULL, 0"
                " FROM generate_series(0, :months - 1) s, generate_series(1, :rows) r"
            ),
            {"a": TENANTS[0], "b": TENANTS[1], "c": TENANTS[2], "months": PARTITIONS, "rows": ROWS_PER_PARTITION},
        )
    return PARTITIONS * ROWS_PER_PARTITION


def primary_keys(engine: Engine) -> dict[str, list[str]]:
    """Primary-key columns, in order, of the table and each partition."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o)"
                "  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.n ORDER BY u.o)"
                " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                " WHERE k.contype = 'p' AND c.relname LIKE 'analytics_events%'"
            )
        ).all()
    return {name: list(columns) for name, columns in rows}


def unattached_partition_keys(engine: Engine) -> int:
    """Partition primary-key indexes that are not partitions of the table's primary-key index."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid"
                " WHERE x.indisprimary AND c.relname ~ '^analytics_events_[0-9]' AND NOT EXISTS ("
                "  SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid"
                "  AND h.inhparent = 'pk_analytics_events'::regclass)"
            )
        ).scalar_one()


def insert_copy_as(engine: Engine, tenant: str) -> None:
    """One stored event again, under ``tenant``: same event_id and timestamp."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO analytics_events SELECT event_id, timestamp, :t, feature_name, user_id, model,"
                " input_tokens, output_tokens, tokens_used, latency_ms, status, error_type, batch_id"
                " FROM analytics_events WHERE tenant_id = :a ORDER BY timestamp LIMIT 1"
            ),
            {"t": tenant, "a": TENANTS[0]},
        )


def test_upgrade_of_a_filled_database_makes_the_key_tenant_scoped(scratch: ScratchDatabase) -> None:
    engine = scratch.engine
    scratch.upgrade("0003")
    rows = fill(engine)
    before = primary_keys(engine)
    assert before["analytics_events"] == OLD_KEY and len(before) == PARTITIONS + 1
    with pytest.raises(IntegrityError):  # the old key: another tenant's copy is a duplicate
        insert_copy_as(engine, "mig-other")

    scratch.upgrade("0004")

    after = primary_keys(engine)
    assert len(after) == PARTITIONS + 1 and all(columns == NEW_KEY for columns in after.values()), after
    assert unattached_partition_keys(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM analytics_events")).scalar_one() == rows
        leftovers = conn.execute(text("SELECT count(*) FROM pg_class WHERE relname LIKE '%_tenant_key'")).scalar()
        assert leftovers == 0  # every new index became its partition's primary key
        expected = set(
            conn.execute(
                text(
                    "SELECT DISTINCT tenant_id, 'feature', feature_name FROM analytics_events UNION"
                    " SELECT DISTINCT tenant_id, 'model', model FROM analytics_events WHERE model IS NOT NULL"
                )
            ).all()
        )
        catalog = set(conn.execute(text("SELECT tenant_id, kind, name FROM tenant_names")).all())
    assert catalog == expected and len(catalog) == len(TENANTS) * (7 + 4)

    insert_copy_as(engine, "mig-other")  # now a separate event
    with pytest.raises(IntegrityError):  # the same tenant's copy is still a duplicate
        insert_copy_as(engine, "mig-other")

    # Down and up again: the old key comes back once the cross-tenant copy is gone.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM analytics_events WHERE tenant_id = 'mig-other'"))
    scratch.downgrade("0003")
    assert set(map(tuple, primary_keys(engine).values())) == {tuple(OLD_KEY)}
    scratch.upgrade("0004")
    assert set(map(tuple, primary_keys(engine).values())) == {tuple(NEW_KEY)}
