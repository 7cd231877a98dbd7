"""Incremental rollups that never miss nor double-count an event: the pending-batch log.

Why not a time window. "Roll up everything up to now() - lag" misses the rows of
a transaction that commits after a later transaction's rows were rolled up
(``now()`` is the transaction *start*), and a late event (old timestamp) lands in
a window that was already closed. So progress is tracked by *batch*, not by time
(TimescaleDB's invalidation log, Citus' ``incremental_rollup_window``, but exact).

The log. Every ingest transaction (storage.events.store_batch) first inserts a
row into ``rollup_pending_batches`` and stamps every event it stores with that
``batch_id``. The log row and the events commit together, so:

* a batch becomes visible to a rollup run exactly when its rows do: a slow
  transaction is simply picked up by the run after it commits, whatever its
  timestamps (late events included: their old buckets are updated);
* rows never stored (duplicates, dead letters) carry no batch, so they are
  never counted; a batch that stored nothing deletes its log row.

A run (``run_chunk``), in ONE transaction:

1. takes the rollup advisory lock in *shared* mode (runs overlap freely; only
   a rebuild takes it exclusively);
2. ``SELECT .. FROM rollup_pending_batches ORDER BY batch_id LIMIT n FOR UPDATE
   SKIP LOCKED``: two overlapping runs take disjoint sets of batches;
3. aggregates the events of those batches (``batch_id = ANY(ids)`` plus the
   batches' id and time bounds, which let the BRIN index on ``batch_id`` and
   partition pruning do the work, so the cost follows the new rows, not the
   table) into a scratch table at (tenant, feature, model, hour, latency bucket)
   grain, and at (.., hour, time-to-first-token bucket) grain for the
   streamed calls, then upsert-adds hourly and daily deltas (counts and sums
   add, min/max combine, sparse histograms add bucket by bucket via
   ``rollup_hist_merge``) and the per-user daily rows (DAU + top users);
4. deletes the log rows it took and commits.

A run that dies anywhere rolls back: its deltas vanish and its log rows are
unlocked, still pending, for the next run. Upserts touch keys in primary-key
order, so concurrent runs queue on a key instead of deadlocking; a deadlock or
serialization failure anyway is retried (the chunk is simply redone).

Rebuild (``rebuild``), one UTC day per transaction: take the advisory lock
exclusively (runs wait; queries do not), delete the day's hourly, daily and
user rows, and recompute them from the raw events of the day whose batch is
*not* pending. Pending batches' rows are left to the next run, which adds them
to the rebuilt buckets, so nothing is counted twice. Because runs are locked
out, the set of non-pending batches cannot change during the rebuild; new
batches committed meanwhile are pending by construction. Days whose month has
no attached partition (retention took it) are skipped, never emptied.

Readers (queries.rollups) read the rollups plus the raw rows of the batches
still pending, in one REPEATABLE READ snapshot, so answers are fresh and exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, insert, text
from sqlalchemy.orm import Session

from config import DEFAULTS
from models import RollupPendingBatch
from models.rollup import NO_MODEL, NO_PROVIDER
from pricing.rates import ensure_priced
from retry_policy import Backoff, call_with_retry
from schema.bands import input_band_sql
from storage.histogram import bucket_sql
from storage.partitions import Month, existing_months
from storage.sqlstate import sqlstate, sqlstate_in

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Arbitrary constant naming the rollup advisory lock: shared by runs, exclusive for rebuilds.
ROLLUP_LOCK_KEY = 0x524F_4C4C  # "ROLL"
ROLLUP_WORK_MEM = "128MB"  # per sort/hash node of a rollup transaction
UTC_EPOCH = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"  # origin of date_bin: hours and days are UTC
RETRY_ATTEMPTS = 5
# Pauses 0.2, 0.4, 0.8, 0.8 s; no jitter: the deadlock already aborted only one side.
RETRY_BACKOFF = Backoff(base_s=0.2, cap_s=0.8, jitter=False)
# deadlock_detected, serialization_failure: redoing the chunk is always safe.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


# --- the log, written by the ingest path --------------------------------------


def open_batch(session: Session, timestamps: list[datetime]) -> int:
    """Log a batch in the writer's transaction and return the id to stamp its events with."""
    return session.execute(
        insert(RollupPendingBatch)
        .values(min_ts=min(timestamps), max_ts=max(timestamps))
        .returning(RollupPendingBatch.batch_id)
    ).scalar_one()


