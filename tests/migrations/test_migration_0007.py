"""Migration 0007 on a database that already holds events and rollups.

A scratch database of its own is brought to 0006 and filled with plain SQL as
the 0006 schema had it: events in several monthly partitions (their batch
still pending), and rollup rows of a tenant whose raw events are gone. After
the upgrade the events read back with no cache or reasoning tokens and no
provider, the old rollup rows keep every figure (provider '', band 0), the
partitions enforce the new check, and the pending batch rolls up into rollups
equal to the raw events. Downgrading sums rows that differ only in provider or
band back into one row per old key.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from devtools.scratch_db import ScratchDatabase, add_pending_events, open_pending_batch
from storage.rollups import run_until_idle
from tests.rollup_checks import assert_rollups_match_raw

MONTHS = 3  # 2001-01 .. 2001-03
ROWS_PER_MONTH = 100
TENANT = "mig7"
OLD_ROLLUPS_TENANT = "mig7-old"  # rollup rows whose raw events retention already dropped
HOUR = datetime(2000, 6, 1, 10, tzinfo=UTC)
DAY = datetime(2000, 6, 1, tzinfo=UTC)
OLD_FIGURES = "calls, errors, input_tokens, output_tokens, tokens_used, latency_sum, latency_min, latency_max"

# The events of a 0006 database: its columns, and their values for row r of a month.
EVENT_COLUMNS = (
    "tenant_id, feature_name, user_id, model, input_tokens, output_tokens, tokens_used, latency_ms, status, error_type"
)
EVENT_VALUES = (
    ":tenant, 'feature-' || (r % 3), 'u' || (r % 5), CASE WHEN r % 4 = 0 THEN NULL ELSE 'm' || (r % 2) END,"
    " r * 1000, r, r * 1001 + 1, r * 10, CASE WHEN r % 6 = 0 THEN 'error' ELSE 'success' END, NULL"
)


def fill_0006(engine: Engine) -> None:
    """Events (one pending batch) and rollup rows, as a 0006 database has them."""
    with engine.begin() as conn:
        add_pending_events(conn, MONTHS, ROWS_PER_MONTH, EVENT_COLUMNS, EVENT_VALUES, tenant=TENANT)
        for table in ("rollup_hourly", "rollup_daily"):
            conn.execute(
                text(
                    f"INSERT INTO {table} (tenant_id, bucket, feature_name, model, {OLD_FIGURES},"
                    " latency_hist_buckets, latency_hist_counts)"
                    " VALUES (:t, :b, 'f', '', 3, 1, 300, 30, 333, 90, 10, 50, '{1,5}', '{2,1}'),"
                    "        (:t, :b, 'f', 'm1', 2, 0, 200, 20, 220, 40, 20, 20, '{3}', '{2}')"
                ),
                {"t": OLD_ROLLUPS_TENANT, "b": HOUR if table == "rollup_hourly" else DAY},
            )
        conn.execute(
            text(
                "INSERT INTO rollup_daily_users (tenant_id, day, feature_name, user_id, calls, errors, tokens_used)"
                " VALUES (:t, :d, 'f', 'u1', 4, 1, 400), (:t, :d, 'f', 'u2', 1, 0, 153)"
            ),
            {"t": OLD_ROLLUPS_TENANT, "d": DAY},
        )


def key_columns(scratch: ScratchDatabase, table: str) -> list[str]:
    return [
        row[0]
        for row in scratch.rows(
            "SELECT a.attname FROM pg_constraint k, unnest(k.conkey) WITH ORDINALITY u(n, o)"
            " JOIN pg_attribute a ON a.attnum = u.n WHERE k.contype = 'p' AND k.conrelid = CAST(:t AS regclass)"
            " AND a.attrelid = k.conrelid ORDER BY u.o",
            t=table,
        )
    ]


EVENTS = (
    "SELECT event_id, timestamp, model, input_tokens, output_tokens, tokens_used, latency_ms, status"
    " FROM analytics_events ORDER BY event_id"
)
OLD_ROLLUPS = f"SELECT tenant_id, bucket, feature_name, model, {OLD_FIGURES}, latency_hist_buckets, latency_hist_counts"
OLD_USERS = "SELECT tenant_id, day, feature_name, user_id, calls, errors, tokens_used FROM rollup_daily_users"


def test_upgrade_keeps_events_and_rollup_figures_and_downgrade_merges_the_finer_rows(scratch: ScratchDatabase) -> None:
    engine = scratch.engine
    scratch.upgrade("0006")
    fill_0006(engine)
    events_before = scratch.rows(EVENTS)
    rollups_before = {t: scratch.rows(f"{OLD_ROLLUPS} FROM {t} ORDER BY 4") for t in ("rollup_hourly", "rollup_daily")}
    users_before = scratch.rows(f"{OLD_USERS} ORDER BY user_id")

    scratch.upgrade("0007")

    assert scratch.rows(EVENTS) == events_before and len(events_before) == MONTHS * ROWS_PER_MONTH
    buckets = scratch.rows(
        "SELECT DISTINCT cache_read_tokens, cache_write_tokens, reasoning_tokens, provider FROM analytics_events",
    )
    assert buckets == [(0, 0, 0, None)]
    for table, before in rollups_before.items():
        assert scratch.rows(f"{OLD_ROLLUPS} FROM {table} ORDER BY 4") == before
        extra = "SELECT DISTINCT provider, input_band, cache_read_tokens, cache_write_tokens, reasoning_tokens"
        assert scratch.rows(f"{extra} FROM {table}") == [("", 0, 0, 0, 0)]
        assert key_columns(scratch, table) == [
            "tenant_id", "bucket", "feature_name", "model", "provider", "input_band",
        ]  # fmt: skip
    assert scratch.rows(f"{OLD_USERS} ORDER BY user_id") == users_before
    assert scratch.rows(
        "SELECT DISTINCT model, provider, input_band, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, reasoning_tokens FROM rollup_daily_users",
    ) == [("", "", 0, 0, 0, 0, 0, 0)]
    assert key_columns(scratch, "rollup_daily_users") == [
        "tenant_id", "day", "feature_name", "user_id", "model", "provider", "input_band",
    ]  # fmt: skip

    # Every partition enforces the new check (it was added on the partitioned parent).
    for rule in ("cache_read_tokens = input_tokens + 1", "reasoning_tokens = output_tokens + 1"):
        with pytest.raises(IntegrityError, match="counts_valid"), engine.begin() as conn:
            conn.execute(text(f"UPDATE analytics_events_2001_02 SET {rule}"))

    # The pending batch rolls up with the new code, as equal to the raw events as ever.
    scratch.upgrade("head")
    with engine.begin() as conn:
        for table in ("rollup_hourly", "rollup_daily", "rollup_daily_users"):
            conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": OLD_ROLLUPS_TENANT})
    # New events with buckets, providers and bands in the old rows' cells.
    with engine.begin() as conn:
        batch = open_pending_batch(conn, "2001-01-01", "2001-02-01")
        conn.execute(
            text(
                "INSERT INTO analytics_events SELECT gen_random_uuid(), timestamp, tenant_id, feature_name,"
                " user_id, model, input_tokens + 40000, output_tokens, tokens_used + 40000, latency_ms + 1,"
                " status, error_type, :batch, 100, 10, least(output_tokens, 2), 'openai'"
                " FROM analytics_events WHERE timestamp < '2001-02-01'"
            ),
            {"batch": batch},
        )
    assert run_until_idle(engine).batches == 2
    with engine.connect() as conn:
        assert_rollups_match_raw(conn)
    assert scratch.rows("SELECT count(DISTINCT (provider, input_band)) FROM rollup_hourly")[0][0] > 2
    merged = {
        table: scratch.rows(
            f"SELECT tenant_id, bucket, feature_name, model, sum(calls), sum(errors), sum(input_tokens),"
            f" sum(output_tokens), sum(tokens_used), sum(latency_sum), min(latency_min), max(latency_max)"
            f" FROM {table} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )
        for table in ("rollup_hourly", "rollup_daily")
    }
    users = scratch.rows(
        "SELECT tenant_id, day, feature_name, user_id, sum(calls), sum(errors), sum(tokens_used)"
        " FROM rollup_daily_users GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )

    scratch.downgrade("0006")

    for table, expected in merged.items():
        assert scratch.rows(f"SELECT tenant_id, bucket, feature_name, model, {OLD_FIGURES} FROM {table}"
                               " ORDER BY 1, 2, 3, 4") == expected  # fmt: skip
        histograms_agree = (
            "SELECT bool_and(h.calls = (SELECT sum(c) FROM unnest(h.latency_hist_counts) c)"
            " AND h.latency_hist_buckets = (SELECT array_agg(b ORDER BY b) FROM unnest(h.latency_hist_buckets) b))"
        )
        assert scratch.rows(f"{histograms_agree} FROM {table} h") == [(True,)]
    assert scratch.rows(f"{OLD_USERS} ORDER BY 1, 2, 3, 4") == users
