"""Dashboard queries served from the rollups, with the not-yet-rolled-up tail added.

Every answer is the sum of three disjoint parts read in ONE snapshot
(``snapshot()``: a REPEATABLE READ, read-only transaction):

* ``rollup_daily`` for the whole UTC days inside the range (when the answer's
  resolution allows days),
* ``rollup_hourly`` for the remaining whole hours,
* the raw rows of the batches still in ``rollup_pending_batches`` (the tail),
  found through the BRIN index on ``batch_id``.

A batch is either in the rollups or pending, never both and never neither, in
any snapshot (storage.rollups), so answers are exact and as fresh as the last
commit. Ranges are whole hours, the rollups' resolution: ``start`` is floored
and ``end`` ceiled to the hour (``hour_span``); per-user figures (top users,
active users) are kept per day, so those ranges are whole UTC days
(``day_span``). Latency percentiles come from the merged histograms, within
storage.histogram.RELATIVE_ERROR of PostgreSQL's ``percentile_disc``; so do
the time-to-first-token percentiles, over the streamed calls only (those with a
time to first token; None when a group has none).

The tenant is always a bound parameter; the SQL text is fixed, only chosen
among constant fragments.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, text

from storage.histogram import LatencyHistogram, bucket_sql

Granularity = Literal["hour", "day"]
GRANULARITIES: tuple[Granularity, ...] = ("hour", "day")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEFAULT_TOP_USERS = 10


class TooManyRows(Exception):
    """A query would return more than the ``max_rows`` its caller allows (it stopped reading at one more)."""

    def __init__(self, max_rows: int) -> None:
        super().__init__(f"more than {max_rows:,} rows")
        self.max_rows = max_rows


# --- results ------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """Calls, errors, tokens and latency of one group (a feature, an hour, a day)."""

    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    tokens_used: int
    latency_avg_ms: float | None
    latency_min_ms: int | None
    latency_max_ms: int | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    # Over the streamed calls (those with a time to first token); None when there are none.
    streamed_calls: int
    ttft_avg_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True, kw_only=True)
class FeatureSummary(Figures):
    feature_name: str


@dataclass(frozen=True, kw_only=True)
class SeriesPoint(Figures):
    bucket: datetime  # start of the UTC hour or day


@dataclass(frozen=True)
class FeatureErrorRate:
    feature_name: str
    calls: int
    errors: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class UserUsage:
    user_id: str
    calls: int
    errors: int
    tokens_used: int


@dataclass(frozen=True)
class ActiveUsers:
    day: datetime
    feature_name: str
    users: int


# --- ranges -------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("query bounds must be timezone-aware")
    return moment.astimezone(UTC)


def floor_to(moment: datetime, unit: timedelta) -> datetime:
    moment = _utc(moment)
    if unit == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil_to(moment: datetime, unit: timedelta) -> datetime:
    floored = floor_to(moment, unit)
    return floored if floored == _utc(moment) else floored + unit


def hour_span(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole-hour range a query over [start, end) answers for."""
    return floor_to(start, HOUR), ceil_to(end, HOUR)