def discard_batch(session: Session, batch_id: int) -> None:
    """Drop the log row of a batch that stored nothing (all duplicates or rejected)."""
    session.execute(delete(RollupPendingBatch).where(RollupPendingBatch.batch_id == batch_id))


# --- SQL ----------------------------------------------------------------------

# The current chunk, aggregated once at the three grains the rollups need:
# per (tenant, feature, hour, model, provider, input band, latency bucket) for
# the hourly and daily figures (latency_bucket set), per (.., ttft bucket) for
# the time-to-first-token histogram (latency_bucket NULL; ttft_bucket NULL for
# the calls that did not stream, which that histogram leaves out), and per
# (tenant, feature, day, user, model, provider, input band) for the user rows
# (hour NULL). Emptied at commit.
SCRATCH_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS rollup_scratch (
    tenant_id varchar(64) NOT NULL,
    feature_name varchar(64) NOT NULL,
    hour timestamptz,
    model varchar(64) NOT NULL,
    provider varchar(64) NOT NULL,
    input_band integer NOT NULL,
    latency_bucket smallint,
    ttft_bucket smallint,
    day timestamptz,
    user_id varchar(128),
    calls bigint NOT NULL,
    errors bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    tokens_used bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    latency_sum bigint NOT NULL,
    latency_min integer NOT NULL,
    latency_max integer NOT NULL,
    streamed_calls bigint NOT NULL,
    ttft_sum bigint NOT NULL,
    ttft_min integer,
    ttft_max integer
) ON COMMIT DELETE ROWS
"""

# Which raw rows a statement reads: those of the chunk's batches, or (rebuild)
# those of a time range whose batch is not pending.
# ``batch_id + 0`` keeps the id list out of the index condition: the BRIN scan
# uses the id range, and the list becomes a filter, which PostgreSQL hashes
# (as an index recheck it was a linear search per row: 3.5 s per 1M rows).
# The cast matters too: bigint = integer is not hashable, bigint = bigint is.
CHUNK_ROWS = (
    "e.batch_id BETWEEN :first_batch AND :last_batch"
    " AND e.batch_id + 0 = ANY(CAST(:batch_ids AS bigint[]))"
    " AND e.timestamp BETWEEN :min_ts AND :max_ts"
)
RANGE_ROWS = (
    "e.timestamp >= :start AND e.timestamp < :end"
    " AND NOT EXISTS (SELECT 1 FROM rollup_pending_batches p WHERE p.batch_id = e.batch_id)"
)

# Each event's latency bucket, rendered by storage.histogram from its constants
# (written out, not a function call: see bucket_sql); its time-to-first-token
# bucket the same way (NULL when the call did not stream).
EVENT_LATENCY_BUCKET = bucket_sql("e.latency_ms")
EVENT_TTFT_BUCKET = bucket_sql("e.time_to_first_token_ms")
# Each event's input band (schema.bands), written out for the same reason.
EVENT_INPUT_BAND = input_band_sql("e.input_tokens")
NO_MODEL_SQL = f"'{NO_MODEL}'"  # SQL literals of the constants (empty strings: nothing to escape)
NO_PROVIDER_SQL = f"'{NO_PROVIDER}'"

# One scan, three hashed grouping sets; a column outside a row's set is NULL.
# count/sum/min/max of the time to first token skip the NULLs of unstreamed calls.
# date_bin from a UTC midnight is plain arithmetic; date_trunc(.., 'UTC') goes
# through the time zone machinery for every row (same result, slower).
FILL_SCRATCH = """
INSERT INTO rollup_scratch
SELECT e.tenant_id, e.feature_name,
       date_bin('1 hour', e.timestamp, {epoch}), coalesce(e.model, {no_model}),
       coalesce(e.provider, {no_provider}), {band}, {bucket}, {ttft_bucket},
       date_bin('1 day', e.timestamp, {epoch}), e.user_id,
       count(*), count(*) FILTER (WHERE e.status = 'error'),
       sum(e.input_tokens), sum(e.output_tokens), sum(e.tokens_used),
       sum(e.cache_read_tokens), sum(e.cache_write_tokens), sum(e.reasoning_tokens),
       sum(e.latency_ms), min(e.latency_ms), max(e.latency_ms),
       count(e.time_to_first_token_ms), coalesce(sum(e.time_to_first_token_ms), 0),
       min(e.time_to_first_token_ms), max(e.time_to_first_token_ms)
