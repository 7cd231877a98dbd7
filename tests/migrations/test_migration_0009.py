"""Migration 0009 on a database that already holds events and rollups.

A scratch database of its own is brought to 0008 and filled with plain SQL as
the 0008 schema had it: events in several monthly partitions (their batch
still pending), and rollup rows of a tenant whose raw events are gone. After
the upgrade the events read back unchanged and did not stream (NULL), the old
rollup rows keep every figure and read as cells without streamed calls, the
partitions enforce the new check, and streamed events added to the old rows'
cells roll up onto them. Downgrading drops the columns and the check again.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from devtools.scratch_db import ScratchDatabase, add_pending_events, open_pending_batch
from storage.histogram import LatencyHistogram
from storage.rollups import run_until_idle
from tests.rollup_checks import assert_rollups_match_raw

MONTHS = 3  # 2001-01 .. 2001-03
ROWS_PER_MONTH = 50
TENANT = "mig9"
OLD_ROLLUPS_TENANT = "mig9-old"  # rollup rows whose raw events retention already dropped
HOUR = datetime(2000, 6, 1, 10, tzinfo=UTC)
DAY = datetime(2000, 6, 1, tzinfo=UTC)
ROLLUPS = ("rollup_hourly", "rollup_daily")
FIGURES = (
    "tenant_id, bucket, feature_name, model, provider, input_band, calls, errors, input_tokens, output_tokens,"
    " tokens_used, cache_read_tokens, cache_write_tokens, reasoning_tokens, latency_sum, latency_min, latency_max,"
    " latency_hist_buckets, latency_hist_counts"
)
TTFT_FIGURES = "streamed_calls, ttft_sum, ttft_min, ttft_max, ttft_hist_buckets, ttft_hist_counts"
EVENTS = "SELECT * FROM analytics_events ORDER BY event_id"
TTFT_COLUMNS = (
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_name IN"
    " ('analytics_events', 'rollup_hourly', 'rollup_daily')"
    " AND (column_name LIKE 'ttft%' OR column_name IN ('streamed_calls', 'time_to_first_token_ms'))"
)

# The events of a 0008 database: its columns, and their values for row r of a month.
EVENT_COLUMNS = (
    "tenant_id, feature_name, user_id, model, input_tokens, output_tokens, tokens_used, latency_ms, status,"
    " error_type, cache_read_tokens, cache_write_tokens, reasoning_tokens, provider"
)
EVENT_VALUES = (
    ":tenant, 'feature-' || (r % 3), 'u' || (r % 5), 'm' || (r % 2), r * 10, r, r * 11, r * 10,"
    " CASE WHEN r % 6 = 0 THEN 'error' ELSE 'success' END, NULL, r, 0, 0, 'openai'"
)


def fill_0008(engine: Engine) -> None:
    """Events (one pending batch) and rollup rows, as a 0008 database has them."""
    with engine.begin() as conn:
        add_pending_events(conn, MONTHS, ROWS_PER_MONTH, EVENT_COLUMNS, EVENT_VALUES, tenant=TENANT)
        for table in ROLLUPS:
            conn.execute(
                text(
                    f"INSERT INTO {table} ({FIGURES}) VALUES"
                    " (:t, :b, 'f', 'm1', 'openai', 0, 3, 1, 300, 30, 330, 0, 0, 0, 90, 10, 50, '{1,5}', '{2,1}')"
                ),
                {"t": OLD_ROLLUPS_TENANT, "b": HOUR if table == "rollup_hourly" else DAY},
            )


def test_upgrade_keeps_events_and_rollups_and_streamed_calls_roll_up_onto_old_rows(scratch: ScratchDatabase) -> None:
    engine = scratch.engine
    scratch.upgrade("0008")
    fill_0008(engine)
    events_before = scratch.rows(EVENTS)
    rollups_before = {t: scratch.rows(f"SELECT {FIGURES} FROM {t}") for t in ROLLUPS}

    scratch.upgrade("0009")

    assert [row[:-1] for row in scratch.rows(EVENTS)] == events_before
    assert len(events_before) == MONTHS * ROWS_PER_MONTH
    assert scratch.rows("SELECT DISTINCT time_to_first_token_ms FROM analytics_events") == [(None,)]
    for table, before in rollups_before.items():
        assert scratch.rows(f"SELECT {FIGURES} FROM {table}") == before
        assert scratch.rows(f"SELECT {TTFT_FIGURES} FROM {table}") == [(0, 0, None, None, [], [])]

    # Every partition enforces the new check (it was added on the partitioned parent); NULL passes.
    for value in ("latency_ms + 1", "-1"):
        with pytest.raises(IntegrityError, match="time_to_first_token_valid"), engine.begin() as conn:
            conn.execute(text(f"UPDATE analytics_events_2001_02 SET time_to_first_token_ms = {value}"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE analytics_events_2001_02 SET time_to_first_token_ms = latency_ms / 4"))

    # The pending batch rolls up with the new code, equal to the raw events.
    assert run_until_idle(engine).batches == 1
    with engine.begin() as conn:  # set aside while the rollups are compared with the raw events
        for table in ROLLUPS:
            conn.execute(text(f"CREATE TABLE kept_{table} AS SELECT * FROM {table} WHERE tenant_id = :t"),
                         {"t": OLD_ROLLUPS_TENANT})  # fmt: skip
        for table in (*ROLLUPS, "rollup_daily_users"):
            conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": OLD_ROLLUPS_TENANT})
    with engine.connect() as conn:
        assert_rollups_match_raw(conn)
    assert scratch.rows("SELECT sum(streamed_calls) FROM rollup_daily") == [(ROWS_PER_MONTH,)]

    # Streamed calls in an old row's cell (its raw events gone): added to it, its histogram started.
    with engine.begin() as conn:
        for table in ROLLUPS:
            conn.execute(text(f"INSERT INTO {table} SELECT * FROM kept_{table}"))
        conn.execute(text("CREATE TABLE analytics_events_2000_06 PARTITION OF analytics_events"
                          " FOR VALUES FROM ('2000-06-01') TO ('2000-07-01')"))  # fmt: skip
        batch = open_pending_batch(conn, HOUR, HOUR)
        conn.execute(
            text(
                "INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id, model,"
                " input_tokens, output_tokens, tokens_used, latency_ms, status, batch_id, provider,"
                " time_to_first_token_ms)"
                " SELECT gen_random_uuid(), :h, :t, 'f', 'u1', 'm1', 1, 1, 2, 100, 'success', :batch, 'openai', v"
                " FROM unnest(ARRAY[30, 30, 70]) v"
            ),
            {"h": HOUR, "t": OLD_ROLLUPS_TENANT, "batch": batch},
        )
    run_until_idle(engine)
    for table in ROLLUPS:
        [(calls, latency_sum, streamed, ttft_sum, ttft_min, ttft_max, buckets, counts)] = scratch.rows(
            f"SELECT calls, latency_sum, {TTFT_FIGURES} FROM {table} WHERE tenant_id = :t",
            t=OLD_ROLLUPS_TENANT,
        )
        assert (calls, latency_sum, streamed, ttft_sum, ttft_min, ttft_max) == (6, 390, 3, 130, 30, 70)
        assert LatencyHistogram.of(buckets, counts) == LatencyHistogram.from_latencies([30, 30, 70])

    scratch.downgrade("0008")
    assert scratch.rows(TTFT_COLUMNS) == []
    assert scratch.rows("SELECT count(*) FROM analytics_events")[0][0] == len(events_before) + 3
    scratch.upgrade("head")
    assert len(scratch.rows(TTFT_COLUMNS)) == 13
