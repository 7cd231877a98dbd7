"""Incremental rollups against the real database: the cases the pending-batch log exists for.

Each test starts from empty tables (``clean_tables``) and ends by comparing
every rollup figure with the same figure computed from raw events.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from config import get_settings
from schema.bands import INPUT_BANDS, input_band
from storage.events import store_batch
from storage.histogram import (
    GAMMA,
    RELATIVE_ERROR,
    LatencyHistogram,
    bucket_of,
    bucket_sql,
    representative,
)
from storage.partitions import Month, ensure_months
from storage.rollups import rebuild, run_chunk, run_until_idle
from tests.rollup_checks import (
    UTC,
    assert_rollups_match_raw,
    dump_rollups,
    ensure_months_for,
    event,
    ingest,
    ingest_transaction,
    pending_batches,
    recent_hour,
    rollup_rows,
    within_error,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_READY_TIMEOUT_S = 60
MAX_LATENCY = 2**31 - 1

pytestmark = pytest.mark.usefixtures("clean_tables")


class Boom(RuntimeError):
    """Stands for a worker dying in the middle of a rollup transaction."""


def some_events(n: int, hours_ago: int = 1, seed: int = 0, **fixed: object) -> list:
    """``n`` events of one hour: a few features, models, providers, users, input bands and token buckets."""
    rng = random.Random(seed)
    start = recent_hour(hours_ago)
    events = []
    for _ in range(n):
        input_tokens = rng.choice([10, 5_000, INPUT_BANDS[0], INPUT_BANDS[0] + 1, 250_000])
        output_tokens = rng.randrange(0, 2_000)
        cache_read = rng.choice([0, input_tokens // 2])
        latency = rng.randrange(0, 5000)
        spec = {
            "feature": rng.choice(["f1", "f2"]),
            "model": rng.choice([None, "m1"]),
            "provider": rng.choice([None, "openai", "anthropic"]),
            "user": f"u{rng.randrange(4)}",
            "latency_ms": latency,
            # Not streamed, streamed (0 up to the whole call), or the first token at once.
            "time_to_first_token_ms": rng.choice([None, None, rng.randint(0, latency), 0]),
            "status": rng.choice(["success", "error"]),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read,
            "cache_write_tokens": rng.choice([0, (input_tokens - cache_read) // 3]),
            "reasoning_tokens": rng.choice([0, output_tokens]),
            **fixed,
        }
        events.append(event(start + timedelta(seconds=rng.randrange(3600)), **spec))  # type: ignore[arg-type]
    return events


# --- the histogram ------------------------------------------------------------


def bucket_edge_values() -> list[int]:
    """0, 1, small values, the integers either side of every bucket boundary g**j, and the max int."""
    boundaries = [GAMMA**j for j in range(bucket_of(MAX_LATENCY) + 1)]
    around = {v + d for b in boundaries for v in (math.floor(b), math.ceil(b)) for d in (-1, 0, 1)}
    powers = {2**k + d for k in range(31) for d in (-1, 0, 1)} | {10**k for k in range(10)}
    return sorted(v for v in around | powers | set(range(-1, 2000)) | {MAX_LATENCY - 1, MAX_LATENCY}
                  if -1 <= v <= MAX_LATENCY)  # fmt: skip


def test_sql_bucket_expression_agrees_with_python_and_keeps_the_error_bound(engine: Engine) -> None:
    """The one formula, both renderings: storage.histogram's bucket_of and its bucket_sql, on
    the edge values and random ones, and on the function migration 0002 froze (the rollups
    stored with it stay valid)."""
    rng = random.Random(7)
    values = bucket_edge_values() + [rng.randrange(MAX_LATENCY) for _ in range(20_000)]
    frozen = ScriptDirectory.from_config(Config(str(REPO_ROOT / "alembic.ini"))).get_revision("0002")
    assert frozen is not None
    with engine.connect() as conn:
        conn.execute(text(frozen.module.LATENCY_BUCKET_FUNCTION.replace(
            "CREATE FUNCTION rollup_latency_bucket", "CREATE FUNCTION pg_temp.frozen_latency_bucket")))  # fmt: skip
        rows = conn.execute(
            text(f"SELECT v, {bucket_sql('v')}, pg_temp.frozen_latency_bucket(v)"
                 " FROM unnest(CAST(:vs AS integer[])) AS v"),
            {"vs": values},
        ).all()  # fmt: skip
        conn.rollback()
    assert len(rows) == len(values)
    for value, bucket, frozen_bucket in rows:
        assert bucket == bucket_of(value) == frozen_bucket, value
        assert within_error(representative(bucket), max(value, 0)), value
    assert bucket_of(MAX_LATENCY) < 2**15, "bucket indexes are smallint"


def test_the_bucket_function_of_migration_0002_is_gone_at_head(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regprocedure('rollup_latency_bucket(integer)')")).scalar() is None
        assert conn.execute(text("SELECT to_regprocedure('rollup_hist_merge(smallint[], integer[],"
                                 " smallint[], integer[])')")).scalar() is not None  # fmt: skip


def test_histogram_quantiles_are_within_the_stated_error_of_percentile_disc(engine: Engine) -> None:
    rng = random.Random(11)
    with engine.connect() as conn:
        for size in (1, 2, 3, 10, 99, 1000):
            latencies = [int(rng.lognormvariate(5.5, 1.2)) for _ in range(size)]
            exact = conn.execute(
                text(
                    "SELECT percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY v)"
                    " FROM unnest(CAST(:vs AS integer[])) AS v"
                ),
                {"vs": latencies},
            ).scalar_one()
            hist = LatencyHistogram.from_latencies(latencies)
            for q, value in zip((0.5, 0.95, 0.99), exact, strict=False):
                estimate = hist.quantile(q, min(latencies), max(latencies))
                assert within_error(estimate, value), (size, q, estimate, value)
    assert RELATIVE_ERROR == 0.02


def test_merging_histograms_equals_one_histogram_of_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(0, 100_000) for _ in range(rng.randrange(0, 50))] for _ in range(10)]
    merged = LatencyHistogram.of([], [])
    for part in parts:
        merged = merged.merge(LatencyHistogram.from_latencies(part))
    assert merged == LatencyHistogram.from_latencies([v for part in parts for v in part])


# --- the log and the runs -----------------------------------------------------


def test_each_stored_batch_is_logged_once_and_a_run_drains_the_log(engine: Engine) -> None:
    for seed in range(3):
        ingest(engine, some_events(50, seed=seed))
    with engine.connect() as conn:
        assert pending_batches(conn) == 3
        stamped = conn.execute(text("SELECT count(DISTINCT batch_id) FROM analytics_events")).scalar_one()
        assert stamped == 3
    report = run_until_idle(engine, chunk_batches=2)
    assert (report.batches, report.events, report.chunks) == (3, 150, 2)
    with engine.connect() as conn:
        assert pending_batches(conn) == 0
        assert_rollups_match_raw(conn)


def test_rollups_keep_sums_per_provider_and_input_band(engine: Engine) -> None:
    """A tiered price needs each request's input size: the sums are split at every band boundary."""
    hour = recent_hour(1)
    sizes = [INPUT_BANDS[0], INPUT_BANDS[0] + 1, INPUT_BANDS[0] + 2, 260_000]
    rows = [
        event(hour + timedelta(minutes=i), input_tokens=size, output_tokens=100, cache_read_tokens=size // 4,
              cache_write_tokens=size // 8, reasoning_tokens=40, provider="openai", user=f"u{i % 2}")
        for i, size in enumerate(sizes)
    ] + [event(hour, input_tokens=5, output_tokens=1, user="u1")]  # fmt: skip
    ingest(engine, rows)
    run_until_idle(engine)
    with engine.connect() as conn:
        hourly = conn.execute(
            text(
                "SELECT provider, input_band, calls, input_tokens, cache_read_tokens, cache_write_tokens,"
                " reasoning_tokens FROM rollup_hourly ORDER BY provider, input_band"
            )
        ).all()
        users = conn.execute(
            text(
                "SELECT user_id, model, provider, input_band, calls, input_tokens, output_tokens, reasoning_tokens"
                " FROM rollup_daily_users ORDER BY user_id, provider, input_band"
            )
        ).all()
        assert_rollups_match_raw(conn)
    by_band: dict[int, list[int]] = {}
    for size in sizes:
        by_band.setdefault(input_band(size), []).append(size)
    assert [tuple(row) for row in hourly] == [("", 0, 1, 5, 0, 0, 0)] + [
        ("openai", band, len(group), sum(group), sum(s // 4 for s in group), sum(s // 8 for s in group), 40 * len(group))
        for band, group in sorted(by_band.items())
    ]  # fmt: skip
    assert [row.input_band for row in hourly] == [0, 0, INPUT_BANDS[0], 256_000]
    # Per user, model, provider and band: what prices a user's cost.
    assert [tuple(row) for row in users] == [
        ("u0", "m1", "openai", 0, 1, sizes[0], 100, 40),
        ("u0", "m1", "openai", INPUT_BANDS[0], 1, sizes[2], 100, 40),
        ("u1", "m1", "", 0, 1, 5, 1, 0),
        ("u1", "m1", "openai", INPUT_BANDS[0], 1, sizes[1], 100, 40),
        ("u1", "m1", "openai", 256_000, 1, sizes[3], 100, 40),
    ]


def test_a_batch_that_commits_late_is_not_missed(engine: Engine) -> None:
    """The trap of time windows: an earlier-stamped transaction commits after a later one."""
    early = some_events(20, hours_ago=3, seed=1)
    late = some_events(20, hours_ago=0, seed=2)
    with ingest_transaction(engine) as slow:
        store_batch(slow, early, get_settings())  # still uncommitted below
        ingest(engine, late)
        run_until_idle(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT sum(calls) FROM rollup_hourly")).scalar_one() == 20
    run_until_idle(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(calls) FROM rollup_hourly")).scalar_one() == 40
        assert_rollups_match_raw(conn)


def test_redelivered_and_repeated_events_are_counted_once(engine: Engine) -> None:
    rows = some_events(30, seed=4)
    assert ingest(engine, rows + rows[:5]).duplicates == 5
    again = ingest(engine, rows)  # the whole message redelivered: nothing stored, no batch left
    assert (again.stored, again.duplicates) == (0, 30)
    with engine.connect() as conn:
        assert pending_batches(conn) == 1
    run_until_idle(engine)
    ingest(engine, rows[:10] + some_events(5, seed=5))  # partly new
    run_until_idle(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(calls) FROM rollup_daily")).scalar_one() == 35
        assert_rollups_match_raw(conn)


def test_overlapping_runs_take_disjoint_batches_and_count_each_once(engine: Engine) -> None:
    for seed in range(6):
        ingest(engine, some_events(25, seed=seed))
    finished = threading.Event()

    def second_run() -> None:
        run_until_idle(engine, chunk_batches=2)
        finished.set()

    with engine.begin() as first:
        taken = run_chunk(first, chunk_batches=3)  # holds its batches and its upserts
        assert taken.batches == 3
        other = threading.Thread(target=second_run)
        other.start()
        # The second run skips the locked batches; it may wait on a shared rollup
        # row until this transaction ends, which is what keeps the sums right.
        finished.wait(timeout=2)
    other.join(timeout=30)
    assert finished.is_set()
    with engine.connect() as conn:
        assert pending_batches(conn) == 0
        assert conn.execute(text("SELECT sum(calls) FROM rollup_hourly")).scalar_one() == 150
        assert_rollups_match_raw(conn)


def test_a_run_that_dies_half_way_counts_nothing(engine: Engine) -> None:
    for seed in range(3):
        ingest(engine, some_events(40, seed=seed))
    with pytest.raises(Boom), engine.begin() as conn:
        assert run_chunk(conn, chunk_batches=10).batches == 3
        raise Boom  # after the upserts and the log delete, before the commit
    with engine.connect() as conn:
        assert rollup_rows(conn) == 0
        assert pending_batches(conn) == 3
    run_until_idle(engine)
    with engine.connect() as conn:
        assert_rollups_match_raw(conn)


CHILD_APPLICATION_NAME = "rollup-test-killed-child"
CHILD = f"""
import sys, time
from sqlalchemy import create_engine
from storage.rollups import run_chunk
engine = create_engine(sys.argv[1], connect_args={{"application_name": "{CHILD_APPLICATION_NAME}"}})
with engine.begin() as conn:
    run_chunk(conn, 100)
    print("ready", flush=True)
    time.sleep(600)
"""


def wait_for_session_end(engine: Engine, application_name: str) -> None:
    """PostgreSQL aborts a dead client's transaction once it sees the socket close."""
    deadline = time.monotonic() + CHILD_READY_TIMEOUT_S
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            alive = conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalar_one()
            if not alive:
                return
            conn.rollback()
            time.sleep(0.05)
    raise AssertionError(f"session {application_name} still alive")


def test_a_killed_rollup_process_counts_nothing(engine: Engine, database_url: str) -> None:
    for seed in range(3):
        ingest(engine, some_events(40, seed=seed))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with engine.connect() as conn:  # the child's work is done but not committed
            assert rollup_rows(conn) == 0
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=CHILD_READY_TIMEOUT_S)
    wait_for_session_end(engine, CHILD_APPLICATION_NAME)
    report = run_until_idle(engine)
    assert report.batches == 3
    with engine.connect() as conn:
        assert_rollups_match_raw(conn)


def test_a_late_event_updates_its_old_buckets(engine: Engine) -> None:
    ingest(engine, some_events(20, seed=8))
    run_until_idle(engine)
    old = recent_hour(24 * 40, minute=17)  # previous month, most likely
    ensure_months_for(engine, old, old + timedelta(hours=1))
    ingest(engine, [event(old, latency_ms=MAX_LATENCY), event(old, latency_ms=0, status="error")])
    run_until_idle(engine)
    with engine.connect() as conn:
        calls = conn.execute(
            text("SELECT calls FROM rollup_hourly WHERE bucket = :b"), {"b": recent_hour(24 * 40)}
        ).scalar_one()
        assert calls == 2
        assert_rollups_match_raw(conn)


def test_time_to_first_token_merges_into_existing_rows_by_every_path(engine: Engine) -> None:
    """One cell, run after run: unstreamed calls only (empty TTFT histogram, twice), then its first streamed calls,
    one more in a bucket it has, calls in new buckets, unstreamed calls again; each run equals the raw events."""
    hour = recent_hour(2, minute=5)
    runs = [
        [event(hour, latency_ms=300), event(hour, latency_ms=40)],
        [event(hour, latency_ms=70)],
        [event(hour, latency_ms=300, time_to_first_token_ms=120), event(hour, latency_ms=90, time_to_first_token_ms=0)],
        [event(hour, latency_ms=500, time_to_first_token_ms=120)],
        [event(hour, latency_ms=9_000, time_to_first_token_ms=t) for t in (7, 2_500, 2_500, 9_000)],
        [event(hour, latency_ms=1)],
    ]
    seen = []
    for run in runs:
        ingest(engine, run)
        run_until_idle(engine)
        with engine.connect() as conn:
            assert_rollups_match_raw(conn)
            seen.append(tuple(conn.execute(text("SELECT streamed_calls, ttft_min, ttft_max FROM rollup_daily")).one()))
    ttfts = [e[0]["time_to_first_token_ms"] for run in runs for e in run]
    streamed = [t for t in ttfts if t is not None]
    assert seen[0] == (0, None, None) and seen[-1] == (len(streamed), min(streamed), max(streamed))


# --- rebuild ------------------------------------------------------------------


def test_rebuild_gives_what_the_incremental_runs_gave(engine: Engine) -> None:
    for seed in range(8):
        ingest(engine, some_events(60, hours_ago=seed * 7, seed=seed))
        if seed % 3 == 0:
            run_until_idle(engine, chunk_batches=1)
    run_until_idle(engine)
    with engine.connect() as conn:
        incremental = dump_rollups(conn)
    now = datetime.now(UTC)
    report = rebuild(engine, now - timedelta(days=3), now + timedelta(hours=1))
    assert report.events == 480 and not report.skipped_days
    with engine.connect() as conn:
        assert dump_rollups(conn) == incremental
        assert_rollups_match_raw(conn)


def test_rebuild_leaves_pending_batches_to_the_next_run(engine: Engine) -> None:
    ingest(engine, some_events(30, seed=1))
    run_until_idle(engine)
    ingest(engine, some_events(30, seed=2))  # pending during the rebuild
    now = datetime.now(UTC)
    assert rebuild(engine, now - timedelta(days=1), now).events == 30
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(calls) FROM rollup_daily")).scalar_one() == 30
    run_until_idle(engine)
    with engine.connect() as conn:
        assert_rollups_match_raw(conn)


def test_rebuild_skips_days_whose_month_has_no_partition(engine: Engine) -> None:
    """Retention dropped the raw events; the rollups of those days are all that is left."""
    day = datetime(1999, 3, 4, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rollup_daily VALUES ('t1', :day, 'f1', '', 5, 0, 1, 1, 2, 50, 10, 10,"
                " ARRAY[1]::smallint[], ARRAY[5])"
            ),
            {"day": day},
        )
    report = rebuild(engine, day, day + timedelta(days=2))
    assert report.skipped_days == [day, day + timedelta(days=1)] and not report.days
    with engine.connect() as conn:
        assert conn.execute(text("SELECT calls FROM rollup_daily WHERE bucket = :d"), {"d": day}).scalar_one() == 5


def test_rebuild_refuses_naive_or_empty_ranges(engine: Engine) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError):
        rebuild(engine, now.replace(tzinfo=None), now.replace(tzinfo=None))
    with pytest.raises(ValueError):
        rebuild(engine, now, now)


# --- schema -------------------------------------------------------------------


def test_a_new_partition_gets_the_batch_brin_index(engine: Engine) -> None:
    month = Month(2061, 7)
    with engine.begin() as conn:
        ensure_months(conn, [month])
        indexdef = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = :t AND indexdef LIKE '%brin%'"),
            {"t": month.table_name},
        ).scalar_one()
        conn.execute(text(f"DROP TABLE {month.table_name}"))
    assert "(batch_id)" in indexdef and "autosummarize" in indexdef


def test_models_and_migrations_agree(database_url: str) -> None:
    command.check(Config(str(REPO_ROOT / "alembic.ini")))