FROM analytics_events e
WHERE {rows}
GROUP BY GROUPING SETS (
    (e.tenant_id, e.feature_name, date_bin('1 hour', e.timestamp, {epoch}), coalesce(e.model, {no_model}),
     coalesce(e.provider, {no_provider}), {band}, {bucket}),
    (e.tenant_id, e.feature_name, date_bin('1 hour', e.timestamp, {epoch}), coalesce(e.model, {no_model}),
     coalesce(e.provider, {no_provider}), {band}, {ttft_bucket}),
    (e.tenant_id, e.feature_name, date_bin('1 day', e.timestamp, {epoch}), e.user_id,
     coalesce(e.model, {no_model}), coalesce(e.provider, {no_provider}), {band}))
"""

# {table} and {source} come from ROLLUP_LEVELS below, never from input. The
# source's rows of the latency grain give the sums and the latency histogram;
# its rows of the TTFT grain (ttft_bucket set) give the TTFT histogram, empty
# for a cell without streamed calls.
UPSERT_LEVEL = """
WITH source AS MATERIALIZED {source}
INSERT INTO {table} AS r (tenant_id, bucket, feature_name, model, provider, input_band, calls, errors,
    input_tokens, output_tokens, tokens_used, cache_read_tokens, cache_write_tokens, reasoning_tokens,
    latency_sum, latency_min, latency_max, latency_hist_buckets, latency_hist_counts,
    streamed_calls, ttft_sum, ttft_min, ttft_max, ttft_hist_buckets, ttft_hist_counts)
SELECT per_cell.*, coalesce(per_ttft.buckets, '{{}}'), coalesce(per_ttft.counts, '{{}}')
FROM (
    SELECT tenant_id, bucket, feature_name, model, provider, input_band, sum(calls), sum(errors),
           sum(input_tokens), sum(output_tokens), sum(tokens_used),
           sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
           sum(latency_sum), min(latency_min), max(latency_max),
           array_agg(latency_bucket ORDER BY latency_bucket), array_agg(calls::integer ORDER BY latency_bucket),
           sum(streamed_calls), sum(ttft_sum), min(ttft_min), max(ttft_max)
    FROM source WHERE latency_bucket IS NOT NULL
    GROUP BY tenant_id, bucket, feature_name, model, provider, input_band) AS per_cell
LEFT JOIN (
    SELECT tenant_id, bucket, feature_name, model, provider, input_band,
           array_agg(ttft_bucket ORDER BY ttft_bucket) AS buckets,
           array_agg(streamed_calls::integer ORDER BY ttft_bucket) AS counts
    FROM source WHERE ttft_bucket IS NOT NULL
    GROUP BY tenant_id, bucket, feature_name, model, provider, input_band) AS per_ttft
USING (tenant_id, bucket, feature_name, model, provider, input_band)
ORDER BY tenant_id, bucket, feature_name, model, provider, input_band
ON CONFLICT ON CONSTRAINT pk_{table} DO UPDATE SET
    calls = r.calls + EXCLUDED.calls,
    errors = r.errors + EXCLUDED.errors,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    tokens_used = r.tokens_used + EXCLUDED.tokens_used,
    cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
    latency_sum = r.latency_sum + EXCLUDED.latency_sum,
    latency_min = least(r.latency_min, EXCLUDED.latency_min),
    latency_max = greatest(r.latency_max, EXCLUDED.latency_max),
    {latency_hist},
    streamed_calls = r.streamed_calls + EXCLUDED.streamed_calls,
    ttft_sum = r.ttft_sum + EXCLUDED.ttft_sum,
    ttft_min = least(r.ttft_min, EXCLUDED.ttft_min),
    ttft_max = greatest(r.ttft_max, EXCLUDED.ttft_max),
    {ttft_hist}
