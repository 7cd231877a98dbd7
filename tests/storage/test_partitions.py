"""Partition lifecycle against a real PostgreSQL: boundaries, creation on demand,
concurrent creators, retention, pruning of the dashboard query.

Tests that need a "now" far from the real one pass it explicitly, on months
(2001–2019) and far-future ones (2045–2047) that no other test uses; the
real current month is only ever read. Every test filters by its own event ids or
months, so the shared session database may hold other tests' rows.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from bench.partitions import PARTITIONED_TABLE, dashboard_sql, scanned_relations
from config.settings import Settings, get_settings
from producer.client import Tracker
from schema.event import WIRE_FIELDS, WIRE_VERSION, InvalidEvent, check_timestamp, parse_wire_row
from storage.db import make_session_factory
from storage.events import Row
from storage.flush import Flush, FlushResult, commit_flush
from storage.partitions import (
    AcceptWindow,
    Month,
    PartitionLockTimeout,
    PartitionPolicy,
    ensure_months,
    ensure_partitions,
    existing_months,
    list_partitions,
    months_ahead,
    plan_retention,
    run_retention,
)

UTC = UTC
ALL_PAST_DAYS = 100 * 366  # wider than any month these tests use
POLICY = PartitionPolicy(max_past_age_days=ALL_PAST_DAYS)  # retention off: every past month is accepted
TENANT = "tenant-partitions"
CHILD_TIMEOUT_S = 60
INGEST_BATCH = 100


def wire_row(timestamp: datetime, **overrides: Any) -> list[Any]:
    delta = timestamp - datetime(1970, 1, 1, tzinfo=UTC)
    values = {
        "event_id": uuid.uuid4().hex,
        "tenant_id": TENANT,
        "feature_name": "summarization",
        "user_id": "u-1",
        "model": "m",
        "input_tokens": 10,
        "output_tokens": 5,
        "tokens_used": None,
        "latency_ms": 100,
        "status": "success",
        "error_type": None,
        "timestamp_us": (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "provider": None,
        "time_to_first_token_ms": None,
    }
    values.update(overrides)
    return [values[name] for name in WIRE_FIELDS]


def event(timestamp: datetime, **overrides: Any) -> Row:
    """A row as the worker hands it to store_batch: (column mapping, wire payload)."""
    row = wire_row(timestamp, **overrides)
    return parse_wire_row(WIRE_FIELDS, row), dict(zip(WIRE_FIELDS, row, strict=False))


def store(engine: Engine, rows: list[Row], policy: PartitionPolicy = POLICY) -> FlushResult:
    """What the ingest task does: rows and dead letters in one transaction (storage.flush)."""
    return commit_flush(make_session_factory(engine), Flush(rows=rows), get_settings(), policy=policy)


def partition_of(engine: Engine, rows: list[Row]) -> dict[uuid.UUID, str]:
    ids = [mapping["event_id"] for mapping, _ in rows]
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT event_id, tableoid::regclass::text FROM analytics_events WHERE event_id = ANY(:ids)"),
            {"ids": ids},
        )
        return {event_id: table for event_id, table in found}


def drop_months(engine: Engine, months: list[Month]) -> None:
    with engine.begin() as conn:
        for month in months:
            conn.execute(text(f'DROP TABLE IF EXISTS "{month.table_name}"'))


def missing_indexes(conn: Connection, table: str) -> list[str]:
    """Indexes of the parent that have no attached counterpart on partition ``table``."""
    return (
        conn.execute(
            text(
                "SELECT p.indexrelid::regclass::text FROM pg_index p"
                " WHERE p.indrelid = 'analytics_events'::regclass AND NOT EXISTS ("
                "  SELECT 1 FROM pg_inherits h JOIN pg_index c ON c.indexrelid = h.inhrelid"
                "  WHERE h.inhparent = p.indexrelid AND c.indrelid = to_regclass(:table))"
            ),
            {"table": table},
        )
        .scalars()
        .all()
    )


def month_range(first: Month, count: int) -> list[Month]:
    return [first.shift(i) for i in range(count)]


def attached_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {p.name for p in list_partitions(conn) if p.attached}


@pytest.fixture
def scratch_months(engine: Engine) -> Iterator[list[Month]]:
    """Months a test creates; dropped afterwards, whatever state they are in."""
    months: list[Month] = []
    yield months
    drop_months(engine, months)


@pytest.fixture
def wide_past_bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's settings (the ingest task's) accept every month these tests use."""
    monkeypatch.setenv("EVENT_MAX_PAST_AGE_DAYS", str(ALL_PAST_DAYS))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- months and windows ------------------------------------------------------------


