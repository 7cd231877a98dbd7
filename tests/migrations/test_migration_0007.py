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

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from storage.rollups import run_until_idle
from tests.rollup_checks import assert_rollups_match_raw

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"
MONTHS = 3  # 2001-01 .. 2001-03
ROWS_PER_MONTH = 100
TENANT = "mig7"
OLD_ROLLUPS_TENANT = "mig7-old"  # rollup rows whose raw events retention already dropped
HOUR = datetime(2000, 6, 1, 10, tzinfo=UTC)
DAY = datetime(2000, 6, 1, tzinfo=UTC)
OLD_FIGURES = "calls, errors, input_tokens, output_tokens, tokens_used, latency_sum, latency_min, latency_max"


@pytest.fixture
def scratch_url() -> Iterator[str]:
    base = make_url(os.environ["DATABASE_URL"])
    name = f"{base.database}_m0007"
    admin = create_engine(os.environ["ANALYTICS_ADMIN_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def alembic(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = url
    return config


def fill_0006(engine: Engine) -> None:
    """Events (one pending batch) and rollup rows, as a 0006 database has them."""
    with engine.begin() as conn:
        for month in range(1, MONTHS + 1):
            conn.execute(
                text(
                    f"CREATE TABLE analytics_events_2001_{month:02d} PARTITION OF analytics_events"
                    f" FOR VALUES FROM ('2001-{month:02d}-01') TO ('2001-{month + 1:02d}-01')"
                )
            )
        batch = conn.execute(
            text(
                "INSERT INTO rollup_pending_batches (min_ts, max_ts)"
                " VALUES ('2001-01-01', '2001-04-01') RETURNING batch_id"
            )
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id, model,"
                " input_tokens, output_tokens, tokens_used, latency_ms, status, error_type, batch_id)"
                " SELECT gen_random_uuid(), timestamptz '2001-01-01' + (s * interval '1 month') + (r * interval '7 min'),"
                "  :tenant, 'feature-' || (r % 3), 'u' || (r % 5), CASE WHEN r % 4 = 0 THEN NULL ELSE 'm' || (r % 2) END,"
                "  r * 1000, r, r * 1001 + 1, r * 10, CASE WHEN r % 6 = 0 THEN 'error' ELSE 'success' END, NULL, :batch"
                " FROM generate_series(0, :months - 1) s, generate_series(1, :rows) r"
            ),
            {"tenant": TENANT, "batch": batch, "months": MONTHS, "rows": ROWS_PER_MONTH},
        )
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


def rows_of(engine: Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query), params)]


def key_columns(engine: Engine, table: str) -> list[str]:
    return [
        row[0]
        for row in rows_of(
            engine,
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


def test_upgrade_keeps_events_and_rollup_figures_and_downgrade_merges_the_finer_rows(scratch_url: str) -> None:
    config = alembic(scratch_url)
    command.upgrade(config, "0006")
    engine = create_engine(scratch_url)
    try:
        fill_0006(engine)
        events_before = rows_of(engine, EVENTS)
        rollups_before = {
            t: rows_of(engine, f"{OLD_ROLLUPS} FROM {t} ORDER BY 4") for t in ("rollup_hourly", "rollup_daily")
        }
        users_before = rows_of(engine, f"{OLD_USERS} ORDER BY user_id")

        command.upgrade(config, "0007")

        assert rows_of(engine, EVENTS) == events_before and len(events_before) == MONTHS * ROWS_PER_MONTH
        buckets = rows_of(
            engine,
            "SELECT DISTINCT cache_read_tokens, cache_write_tokens, reasoning_tokens, provider FROM analytics_events",
        )
        assert buckets == [(0, 0, 0, None)]
        for table, before in rollups_before.items():
            assert rows_of(engine, f"{OLD_ROLLUPS} FROM {table} ORDER BY 4") == before
            extra = "SELECT DISTINCT provider, input_band, cache_read_tokens, cache_write_tokens, reasoning_tokens"
            assert rows_of(engine, f"{extra} FROM {table}") == [("", 0, 0, 0, 0)]
            assert key_columns(engine, table) == [
                "tenant_id", "bucket", "feature_name", "model", "provider", "input_band",
            ]  # fmt: skip
        assert rows_of(engine, f"{OLD_USERS} ORDER BY user_id") == users_before
        assert rows_of(
            engine,
            "SELECT DISTINCT model, provider, input_band, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, reasoning_tokens FROM rollup_daily_users",
        ) == [("", "", 0, 0, 0, 0, 0, 0)]
        assert key_columns(engine, "rollup_daily_users") == [
            "tenant_id", "day", "feature_name", "user_id", "model", "provider", "input_band",
        ]  # fmt: skip

        # Every partition enforces the new check (it was added on the partitioned parent).
        for rule in ("cache_read_tokens = input_tokens + 1", "reasoning_tokens = output_tokens + 1"):
            with pytest.raises(IntegrityError, match="counts_valid"), engine.begin() as conn:
                conn.execute(text(f"UPDATE analytics_events_2001_02 SET {rule}"))

        # The pending batch rolls up with the new code, as equal to the raw events as ever.
        command.upgrade(config, "head")
        with engine.begin() as conn:
            for table in ("rollup_hourly", "rollup_daily", "rollup_daily_users"):
                conn.execute(text(f"DELETE FROM {table} WHERE tenant_id = :t"), {"t": OLD_ROLLUPS_TENANT})
        # New events with buckets, providers and bands in the old rows' cells.
        with engine.begin() as conn:
            batch = conn.execute(
                text(
                    "INSERT INTO rollup_pending_batches (min_ts, max_ts)"
                    " VALUES ('2001-01-01', '2001-02-01') RETURNING batch_id"
                )
            ).scalar_one()
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
        assert rows_of(engine, "SELECT count(DISTINCT (provider, input_band)) FROM rollup_hourly")[0][0] > 2
        merged = {
            table: rows_of(
                engine,
                f"SELECT tenant_id, bucket, feature_name, model, sum(calls), sum(errors), sum(input_tokens),"
                f" sum(output_tokens), sum(tokens_used), sum(latency_sum), min(latency_min), max(latency_max)"
                f" FROM {table} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            )
            for table in ("rollup_hourly", "rollup_daily")
        }
        users = rows_of(
            engine,
            "SELECT tenant_id, day, feature_name, user_id, sum(calls), sum(errors), sum(tokens_used)"
            " FROM rollup_daily_users GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )

        command.downgrade(config, "0006")

        for table, expected in merged.items():
            assert rows_of(engine, f"SELECT tenant_id, bucket, feature_name, model, {OLD_FIGURES} FROM {table}"
                                   " ORDER BY 1, 2, 3, 4") == expected  # fmt: skip
            histograms_agree = (
                "SELECT bool_and(h.calls = (SELECT sum(c) FROM unnest(h.latency_hist_counts) c)"
                " AND h.latency_hist_buckets = (SELECT array_agg(b ORDER BY b) FROM unnest(h.latency_hist_buckets) b))"
            )
            assert rows_of(engine, f"{histograms_agree} FROM {table} h") == [(True,)]
        assert rows_of(engine, f"{OLD_USERS} ORDER BY 1, 2, 3, 4") == users
    finally:
        engine.dispose()