"""
# least/greatest ignore NULL: a cell's first streamed calls set its TTFT min/max.


def hist_update(prefix: str, *, may_be_empty: bool = False) -> str:
    """The SET clauses adding EXCLUDED's sparse histogram ``{prefix}_hist_*`` to the row's.

    A conflicting row's histogram is merged with rollup_hist_merge (a SQL
    function: unnest, group, array_agg; ~0.1 ms per call), except in the most
    common case, a delta of one bucket the row already has (late events are
    single events): then the buckets stay and one count is added in place.
    ``may_be_empty``: either side may be empty (no streamed calls), which
    keeps the other side (rollup_hist_merge of two empty ones would be NULL).
    ``prefix`` is a constant of this module, never input.
    """
    buckets, counts = f"{prefix}_hist_buckets", f"{prefix}_hist_counts"
    merge = f"rollup_hist_merge(r.{buckets}, r.{counts}, EXCLUDED.{buckets}, EXCLUDED.{counts})"
    position = f"array_position(r.{buckets}, EXCLUDED.{buckets}[1])"
    one_known_bucket = f"cardinality(EXCLUDED.{buckets}) = 1 AND {position} IS NOT NULL"
    keep_buckets = keep_counts = ""
    if may_be_empty:
        keep_buckets = (
            f"WHEN cardinality(EXCLUDED.{buckets}) = 0 THEN r.{buckets}"
            f" WHEN cardinality(r.{buckets}) = 0 THEN EXCLUDED.{buckets} "
        )
        keep_counts = (
            f"WHEN cardinality(EXCLUDED.{buckets}) = 0 THEN r.{counts}"
            f" WHEN cardinality(r.{buckets}) = 0 THEN EXCLUDED.{counts} "
        )
    return (
        f"{buckets} = CASE {keep_buckets}WHEN {one_known_bucket} THEN r.{buckets}\n"
        f"        ELSE (SELECT m.buckets FROM {merge} AS m) END,\n"
        f"    {counts} = CASE {keep_counts}WHEN {one_known_bucket}\n"
        f"        THEN r.{counts}[1:{position} - 1]\n"
        f"             || (r.{counts}[{position}] + EXCLUDED.{counts}[1])\n"
        f"             || r.{counts}[{position} + 1:]\n"
        f"        ELSE (SELECT m.counts FROM {merge} AS m) END"
    )


LATENCY_HIST_UPDATE = hist_update("latency")
TTFT_HIST_UPDATE = hist_update("ttft", may_be_empty=True)
# The scratch rows are per hour already; days merge their hours' buckets first.
HOURLY_SOURCE = "(SELECT *, hour AS bucket FROM rollup_scratch WHERE hour IS NOT NULL)"
DAILY_SOURCE = """(
    SELECT tenant_id, date_bin('1 day', hour, {epoch}) AS bucket, feature_name, model, provider, input_band,
           latency_bucket, ttft_bucket, sum(calls) AS calls, sum(errors) AS errors,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(tokens_used) AS tokens_used,
           sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
           sum(reasoning_tokens) AS reasoning_tokens,
           sum(latency_sum) AS latency_sum, min(latency_min) AS latency_min,
           max(latency_max) AS latency_max, sum(streamed_calls) AS streamed_calls, sum(ttft_sum) AS ttft_sum,
           min(ttft_min) AS ttft_min, max(ttft_max) AS ttft_max
    FROM rollup_scratch WHERE hour IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8)"""
ROLLUP_LEVELS = (("rollup_hourly", HOURLY_SOURCE), ("rollup_daily", DAILY_SOURCE))

UPSERT_USERS = """
INSERT INTO rollup_daily_users AS r (tenant_id, day, feature_name, user_id, model, provider, input_band,
    calls, errors, tokens_used, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
SELECT tenant_id, day, feature_name, user_id, model, provider, input_band,
       calls, errors, tokens_used, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens
FROM rollup_scratch WHERE day IS NOT NULL
ORDER BY tenant_id, day, feature_name, user_id, model, provider, input_band
ON CONFLICT ON CONSTRAINT pk_rollup_daily_users DO UPDATE SET
    calls = r.calls + EXCLUDED.calls,
    errors = r.errors + EXCLUDED.errors,
    tokens_used = r.tokens_used + EXCLUDED.tokens_used,
    input_tokens = r.input_tokens + EXCLUDED.input_tokens,
    output_tokens = r.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens
"""

TAKE_PENDING = text(
    "SELECT batch_id, min_ts, max_ts FROM rollup_pending_batches ORDER BY batch_id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
DROP_PENDING = text("DELETE FROM rollup_pending_batches WHERE batch_id = ANY(CAST(:batch_ids AS bigint[]))")
SCRATCH_EVENTS = text("SELECT coalesce(sum(calls), 0) FROM rollup_scratch WHERE latency_bucket IS NOT NULL")
SCRATCH_PAIRS = text("SELECT DISTINCT model, provider FROM rollup_scratch WHERE latency_bucket IS NOT NULL")
CLEAR_SCRATCH = text("DELETE FROM rollup_scratch")


# --- runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkResult:
    batches: int = 0
    events: int = 0
    hourly_rows: int = 0
    daily_rows: int = 0
    user_rows: int = 0
    pairs: frozenset[tuple[str, str]] = frozenset()  # (model, provider) of the rows added: pricing registers them


@dataclass
class RunReport:
    chunks: int = 0
    batches: int = 0
    events: int = 0
    seconds: float = 0.0


def _aggregate(conn: Connection, rows: str, params: dict[str, Any]) -> ChunkResult:
    """Add the raw rows selected by ``rows`` (CHUNK_ROWS or RANGE_ROWS) to the rollups."""
    # Memory for the chunk's hash aggregates and sorts (the 4MB default spills
    # them to disk); JIT compilation costs more than it saves on these statements.
    conn.execute(text(f"SET LOCAL work_mem = '{ROLLUP_WORK_MEM}'"))
    conn.execute(text("SET LOCAL jit = off"))
    conn.execute(text(SCRATCH_TABLE))
    conn.execute(CLEAR_SCRATCH)
    # New batches are beyond the statistics, so the planner expects a handful
    # of rows and picks sort-based grouping; hashing 1M rows is several times
    # faster than sorting them. Once ANALYZE has seen pending batches, though,
    # a sort-free plan is an ordered index scan of whole partitions (measured:
    # 175 s instead of 5 s for 1M rows): no plain index scans here, only the
    # BRIN bitmap scan on batch_id (or, for a rebuild, the time-range indexes).
    conn.execute(text("SET LOCAL enable_sort = off; SET LOCAL enable_indexscan = off"))
    fill = FILL_SCRATCH.format(
        rows=rows,
        epoch=UTC_EPOCH,
        bucket=EVENT_LATENCY_BUCKET,
        ttft_bucket=EVENT_TTFT_BUCKET,
        band=EVENT_INPUT_BAND,
        no_model=NO_MODEL_SQL,
        no_provider=NO_PROVIDER_SQL,
    )
    conn.execute(text(fill), params)
    conn.execute(text("SET LOCAL enable_sort = on; SET LOCAL enable_indexscan = on"))
    events = int(conn.execute(SCRATCH_EVENTS).scalar_one())
    touched = [
        conn.execute(
            text(
                UPSERT_LEVEL.format(
                    table=table,
                    source=source.format(epoch=UTC_EPOCH),
                    latency_hist=LATENCY_HIST_UPDATE,
                    ttft_hist=TTFT_HIST_UPDATE,
                )
            )
        ).rowcount
        for table, source in ROLLUP_LEVELS
    ]
    users = conn.execute(text(UPSERT_USERS)).rowcount
    pairs = frozenset((row.model, row.provider) for row in conn.execute(SCRATCH_PAIRS))
    return ChunkResult(0, events, touched[0], touched[1], users, pairs)


def run_chunk(conn: Connection, chunk_batches: int = DEFAULTS.rollup_chunk_batches) -> ChunkResult:
    """Add up to ``chunk_batches`` pending batches to the rollups, in the caller's transaction.

    Nothing is visible to others until the caller commits; a rollback undoes
    everything and leaves the batches pending.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ROLLUP_LOCK_KEY})
    taken = conn.execute(TAKE_PENDING, {"limit": chunk_batches}).all()
    if not taken:
        return ChunkResult()
    ids = [row.batch_id for row in taken]
    params = {
        "batch_ids": ids,
        "first_batch": ids[0],
        "last_batch": ids[-1],
        "min_ts": min(row.min_ts for row in taken),
        "max_ts": max(row.max_ts for row in taken),
    }
    result = _aggregate(conn, CHUNK_ROWS, params)
    conn.execute(DROP_PENDING, {"batch_ids": ids})
    return ChunkResult(len(ids), result.events, result.hourly_rows, result.daily_rows, result.user_rows, result.pairs)


