"""Shared pieces of the rollup tests: making and storing events, and the oracle.

The oracle computes every rollup figure straight from ``analytics_events``
(SQL aggregates, ``percentile_disc``, and the latency and time-to-first-token
histograms built in Python from the raw values), independently of
storage.rollups; the input
band is computed from INPUT_BANDS as data (the greatest boundary below the
input), not with schema.bands' CASE expression that the rollups use.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from config import get_settings
from models.rollup import ROLLUP_KEY, USER_ROLLUP_KEY
from retry_policy import Backoff, call_with_retry
from schema.bands import INPUT_BANDS
from storage.db import make_session_factory
from storage.events import Row
from storage.flush import Flush, FlushResult, commit_flush
from storage.histogram import RELATIVE_ERROR, LatencyHistogram
from storage.partitions import Month, ensure_months
from storage.sqlstate import sqlstate_in

UTC = UTC
DEADLOCK = frozenset({"40P01"})  # deadlock_detected
DEADLOCK_ATTEMPTS = 3
DEADLOCK_BACKOFF = Backoff(base_s=0.01, cap_s=0.1)
QUANTILES = (0.5, 0.95, 0.99)
# Float noise on top of the histogram's stated error (bucket edges are computed with ln).
EPSILON = 1e-9


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def event(
    timestamp: datetime,
    *,
    tenant: str = "t1",
    feature: str = "f1",
    model: str | None = "m1",
    user: str = "u1",
    latency_ms: int = 100,
    status: str = "success",
    input_tokens: int = 10,
    output_tokens: int = 5,
    extra_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    provider: str | None = None,
    time_to_first_token_ms: int | None = None,
    event_id: uuid.UUID | None = None,
) -> Row:
    """One (mapping, payload) pair as the worker's decoder yields it."""
    mapping = {
        "event_id": event_id or uuid.uuid4(),
        "timestamp": timestamp,
        "tenant_id": tenant,
        "feature_name": feature,
        "user_id": user,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens_used": input_tokens + output_tokens + extra_tokens,
        "latency_ms": latency_ms,
        "status": status,
        "error_type": "timeout" if status == "error" else None,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "provider": provider,
        "time_to_first_token_ms": time_to_first_token_ms,
    }
    return mapping, {**mapping, "event_id": str(mapping["event_id"]), "timestamp": timestamp.isoformat()}


def copy_rows(rows: list[Row]) -> list[Row]:
    """Fresh dicts, as a redelivered message would decode to."""
    return [(dict(mapping), payload) for mapping, payload in rows]


@contextmanager
def ingest_transaction(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session, session.begin():
        yield session


def ingest(engine: Engine, rows: list[Row]) -> FlushResult:
    """What the ingest task does with one decoded message (storage.flush).

    Like the task, a transaction PostgreSQL chose as a deadlock victim (two
    writers storing the same events in another order) is rolled back whole and
    run again; any other error propagates.
    """
    sessions = make_session_factory(engine)
    return call_with_retry(
        lambda: commit_flush(sessions, Flush(rows=copy_rows(rows)), get_settings()),
        attempts=DEADLOCK_ATTEMPTS, retryable=sqlstate_in(DEADLOCK), backoff=DEADLOCK_BACKOFF,
    )  # fmt: skip


def ensure_months_for(engine: Engine, start: datetime, end: datetime) -> None:
    months = []
    month = Month.of(start)
    while month.start < end:
        months.append(month)
        month = month.shift(1)
    with engine.begin() as conn:
        ensure_months(conn, months)


# --- the oracle -----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    tokens_used: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    latency_sum: int
    latency_min: int
    latency_max: int
    histogram: LatencyHistogram
    streamed_calls: int
    ttft_sum: int
    ttft_min: int | None
    ttft_max: int | None
    ttft_histogram: LatencyHistogram


# Each event's band: the greatest boundary its input exceeds, looked up in the list.
BAND = "coalesce((SELECT max(b) FROM unnest(CAST(:bands AS integer[])) AS b WHERE input_tokens > b), 0)"
EXPECTED_CELLS = f"""
SELECT tenant_id, date_trunc(:unit, timestamp, 'UTC') AS bucket, feature_name, coalesce(model, '') AS model,
       coalesce(provider, '') AS provider, {BAND} AS input_band,
       count(*), count(*) FILTER (WHERE status = 'error'), sum(input_tokens), sum(output_tokens),
       sum(tokens_used), sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
       sum(latency_ms), min(latency_ms), max(latency_ms), array_agg(latency_ms),
       count(time_to_first_token_ms), coalesce(sum(time_to_first_token_ms), 0), min(time_to_first_token_ms),
       max(time_to_first_token_ms),
       coalesce(array_agg(time_to_first_token_ms) FILTER (WHERE time_to_first_token_ms IS NOT NULL), '{{}}')
FROM analytics_events GROUP BY 1, 2, 3, 4, 5, 6
"""
STORED_CELLS = """
SELECT tenant_id, bucket, feature_name, model, provider, input_band, calls, errors, input_tokens, output_tokens,
       tokens_used, cache_read_tokens, cache_write_tokens, reasoning_tokens,
       latency_sum, latency_min, latency_max, latency_hist_buckets, latency_hist_counts,
       streamed_calls, ttft_sum, ttft_min, ttft_max, ttft_hist_buckets, ttft_hist_counts
FROM {table}
"""
USER_SUMS = (
    "calls, errors, tokens_used, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens"
)
EXPECTED_USERS = f"""
SELECT tenant_id, date_trunc('day', timestamp, 'UTC'), feature_name, user_id, coalesce(model, ''),
       coalesce(provider, ''), {BAND},
       count(*), count(*) FILTER (WHERE status = 'error'), sum(tokens_used), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens)
FROM analytics_events GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
STORED_USERS = f"SELECT {', '.join(USER_ROLLUP_KEY)}, {USER_SUMS} FROM rollup_daily_users"
USER_KEY_WIDTH = len(USER_ROLLUP_KEY)
EXPECTED_PERCENTILES = f"""
SELECT tenant_id, date_trunc(:unit, timestamp, 'UTC'), feature_name, coalesce(model, ''), coalesce(provider, ''),
       {BAND}, percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY latency_ms),
       percentile_disc(CAST(:quantiles AS float8[])) WITHIN GROUP (ORDER BY time_to_first_token_ms)