def day_span(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole-day range a per-user query over [start, end) answers for."""
    return floor_to(start, DAY), ceil_to(end, DAY)


def bucket_count(start: datetime, end: datetime, granularity: Granularity) -> int:
    """How many points a full ``time_series`` over [start, end) can have: hours, or UTC days those hours touch."""
    h0, h1 = hour_span(start, end)
    if granularity == "day":
        d0, d1 = day_span(h0, h1)
        return (d1 - d0) // DAY
    return (h1 - h0) // HOUR


def day_count(start: datetime, end: datetime) -> int:
    """How many UTC days a per-user query over [start, end) answers for."""
    d0, d1 = day_span(start, end)
    return (d1 - d0) // DAY


def capped(rows: Sequence[Any], max_rows: int | None) -> Sequence[Any]:
    """``rows`` read with ``LIMIT max_rows + 1``: refuse them if the extra row came."""
    if max_rows is not None and len(rows) > max_rows:
        raise TooManyRows(max_rows)
    return rows


def limit_for(max_rows: int | None) -> int | None:
    """The LIMIT bound for ``max_rows`` (one more, to tell "exactly" from "more"); None is no limit."""
    return None if max_rows is None else max_rows + 1


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A read-only REPEATABLE READ transaction: rollups and pending log seen at one instant."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        # These reads take milliseconds: starting parallel workers (~5 ms) or
        # JIT-compiling (~100 ms) would cost more than they could save.
        conn.execute(
            text("SET TRANSACTION READ ONLY; SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off")
        )
        yield conn


# --- sources ------------------------------------------------------------------

FIGURE_COLUMNS = (
    "calls, errors, input_tokens, output_tokens, tokens_used,"
    " latency_sum, latency_min, latency_max, latency_hist_buckets, latency_hist_counts,"
    " streamed_calls, ttft_sum, ttft_min, ttft_max, ttft_hist_buckets, ttft_hist_counts"
)
FEATURE_FILTER = "(CAST(:feature AS text) IS NULL OR feature_name = :feature)"
DAILY_PART = f"""
SELECT feature_name, bucket, {FIGURE_COLUMNS} FROM rollup_daily
WHERE tenant_id = :tenant AND bucket >= :d0 AND bucket < :d1 AND {FEATURE_FILTER}"""
HOURLY_PART = f"""
SELECT feature_name, bucket, {FIGURE_COLUMNS} FROM rollup_hourly
WHERE tenant_id = :tenant AND bucket >= :h0 AND bucket < :d0 AND {FEATURE_FILTER}
UNION ALL
SELECT feature_name, bucket, {FIGURE_COLUMNS} FROM rollup_hourly
WHERE tenant_id = :tenant AND bucket >= :d1 AND bucket < :h1 AND {FEATURE_FILTER}"""
# The rows of pending batches, shaped like rollup rows of one event each (an
# unstreamed call: no streamed call, an empty TTFT histogram).
PENDING_ROWS = (
    "e.tenant_id = :tenant AND e.timestamp >= :h0 AND e.timestamp < :h1"
    " AND e.batch_id BETWEEN :first_batch AND :last_batch AND e.batch_id + 0 = ANY(CAST(:batch_ids AS bigint[]))"
    " AND (CAST(:feature AS text) IS NULL OR e.feature_name = :feature)"
)
TAIL_PART = f"""
SELECT e.feature_name, date_trunc('hour', e.timestamp, 'UTC'),
       1, (e.status = 'error')::int, e.input_tokens, e.output_tokens, e.tokens_used,
       e.latency_ms, e.latency_ms, e.latency_ms,
       ARRAY[{bucket_sql("e.latency_ms")}], ARRAY[1],
       (e.time_to_first_token_ms IS NOT NULL)::int, coalesce(e.time_to_first_token_ms, 0),
       e.time_to_first_token_ms, e.time_to_first_token_ms,
       CASE WHEN e.time_to_first_token_ms IS NULL THEN CAST('{{}}' AS smallint[])
            ELSE ARRAY[{bucket_sql("e.time_to_first_token_ms")}] END,
       CASE WHEN e.time_to_first_token_ms IS NULL THEN CAST('{{}}' AS integer[]) ELSE ARRAY[1] END
FROM analytics_events e WHERE {PENDING_ROWS}"""

TOTALS = """
sum(calls)::bigint AS calls, sum(errors)::bigint AS errors,
sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
sum(tokens_used)::bigint AS tokens_used, sum(latency_sum)::bigint AS latency_sum,
min(latency_min) AS latency_min, max(latency_max) AS latency_max,
sum(streamed_calls)::bigint AS streamed_calls, sum(ttft_sum)::bigint AS ttft_sum,
min(ttft_min) AS ttft_min, max(ttft_max) AS ttft_max"""

# {key} is "feature_name" or a date_trunc of "bucket": constants below.
# The histograms are merged by one GROUP BY over every (key, bucket, count) of
# every cell. The two unnests sit in the select list (a ProjectSet, zipped:
# both arrays have the same length) rather than in FROM: a FROM-clause unnest
# of two arrays is a Function Scan that first copies each row's elements into
# a tuplestore, which made the merge twice as slow (30-day summary of one
# tenant, ~1,500 cells and ~90k elements: ~50 ms -> ~25 ms). The TTFT
# histograms are merged the same way, from the cells with streamed calls only
# (a key without any has no ttft_hists row: NULL arrays, an empty histogram).
FIGURES_QUERY = """
WITH cells AS MATERIALIZED ({cells}),
totals AS (SELECT {key} AS key, {totals} FROM cells GROUP BY 1),
per_bucket AS (
    SELECT key, latency_bucket, sum(n)::bigint AS n
    FROM (SELECT {key} AS key, unnest(latency_hist_buckets) AS latency_bucket,
                 unnest(latency_hist_counts) AS n
          FROM cells) AS h
    GROUP BY 1, 2),
hists AS (
    SELECT key, array_agg(latency_bucket ORDER BY latency_bucket) AS hist_buckets,
           array_agg(n ORDER BY latency_bucket) AS hist_counts
    FROM per_bucket GROUP BY key),
ttft_per_bucket AS (
    SELECT key, ttft_bucket, sum(n)::bigint AS n
    FROM (SELECT {key} AS key, unnest(ttft_hist_buckets) AS ttft_bucket, unnest(ttft_hist_counts) AS n
          FROM cells WHERE streamed_calls > 0) AS h
    GROUP BY 1, 2),
ttft_hists AS (
    SELECT key, array_agg(ttft_bucket ORDER BY ttft_bucket) AS ttft_buckets,
           array_agg(n ORDER BY ttft_bucket) AS ttft_counts
    FROM ttft_per_bucket GROUP BY key)
SELECT totals.*, hists.hist_buckets, hists.hist_counts, ttft_hists.ttft_buckets, ttft_hists.ttft_counts
FROM totals JOIN hists USING (key) LEFT JOIN ttft_hists USING (key)
ORDER BY key
LIMIT :row_limit"""
COUNTS_QUERY = """
SELECT feature_name, sum(calls)::bigint AS calls, sum(errors)::bigint AS errors
FROM ({cells}) AS cells GROUP BY feature_name ORDER BY feature_name
LIMIT :row_limit"""
# The features with the most calls, and how many features had calls at all.
TOP_FEATURES_QUERY = """
SELECT feature_name, calls, count(*) OVER () AS features
FROM (SELECT feature_name, sum(calls)::bigint AS calls FROM ({cells}) AS cells GROUP BY feature_name) AS f
ORDER BY calls DESC, feature_name LIMIT :count"""

# Per-user parts reuse the plan's :h0/:h1 as whole-day bounds.
USERS_PART = """
SELECT day, feature_name, user_id, calls, errors, tokens_used FROM rollup_daily_users
WHERE tenant_id = :tenant AND day >= :h0 AND day < :h1 AND (CAST(:feature AS text) IS NULL OR feature_name = :feature)"""
USERS_TAIL_PART = f"""
SELECT date_trunc('day', e.timestamp, 'UTC'), e.feature_name, e.user_id,
       1, (e.status = 'error')::int, e.tokens_used
FROM analytics_events e WHERE {PENDING_ROWS}"""
TOP_USERS_QUERY = """
SELECT user_id, sum(calls)::bigint AS calls, sum(errors)::bigint AS errors, sum(tokens_used)::bigint AS tokens_used
FROM ({users}) AS u GROUP BY user_id ORDER BY calls DESC, user_id LIMIT :limit"""
ACTIVE_USERS_QUERY = """
SELECT day, feature_name, count(DISTINCT user_id) AS users
FROM ({users}) AS u GROUP BY day, feature_name ORDER BY day, feature_name
LIMIT :row_limit"""

WHOLE_RANGE = "CAST('range' AS text)"  # one group key for every cell: the range's figures merged
PENDING_IN_RANGE = text(
    "SELECT batch_id FROM rollup_pending_batches WHERE max_ts >= :h0 AND min_ts < :h1 ORDER BY batch_id"
)


@dataclass(frozen=True)
class _Plan:
    """Which rollup covers which part of [h0, h1), and the pending batches to add."""

    params: dict[str, Any]
    parts: tuple[str, ...]

    @classmethod
    def make(
        cls,
        conn: Connection,
        tenant: str,
        h0: datetime,
        h1: datetime,
        *,
        days: bool,
        feature: str | None,
        base: tuple[str, ...] | None = None,
        tail: str = TAIL_PART,
    ) -> _Plan:
        d0, d1 = ceil_to(h0, DAY), floor_to(h1, DAY)
        if not days or d0 >= d1:
            d0 = d1 = h1  # no daily part: the first hourly part covers everything
        batch_ids = list(conn.execute(PENDING_IN_RANGE, {"h0": h0, "h1": h1}).scalars())
        params: dict[str, Any] = {
            "tenant": tenant,
            "feature": feature,
            "h0": h0,
            "h1": h1,
            "d0": d0,
            "d1": d1,
            "batch_ids": batch_ids,
            "first_batch": batch_ids[0] if batch_ids else 0,
            "last_batch": batch_ids[-1] if batch_ids else 0,
        }
        parts = base if base is not None else ((DAILY_PART, HOURLY_PART) if d0 < d1 else (HOURLY_PART,))
        if batch_ids:
            parts = (*parts, tail)
        return cls(params, parts)

    @property
    def union(self) -> str:
        return "\nUNION ALL\n".join(self.parts)


def _figures(row: Any) -> dict[str, Any]:
    hist = LatencyHistogram.of(row.hist_buckets, row.hist_counts)
    ttft = LatencyHistogram.of(row.ttft_buckets, row.ttft_counts)
    return {
        "calls": row.calls,
        "errors": row.errors,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "tokens_used": row.tokens_used,
        "latency_avg_ms": row.latency_sum / row.calls if row.calls else None,
        "latency_min_ms": row.latency_min,
        "latency_max_ms": row.latency_max,
        "latency_p50_ms": hist.quantile(0.5, row.latency_min, row.latency_max),
        "latency_p95_ms": hist.quantile(0.95, row.latency_min, row.latency_max),
        "latency_p99_ms": hist.quantile(0.99, row.latency_min, row.latency_max),
        "streamed_calls": row.streamed_calls,
        "ttft_avg_ms": row.ttft_sum / row.streamed_calls if row.streamed_calls else None,
        "ttft_p50_ms": ttft.quantile(0.5, row.ttft_min, row.ttft_max),
        "ttft_p95_ms": ttft.quantile(0.95, row.ttft_min, row.ttft_max),
        "ttft_p99_ms": ttft.quantile(0.99, row.ttft_min, row.ttft_max),
    }


# --- queries ------------------------------------------------------------------


def feature_summary(
    conn: Connection, tenant: str, start: datetime, end: datetime, *, max_rows: int | None = None
) -> list[FeatureSummary]:
    """Per feature over ``hour_span(start, end)``: calls, errors, tokens, latency and TTFT avg/p50/p95/p99.

    More than ``max_rows`` features raise TooManyRows (the rows are never all read)."""
    h0, h1 = hour_span(start, end)
    plan = _Plan.make(conn, tenant, h0, h1, days=True, feature=None)
    sql = FIGURES_QUERY.format(cells=plan.union, key="feature_name", totals=TOTALS)
    rows = capped(conn.execute(text(sql), {**plan.params, "row_limit": limit_for(max_rows)}).all(), max_rows)
    return [FeatureSummary(feature_name=row.key, **_figures(row)) for row in rows]


def range_figures(
    conn: Connection, tenant: str, start: datetime, end: datetime, feature: str | None = None
) -> Figures | None:
    """Calls, errors, tokens, latency and TTFT over ``hour_span(start, end)`` merged into one figure
    (all features, or ``feature``); None when the range holds no call."""
    h0, h1 = hour_span(start, end)
    plan = _Plan.make(conn, tenant, h0, h1, days=True, feature=feature)
    sql = FIGURES_QUERY.format(cells=plan.union, key=WHOLE_RANGE, totals=TOTALS)
    row = conn.execute(text(sql), {**plan.params, "row_limit": 1}).first()
    return None if row is None else Figures(**_figures(row))


def time_series(
    conn: Connection,
    tenant: str,
    start: datetime,
    end: datetime,
    granularity: Granularity = "hour",
    feature: str | None = None,
) -> list[SeriesPoint]:
    """One point per hour or UTC day that has events (optionally one feature only)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    h0, h1 = hour_span(start, end)
    plan = _Plan.make(conn, tenant, h0, h1, days=granularity == "day", feature=feature)
    key = "date_trunc('day', bucket, 'UTC')" if granularity == "day" else "bucket"
    sql = FIGURES_QUERY.format(cells=plan.union, key=key, totals=TOTALS)
    rows = conn.execute(text(sql), {**plan.params, "row_limit": None})  # at most bucket_count() rows
    return [SeriesPoint(bucket=row.key, **_figures(row)) for row in rows]


@dataclass(frozen=True)
class TopFeatures:
    """The ``count`` features with the most calls (most first, ties by name), of ``total`` with calls."""

    names: list[str]
    total: int


def top_features(conn: Connection, tenant: str, start: datetime, end: datetime, count: int) -> TopFeatures:
    """The ``count`` features with the most calls over ``hour_span(start, end)``."""
    h0, h1 = hour_span(start, end)
    plan = _Plan.make(conn, tenant, h0, h1, days=True, feature=None)
    rows = conn.execute(text(TOP_FEATURES_QUERY.format(cells=plan.union)), {**plan.params, "count": count}).all()
    return TopFeatures([row.feature_name for row in rows], rows[0].features if rows else 0)


def feature_series(
    conn: Connection,
    tenant: str,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    features: list[str],
) -> dict[str, list[SeriesPoint]]:
    """``time_series`` of each of ``features`` (one query each, all in the caller's snapshot)."""
    return {feature: time_series(conn, tenant, start, end, granularity, feature) for feature in features}


def error_rate_by_feature(
    conn: Connection, tenant: str, start: datetime, end: datetime, *, max_rows: int | None = None
) -> list[FeatureErrorRate]:
    """Calls, errors and error rate per feature over ``hour_span(start, end)``; more than
    ``max_rows`` features raise TooManyRows."""
    h0, h1 = hour_span(start, end)
    plan = _Plan.make(conn, tenant, h0, h1, days=True, feature=None)
    params = {**plan.params, "row_limit": limit_for(max_rows)}
    rows = capped(conn.execute(text(COUNTS_QUERY.format(cells=plan.union)), params).all(), max_rows)
    return [FeatureErrorRate(row.feature_name, row.calls, row.errors) for row in rows]


def top_users(
    conn: Connection,
    tenant: str,
    start: datetime,
    end: datetime,
    limit: int = DEFAULT_TOP_USERS,
    feature: str | None = None,
) -> list[UserUsage]:
    """The ``limit`` users with the most calls over ``day_span(start, end)`` (ties by user id)."""
    d0, d1 = day_span(start, end)
    plan = _Plan.make(conn, tenant, d0, d1, days=False, feature=feature, base=(USERS_PART,), tail=USERS_TAIL_PART)
    rows = conn.execute(text(TOP_USERS_QUERY.format(users=plan.union)), {**plan.params, "limit": limit})
    return [UserUsage(row.user_id, row.calls, row.errors, row.tokens_used) for row in rows]


def active_users(
    conn: Connection,
    tenant: str,
    start: datetime,
    end: datetime,
    feature: str | None = None,
    *,
    max_rows: int | None = None,
) -> list[ActiveUsers]:
    """Exact daily active users per feature for each UTC day of ``day_span(start, end)``; more
    than ``max_rows`` (day, feature) rows raise TooManyRows."""
    d0, d1 = day_span(start, end)
    plan = _Plan.make(conn, tenant, d0, d1, days=False, feature=feature, base=(USERS_PART,), tail=USERS_TAIL_PART)
    params = {**plan.params, "row_limit": limit_for(max_rows)}
    rows = capped(conn.execute(text(ACTIVE_USERS_QUERY.format(users=plan.union)), params).all(), max_rows)
    return [ActiveUsers(row.day, row.feature_name, row.users) for row in rows]