def test_month_arithmetic_and_utc_conversion() -> None:
    assert Month(2026, 12).shift(1) == Month(2027, 1)
    assert Month(2027, 1).shift(-13) == Month(2025, 12)
    assert Month.of(datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == Month(2026, 12)
    west = timezone(timedelta(hours=-1))
    assert Month.of(datetime(2026, 12, 31, 23, 30, tzinfo=west)) == Month(2027, 1)
    assert Month.parse("2026-03") == Month(2026, 3)
    assert Month.from_table_name("analytics_events_2026_03") == Month(2026, 3)
    assert Month.from_table_name("analytics_events_default") is None
    assert months_ahead(datetime(2026, 11, 30, 23, 0, tzinfo=UTC), 3) == month_range(Month(2026, 11), 4)
    with pytest.raises(ValueError, match="YYYY-MM"):
        Month.parse("2026/03")


def test_accept_window_bounds() -> None:
    now = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
    window = PartitionPolicy(retention_months=3, max_future_skew=timedelta(hours=1)).window(now)
    assert window == AcceptWindow(oldest=datetime(2026, 2, 1, tzinfo=UTC), newest=now + timedelta(hours=1))
    assert window.refusal(datetime(2026, 2, 1, tzinfo=UTC)) is None
    assert window.refusal(now + timedelta(hours=1)) is None
    too_old = window.refusal(datetime(2026, 1, 31, 23, 59, tzinfo=UTC))
    assert too_old is not None and "older than the retention window" in too_old
    too_new = window.refusal(now + timedelta(hours=1, microseconds=1))
    assert too_new is not None and "too far in the future" in too_new
    # Retention off: EVENT_MAX_PAST_AGE_DAYS alone bounds the past.
    default = PartitionPolicy().window(now)
    assert (default.oldest, default.oldest_setting) == (now - timedelta(days=730), "EVENT_MAX_PAST_AGE_DAYS")
    assert default.refusal(now - timedelta(days=730)) is None
    past = default.refusal(now - timedelta(days=730, microseconds=1))
    assert past is not None and "too old" in past and "EVENT_MAX_PAST_AGE_DAYS" in past
    # Whichever bound is later wins: a short past bound inside a long retention.
    short = PartitionPolicy(retention_months=12, max_past_age_days=10).window(now)
    assert (short.oldest, short.oldest_setting) == (now - timedelta(days=10), "EVENT_MAX_PAST_AGE_DAYS")
    assert PartitionPolicy() == PartitionPolicy.from_settings(Settings.model_construct())
    with pytest.raises(ValueError, match="retention_months"):
        PartitionPolicy(retention_months=-1)


# --- the write path ------------------------------------------------------------------


def test_year_boundary_events_land_in_their_months(engine: Engine, scratch_months: list[Month]) -> None:
    scratch_months += [Month(2013, 12), Month(2014, 1)]
    ensure_partitions(engine, scratch_months, POLICY)
    last_of_year = event(datetime(2013, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
    first_of_year = event(datetime(2014, 1, 1, 0, 0, 0, tzinfo=UTC))
    result = store(engine, [last_of_year, first_of_year])
    assert (result.stored, result.rejected) == (2, [])
    assert partition_of(engine, [last_of_year, first_of_year]) == {
        last_of_year[0]["event_id"]: "analytics_events_2013_12",
        first_of_year[0]["event_id"]: "analytics_events_2014_01",
    }


def test_event_of_a_month_without_partition_is_stored(engine: Engine, scratch_months: list[Month]) -> None:
    scratch_months += [Month(2011, 12), Month(2012, 1), Month(2012, 7)]
    with engine.connect() as conn:
        assert not set(scratch_months) & existing_months(conn)
    rows = [
        event(datetime(2011, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        event(datetime(2012, 1, 1, tzinfo=UTC)),
        # Jan 1 00:30 in UTC+1 is still Dec 31 in UTC: partitions are UTC months.
        event(datetime(2012, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))),
        event(datetime(2012, 7, 15, 12, 0, tzinfo=UTC)),
    ]
    result = store(engine, rows)
    assert (result.stored, result.rejected) == (4, [])
    assert [partition_of(engine, [row])[row[0]["event_id"]] for row in rows] == [
        "analytics_events_2011_12",
        "analytics_events_2012_01",
        "analytics_events_2011_12",
        "analytics_events_2012_07",
    ]
    with engine.connect() as conn:
        created = [p for p in list_partitions(conn) if p.month in scratch_months]
        assert len(created) == 3 and all(p.attached for p in created)
        assert [missing_indexes(conn, p.name) for p in created] == [[], [], []]


def test_ingest_task_stores_an_event_whose_month_has_no_partition(
    engine: Engine, scratch_months: list[Month], wide_past_bound: None
) -> None:
    from tasks.ingest import write_batch

    scratch_months.append(Month(2010, 3))
    row = wire_row(datetime(2010, 3, 3, 3, 3, 3, tzinfo=UTC))
    message = {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": [row]}
    outcome = write_batch.apply(args=[message]).get()
    assert outcome == {"stored": 1, "duplicates": 0, "dead_lettered": 0}
    with engine.connect() as conn:
        table = conn.execute(
            text("SELECT tableoid::regclass::text FROM analytics_events WHERE event_id = :id"),
            {"id": uuid.UUID(row[0])},
        ).scalar_one()
    assert table == "analytics_events_2010_03"


def test_events_outside_the_window_are_dead_lettered_with_their_reason(engine: Engine) -> None:
    policy = PartitionPolicy(retention_months=2, max_future_skew=timedelta(hours=1))
    now = datetime.now(UTC)
    inside = event(now)
    future = event(now + timedelta(hours=2))
    old = event(Month.of(now).shift(-3).start)
    result = store(engine, [inside, future, old], policy)
    assert result.stored == 1
    reasons = {r.payload["event_id"]: r.reason for r in result.rejected}
    assert set(reasons) == {future[1]["event_id"], old[1]["event_id"]}
    assert "too far in the future" in reasons[future[1]["event_id"]]
    assert "older than the retention window" in reasons[old[1]["event_id"]]
    assert set(partition_of(engine, [inside, future, old])) == {inside[0]["event_id"]}
    with engine.connect() as conn:
        stored_reasons = (
            conn.execute(
                text(
                    "SELECT reason FROM dead_letters"
                    " WHERE payload LIKE '%' || :a || '%' OR payload LIKE '%' || :b || '%'"
                ),
                {"a": future[1]["event_id"], "b": old[1]["event_id"]},
            )
            .scalars()
            .all()
        )
    assert sorted(stored_reasons) == sorted(reasons.values())


def test_a_month_kept_detached_is_not_recreated_and_its_events_are_dead_lettered(
    engine: Engine, scratch_months: list[Month]
) -> None:
    scratch_months += [Month(2008, 1), Month(2008, 2)]
    ensure_partitions(engine, scratch_months, POLICY)
    store(engine, [event(datetime(2008, 1, 5, tzinfo=UTC))])
    keep = PartitionPolicy(retention_months=1, keep_detached=True)
    report = run_retention(engine, keep, datetime(2008, 3, 10, tzinfo=UTC))
    assert "analytics_events_2008_01" in report.detached and not report.dropped
    assert ensure_partitions(engine, [Month(2008, 1)], POLICY) == []

    late = event(datetime(2008, 1, 20, tzinfo=UTC))
    result = store(engine, [late])
    assert result.stored == 0
    assert len(result.rejected) == 1 and "no partition" in result.rejected[0].reason
    with engine.connect() as conn:
        kept_rows = conn.execute(text('SELECT count(*) FROM "analytics_events_2008_01"')).scalar()
    assert kept_rows == 1  # detached, not dropped: the archive keeps its rows


def test_track_refuses_a_far_future_timestamp() -> None:
    tracker = Tracker(Settings(event_max_future_skew_s=60, producer_spool_dir=""))
    with pytest.raises(ValueError, match=r"timestamp .* ahead of this clock"):
        tracker.track(
            tenant_id=TENANT,
            feature_name="summarization",
            user_id="u-1",
            timestamp=datetime.now(UTC) + timedelta(hours=1),
        )
    assert tracker.stats().buffered == 0
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert check_timestamp(soon, 60 * 1_000_000) > 0
    with pytest.raises(InvalidEvent):
        check_timestamp(soon, 0)


# --- creating concurrently -----------------------------------------------------------


def _ensure_in_child(url: str, months: list[Month], barrier: Any, results: Any) -> None:
    engine = create_engine(url)
    try:
        barrier.wait(timeout=CHILD_TIMEOUT_S)
        created = ensure_partitions(engine, months, PartitionPolicy())
        results.put([str(m) for m in created])
    finally:
        engine.dispose()


def test_two_processes_ensuring_the_same_months_make_one_set(
    engine: Engine, database_url: str, scratch_months: list[Month]
) -> None:
    scratch_months += month_range(Month(2045, 1), 6)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [
        ctx.Process(target=_ensure_in_child, args=(database_url, scratch_months, barrier, results)) for _ in range(2)
    ]
    for child in children:
        child.start()
    created = [results.get(timeout=CHILD_TIMEOUT_S) for _ in children]
    for child in children:
        child.join(CHILD_TIMEOUT_S)
        assert child.exitcode == 0
    assert sorted(created[0] + created[1]) == [str(m) for m in scratch_months]
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT c.relname, count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'analytics_events'::regclass AND c.relname = ANY(:names)"
                " GROUP BY c.relname"
            ),
            {"names": [m.table_name for m in scratch_months]},
        ).all()
    assert sorted(counts) == [(m.table_name, 1) for m in scratch_months]


# --- retention -----------------------------------------------------------------------


def test_retention_dry_run_then_real_run_remove_exactly_the_expired_months(
    engine: Engine, scratch_months: list[Month]
) -> None:
    scratch_months += month_range(Month(2004, 1), 21)  # 2004-01 .. 2005-09
    ensure_partitions(engine, scratch_months, POLICY)
    store(engine, [event(datetime(2004, 6, 1, tzinfo=UTC)), event(datetime(2005, 6, 1, tzinfo=UTC))])
    now = datetime(2005, 7, 10, tzinfo=UTC)
    policy = PartitionPolicy(retention_months=6)  # keeps 2005-01 and later
    before = attached_names(engine)
    expected = sorted(name for name in before if (m := Month.from_table_name(name)) is not None and m < Month(2005, 1))
    assert {m.table_name for m in month_range(Month(2004, 1), 12)} <= set(expected)

    dry = run_retention(engine, policy, now, dry_run=True)
    assert dry.plan.oldest_kept == Month(2005, 1)
    assert [p.name for p in dry.plan.detach] == expected
    assert [p.name for p in dry.plan.drop] == expected
    assert (dry.detached, dry.dropped) == ([], [])
    assert attached_names(engine) == before

    real = run_retention(engine, policy, now)
    assert real.detached == expected and real.dropped == expected
    with engine.connect() as conn:
        remaining = {p.name for p in list_partitions(conn)}
    assert not remaining & set(expected)
    assert remaining >= before - set(expected)
    assert Month.of(datetime.now(UTC)).table_name in remaining

    again = run_retention(engine, policy, now)
    assert (again.detached, again.dropped, again.plan.detach) == ([], [], ())


def test_retention_never_touches_the_current_or_future_months(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.connect() as conn:
        plan = plan_retention(conn, now, PartitionPolicy(retention_months=1))
    current = Month.of(now)
    assert all(p.month is not None and p.month < current.shift(-1) for p in plan.detach + plan.drop)
    assert run_retention(engine, PartitionPolicy(), now).plan.oldest_kept is None  # off by default


def test_ingest_continues_while_partitions_are_created_and_retired(engine: Engine, scratch_months: list[Month]) -> None:
    old = month_range(Month(2001, 1), 6)
    future = month_range(Month(2047, 1), 12)
    late = month_range(Month(2016, 1), 12)  # no partition yet: created by the writers
    scratch_months += old + future + late
    ensure_partitions(engine, old, POLICY)
    store(engine, [event(m.start + timedelta(days=3)) for m in old])

    stop = threading.Event()
    sent: list[Row] = []
    errors: list[BaseException] = []

    def ingest() -> None:
        batch_no = 0
        try:
            while not stop.is_set() or batch_no < len(late):
                now = datetime.now(UTC)
                rows = [event(now - timedelta(microseconds=i)) for i in range(INGEST_BATCH)]
                if batch_no < len(late):
                    rows.append(event(late[batch_no].start + timedelta(hours=batch_no)))
                result = store(engine, rows)
                if result.rejected or result.stored != len(rows):
                    raise AssertionError(f"batch {batch_no}: {result}")
                sent.extend(rows)
                batch_no += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    try:
        created = ensure_partitions(engine, future, POLICY)
        report = run_retention(engine, PartitionPolicy(retention_months=3), datetime(2002, 1, 15, tzinfo=UTC))
    finally:
        stop.set()
        writer.join(CHILD_TIMEOUT_S)
    assert not errors, errors
    assert created == future
    assert {m.table_name for m in old} <= set(report.dropped)
    assert all((m := Month.from_table_name(n)) and m < Month(2001, 10) for n in report.dropped)
    stored = partition_of(engine, sent)
    assert len(stored) == len(sent) > len(late)
    assert attached_names(engine) >= {m.table_name for m in late + future}


# --- the dashboard query ---------------------------------------------------------------


def test_dashboard_query_scans_only_the_two_months_it_asks_for(engine: Engine, scratch_months: list[Month]) -> None:
    scratch_months += month_range(Month(2019, 1), 6)
    ensure_partitions(engine, scratch_months, POLICY)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    mine = {"tenant_id": tenant}
    rows = [
        event(datetime(2019, 3, 1, tzinfo=UTC), **mine, latency_ms=100, input_tokens=10, output_tokens=0),
        event(
            datetime(2019, 4, 30, 23, 59, 59, tzinfo=UTC),
            **mine,
            latency_ms=300,
            input_tokens=30,
            output_tokens=0,
        ),
        event(datetime(2019, 4, 2, tzinfo=UTC), **mine, feature_name="smart_search", latency_ms=50),
        event(datetime(2019, 4, 3, tzinfo=UTC), **mine, status="error", error_type="timeout"),
        event(datetime(2019, 5, 1, tzinfo=UTC), **mine),  # outside the range
        event(datetime(2019, 3, 5, tzinfo=UTC), tenant_id="someone-else"),
    ]
    store(engine, rows)
    start, end = datetime(2019, 3, 1, tzinfo=UTC), datetime(2019, 5, 1, tzinfo=UTC)
    params = {"tenant_id": tenant, "start": start, "end": end}
    with engine.connect() as conn:
        scanned = scanned_relations(conn, PARTITIONED_TABLE, params)
        answer = conn.execute(dashboard_sql(PARTITIONED_TABLE), params).all()
    assert scanned == ["analytics_events_2019_03", "analytics_events_2019_04"]
    assert [(r.feature_name, r.calls, r.tokens, float(r.avg_latency_ms)) for r in answer] == [
        ("smart_search", 1, 15, 50.0),
        ("summarization", 2, 40, 200.0),
    ]


# --- migrations ----------------------------------------------------------------------


def test_alembic_autogenerate_leaves_partitions_alone(engine: Engine, scratch_months: list[Month]) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.util import AutogenerateDiffsDetected

    from models import Base

    scratch_months += [Month(2003, 1), Month(2003, 2)]
    ensure_partitions(engine, scratch_months, POLICY)
    run_retention(  # one attached and one kept detached: neither may be dropped
        engine, PartitionPolicy(retention_months=1, keep_detached=True), datetime(2003, 3, 5, tzinfo=UTC)
    )
    with engine.connect() as conn:
        partition_names = {p.name for p in list_partitions(conn)}
    assert {m.table_name for m in scratch_months} <= partition_names

    # Without the hook autogenerate would drop every partition: the test can fail.
    with engine.connect() as conn:
        bare = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert {d[1].name for d in bare if d[0] == "remove_table"} >= partition_names

    # With migrations/env.py's include_object no partition shows up in the diff.
    config = Config(str(Path(__file__).resolve().parents[2] / "alembic.ini"))
    try:
        command.check(config)
        diffs = ""
    except AutogenerateDiffsDetected as exc:  # other tables' drift is not this test's business
        diffs = str(exc)
    assert not [name for name in partition_names if name in diffs], diffs


# --- locks -------------------------------------------------------------------------


def test_partition_ddl_backs_off_while_the_table_is_locked_then_succeeds(
    engine: Engine, scratch_months: list[Month]
) -> None:
    scratch_months.append(Month(2046, 6))
    policy = PartitionPolicy(lock_timeout_ms=100, lock_retries=8)
    holder = engine.connect()
    holder.begin()
    holder.execute(text("LOCK TABLE analytics_events IN SHARE UPDATE EXCLUSIVE MODE"))
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        assert ensure_partitions(engine, scratch_months, policy) == scratch_months
    finally:
        release.join()
        holder.close()


def test_partition_ddl_gives_up_with_a_clear_error_when_the_lock_never_comes(
    engine: Engine, scratch_months: list[Month]
) -> None:
    scratch_months.append(Month(2046, 7))
    policy = PartitionPolicy(lock_timeout_ms=50, lock_retries=1)
    with engine.connect() as holder:
        holder.begin()
        holder.execute(text("LOCK TABLE analytics_events IN SHARE UPDATE EXCLUSIVE MODE"))
        with pytest.raises(PartitionLockTimeout, match="stayed locked through 2 attempts of 50 ms"):
            ensure_partitions(engine, scratch_months, policy)
        holder.rollback()
    with engine.connect() as conn:
        assert Month(2046, 7) not in existing_months(conn)


def test_retention_finishes_an_interrupted_concurrent_detach(engine: Engine, scratch_months: list[Month]) -> None:
    scratch_months += [Month(2002, 1), Month(2002, 2)]
    ensure_partitions(engine, scratch_months, POLICY)
    reader = engine.connect()
    reader.begin()
    reader.execute(text("SELECT count(*) FROM analytics_events"))  # a query DETACH must wait for
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as detacher:
        detacher.execute(text("SET lock_timeout = '200ms'"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            detacher.execute(
                text("ALTER TABLE analytics_events DETACH PARTITION analytics_events_2002_01 CONCURRENTLY")
            )
        detacher.execute(text("RESET lock_timeout"))
    reader.rollback()
    reader.close()
    with engine.connect() as conn:
        state = {p.name: p.detach_pending for p in list_partitions(conn) if p.month in scratch_months}
    assert state == {"analytics_events_2002_01": True, "analytics_events_2002_02": False}

    report = run_retention(engine, PartitionPolicy(retention_months=1), datetime(2002, 3, 9, tzinfo=UTC))
    assert {"analytics_events_2002_01"} <= set(report.detached) <= set(report.dropped)
    with engine.connect() as conn:
        left = {p.name for p in list_partitions(conn)}
    assert "analytics_events_2002_01" not in left and "analytics_events_2002_02" in left


def test_ensure_months_in_a_callers_transaction_leaves_its_lock_timeout_alone(
    engine: Engine, scratch_months: list[Month]
) -> None:
    scratch_months.append(Month(2046, 8))
    with engine.begin() as conn:  # a migration's transaction, say
        conn.execute(text("SET LOCAL lock_timeout = '7s'"))
        assert ensure_months(conn, scratch_months, lock_timeout_ms=100) == scratch_months
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