FROM analytics_events GROUP BY 1, 2, 3, 4, 5, 6
"""

Key = tuple[str, datetime, str, str, str, int]
BANDS = {"bands": list(INPUT_BANDS)}


KEY_WIDTH = 6  # the key columns that start the rows of EXPECTED_CELLS and STORED_CELLS
SUMS_END = KEY_WIDTH + 11  # then calls .. latency_max, the figures both queries give as they are


def _cell(
    row: Sequence[Any], histogram: LatencyHistogram, ttft: Sequence[Any], ttft_histogram: LatencyHistogram
) -> Cell:
    """A Cell of a row's figures (calls .. latency_max), its latency histogram, TTFT figures and TTFT histogram."""
    return Cell(*row[KEY_WIDTH:SUMS_END], histogram, *ttft, ttft_histogram)


def expected_cells(conn: Connection, unit: str) -> dict[Key, Cell]:
    cells: dict[Any, Cell] = {}
    for row in conn.execute(text(EXPECTED_CELLS), {"unit": unit, **BANDS}):
        # After the figures: the latencies, the four TTFT figures, the TTFTs.
        lats, ttft, ttfts = row[SUMS_END], row[SUMS_END + 1 : -1], row[-1]
        histograms = LatencyHistogram.from_latencies(lats), LatencyHistogram.from_latencies(ttfts)
        cells[tuple(row[:KEY_WIDTH])] = _cell(row, histograms[0], ttft, histograms[1])
    return cells


def stored_cells(conn: Connection, table: str) -> dict[Key, Cell]:
    cells: dict[Any, Cell] = {}
    for row in conn.execute(text(STORED_CELLS.format(table=table))):
        # After the figures: the latency histogram's buckets and counts, the four TTFT figures, its buckets and counts.
        buckets, counts, ttft = row[SUMS_END], row[SUMS_END + 1], row[SUMS_END + 2 : -2]
        histograms = LatencyHistogram.of(buckets, counts), LatencyHistogram.of(row[-2], row[-1])
        cells[tuple(row[:KEY_WIDTH])] = _cell(row, histograms[0], ttft, histograms[1])
    return cells


def within_error(estimate: float | None, exact: float) -> bool:
    return estimate is not None and abs(estimate - exact) <= (RELATIVE_ERROR + EPSILON) * exact


def assert_rollups_match_raw(conn: Connection) -> None:
    """Every figure of every hourly, daily and per-user row equals the raw events' figure."""
    for table, unit in (("rollup_hourly", "hour"), ("rollup_daily", "day")):
        expected, stored = expected_cells(conn, unit), stored_cells(conn, table)
        assert stored.keys() == expected.keys(), f"{table}: keys differ"
        for key, cell in expected.items():
            assert stored[key] == cell, f"{table} {key}: {stored[key]} != {cell}"
        percentiles = conn.execute(text(EXPECTED_PERCENTILES), {"unit": unit, "quantiles": list(QUANTILES), **BANDS})
        for *key, exact, exact_ttft in percentiles:
            cell = stored[tuple(key)]  # type: ignore[index]
            for q, value in zip(QUANTILES, exact, strict=False):
                estimate = cell.histogram.quantile(q, cell.latency_min, cell.latency_max)
                assert within_error(estimate, value), f"{table} {key} p{q}: {estimate} vs {value}"
            # percentile_disc skips NULLs: over the streamed calls, NULL when there are none.
            if exact_ttft is None:
                assert cell.streamed_calls == 0 and cell.ttft_histogram.quantile(0.5) is None, f"{table} {key} TTFT"
                continue
            for q, value in zip(QUANTILES, exact_ttft, strict=True):
                estimate = cell.ttft_histogram.quantile(q, cell.ttft_min, cell.ttft_max)
                assert within_error(estimate, value), f"{table} {key} TTFT p{q}: {estimate} vs {value}"
    width = USER_KEY_WIDTH
    expected_users = {tuple(row[:width]): tuple(row[width:]) for row in conn.execute(text(EXPECTED_USERS), BANDS)}
    stored_users = {tuple(row[:width]): tuple(row[width:]) for row in conn.execute(text(STORED_USERS))}
    assert stored_users == expected_users


def pending_batches(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM rollup_pending_batches")).scalar_one())


def rollup_rows(conn: Connection) -> int:
    return int(
        conn.execute(
            text(
                "SELECT (SELECT count(*) FROM rollup_hourly) + (SELECT count(*) FROM rollup_daily)"
                " + (SELECT count(*) FROM rollup_daily_users)"
            )
        ).scalar_one()
    )


def dump_rollups(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup row, in key order, for comparing two states."""
    keys = {"rollup_hourly": ROLLUP_KEY, "rollup_daily": ROLLUP_KEY, "rollup_daily_users": USER_ROLLUP_KEY}
    return {
        table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY {', '.join(key)}"))]
        for table, key in keys.items()
    }


def recent_hour(hours_ago: int = 0, minute: int = 0) -> datetime:
    return hour_floor(datetime.now(UTC)) - timedelta(hours=hours_ago) + timedelta(minutes=minute)