def _retrying(action: Callable[[], T]) -> T:
    """Redo a rollup transaction aborted by a deadlock or a serialization failure."""

    def log_retry(exc: Exception, attempt: int, pause: float) -> None:
        logger.warning("rollup transaction failed (%s), attempt %d; redoing it", sqlstate(exc), attempt)

    return call_with_retry(
        action,
        attempts=RETRY_ATTEMPTS,
        retryable=sqlstate_in(RETRYABLE_SQLSTATES),
        backoff=RETRY_BACKOFF,
        on_retry=log_retry,
    )


def pending_count(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM rollup_pending_batches")).scalar_one())


def run_until_idle(
    engine: Engine, chunk_batches: int = DEFAULTS.rollup_chunk_batches, max_chunks: int | None = None
) -> RunReport:
    """Run chunks, one transaction each, until a chunk finds fewer batches than it could take."""
    report = RunReport()
    started = time.monotonic()

    def one_chunk() -> ChunkResult:
        with engine.begin() as conn:
            return run_chunk(conn, chunk_batches)

    while max_chunks is None or report.chunks < max_chunks:
        chunk_started = time.monotonic()
        result: ChunkResult = _retrying(one_chunk)
        if result.batches == 0:
            break
        _retrying(partial(_price, engine, result.pairs))
        report.chunks += 1
        report.batches += result.batches
        report.events += result.events
        logger.info(
            "rollup chunk %d: %d batches, %d events -> %d hourly, %d daily, %d user rows in %.2fs",
            report.chunks,
            result.batches,
            result.events,
            result.hourly_rows,
            result.daily_rows,
            result.user_rows,
            time.monotonic() - chunk_started,
        )
        if result.batches < chunk_batches:
            break
    report.seconds = time.monotonic() - started
    return report


def _price(engine: Engine, pairs: frozenset[tuple[str, str]]) -> None:
    """Materialize the rates of (model, provider) pairs seen for the first time, once their rows are rolled up.

    Its own transaction after the chunk's: the price lock it may take stays
    out of the rollup transaction, and a pair is unpriced in the figures for
    at most that moment (pricing.rates.ensure_priced, a no-op for known pairs).
    """
    with Session(engine) as session, session.begin():
        ensure_priced(session, pairs)


# --- rebuild ------------------------------------------------------------------


@dataclass
class RebuildReport:
    days: list[datetime]
    skipped_days: list[datetime]  # no attached partition: left untouched
    events: int = 0
    seconds: float = 0.0


def day_floor(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def days_covering(start: datetime, end: datetime) -> Iterator[datetime]:
    """UTC days that intersect [start, end): a rebuild always redoes whole days."""
    day = day_floor(start)
    while day < end:
        yield day
        day += DAY


def rebuild_day(conn: Connection, day: datetime) -> ChunkResult:
    """Recompute one UTC day's rollups from raw, in the caller's transaction."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROLLUP_LOCK_KEY})
    bounds = {"start": day, "end": day + DAY}
    for table, column in (("rollup_hourly", "bucket"), ("rollup_daily", "bucket"), ("rollup_daily_users", "day")):
        conn.execute(text(f"DELETE FROM {table} WHERE {column} >= :start AND {column} < :end"), bounds)
    return _aggregate(conn, RANGE_ROWS, bounds)


def rebuild(engine: Engine, start: datetime, end: datetime) -> RebuildReport:
    """Drop and recompute the rollups of every UTC day meeting [start, end) from raw events."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("rebuild bounds must be timezone-aware")
    if end <= start:
        raise ValueError(f"empty range: {start.isoformat()} .. {end.isoformat()}")
    started = time.monotonic()
    with engine.connect() as conn:
        attached = existing_months(conn)
    report = RebuildReport(days=[], skipped_days=[])
    for day in days_covering(start, end):
        if Month.of(day) not in attached:
            report.skipped_days.append(day)
            continue

        def one_day(day: datetime = day) -> ChunkResult:
            with engine.begin() as conn:
                return rebuild_day(conn, day)

        result: ChunkResult = _retrying(one_day)
        report.days.append(day)
        report.events += result.events
        logger.info("rebuilt %s: %d events", day.date().isoformat(), result.events)
    report.seconds = time.monotonic() - started
    return report
