"""Timestamps as an attack on the partitions (issue 12, finding 3).

The past is bounded (EVENT_MAX_PAST_AGE_DAYS, or retention when later) by
``track()`` and by the worker's window, and one batch creates at most
INGEST_MAX_PARTITIONS_PER_BATCH months; rows of further missing months are
dead-lettered, the rest of the batch is stored, and the message is acknowledged.

The 1,000-month batches use months 1900-01 .. 1983-04, which no other test
uses; every partition a test creates is dropped afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import get_settings
from config.settings import Settings
from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from producer.client import Tracker
from schema.event import WIRE_FIELDS, WIRE_VERSION, InvalidEvent, check_timestamp, parse_wire_row
from storage import dead_letters
from storage.events import Row, WriteResult, store_batch
from storage.partitions import Month, PartitionPolicy, existing_months, list_partitions
from tasks.names import INGEST_WRITE_BATCH

UTC = UTC
DAY = timedelta(days=1)
FIRST_ATTACK_MONTH = Month(1900, 1)
ATTACK_MONTHS = 1000
ALL_PAST_DAYS = 200 * 366  # back to 1826: the window refuses none of the attack months
CAP = 4  # Settings' default INGEST_MAX_PARTITIONS_PER_BATCH
GOOD_EVENTS = 10
CAP_SETTING = "INGEST_MAX_PARTITIONS_PER_BATCH"
WORKER_TIMEOUT_S = 120
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def wire_row(tenant: str, moment: datetime, feature: str = "summarization") -> list[Any]:
    values = {
        "event_id": uuid.uuid4().hex, "tenant_id": tenant, "feature_name": feature, "user_id": "u-1",
        "model": "m", "input_tokens": 1, "output_tokens": 2, "tokens_used": None, "latency_ms": 5,
        "status": "success", "error_type": None, "timestamp_us": us(moment),
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "provider": None,
        "time_to_first_token_ms": None,
    }  # fmt: skip
    return [values[name] for name in WIRE_FIELDS]


def as_row(wire: list[Any]) -> Row:
    return parse_wire_row(WIRE_FIELDS, wire), dict(zip(WIRE_FIELDS, wire, strict=False))


def store(engine: Engine, rows: list[Row], policy: PartitionPolicy) -> WriteResult:
    with Session(engine) as session, session.begin():
        result = store_batch(session, rows, get_settings(), policy=policy)
        dead_letters.record(session, result.rejected)
    return result


def stored_count(engine: Engine, tenant: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()


def letters(engine: Engine, tenant: str) -> list[str]:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT reason FROM dead_letters WHERE payload LIKE '%' || :t || '%'"), {"t": tenant})
            .scalars()
            .all()
        )


def tables(engine: Engine) -> set[str]:
    """Every monthly table, attached or not."""
    with engine.connect() as conn:
        return {p.name for p in list_partitions(conn)}


def attack_rows(tenant: str, first: Month, count: int) -> list[list[Any]]:
    """One event in the middle of each of ``count`` months from ``first``."""
    return [wire_row(tenant, first.shift(i).start + timedelta(days=14)) for i in range(count)]


@pytest.fixture
def made_tables(engine: Engine) -> Iterator[set[str]]:
    """Monthly tables that appear during the test are dropped afterwards."""
    before = tables(engine)
    made: set[str] = set()
    yield made
    made |= tables(engine) - before
    with engine.begin() as conn:
        for name in sorted(made):
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))


# --- the past bound ---------------------------------------------------------------------


def test_track_refuses_timestamps_older_than_the_past_bound_and_accepts_one_inside() -> None:
    tracker = Tracker(
        Settings(celery_broker_url=UNREACHABLE_BROKER, producer_spool_dir="", event_max_past_age_days=30,
                 producer_flush_interval_ms=3_600_000, producer_exit_flush_timeout_s=0)
    )  # fmt: skip
    event = {"tenant_id": "t", "feature_name": "summarization", "user_id": "u"}
    try:
        for moment in (datetime(1, 1, 1, tzinfo=UTC), datetime.now(UTC) - 30 * DAY - timedelta(seconds=1)):
            with pytest.raises(ValueError, match=r"^timestamp .* too old: .*\(EVENT_MAX_PAST_AGE_DAYS\)"):
                tracker.track(**event, timestamp=moment)
        assert tracker.stats().buffered == 0
        assert tracker.track(**event, timestamp=datetime.now(UTC) - 30 * DAY + timedelta(seconds=5))
        assert tracker.stats().buffered == 1
    finally:
        tracker.close(timeout=0)


def test_retention_bounds_the_past_when_it_is_later() -> None:
    now = datetime.now(UTC)
    start_of_kept = Month.of(now).shift(-1).start
    with pytest.raises(InvalidEvent, match=r"older than the retention window.*\(PARTITION_RETENTION_MONTHS\)"):
        check_timestamp(start_of_kept - timedelta(microseconds=1), 0, max_past_age_days=730, retention_months=1)
    assert check_timestamp(start_of_kept, 0, max_past_age_days=730, retention_months=1) == us(start_of_kept)
    # Without a past bound (a caller that does not pass one), year 1 is a plain timestamp.
    assert check_timestamp(datetime(1, 1, 1, tzinfo=UTC), 0) < 0


def test_the_worker_dead_letters_too_old_rows_and_stores_their_batch_mates(engine: Engine, tenant: str) -> None:
    from tasks.ingest import write_batch

    bound_days = get_settings().event_max_past_age_days
    now = datetime.now(UTC)
    good = [wire_row(tenant, now - i * DAY) for i in range(3)] + [wire_row(tenant, now - (bound_days - 1) * DAY)]
    year_one = wire_row(tenant, datetime(1, 1, 1, tzinfo=UTC))
    just_older = wire_row(tenant, now - bound_days * DAY - timedelta(minutes=5))
    message = {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": [year_one, *good, just_older]}
    outcome = write_batch.apply(args=[message]).get()
    assert outcome == {"stored": 4, "duplicates": 0, "dead_lettered": 2}
    assert stored_count(engine, tenant) == 4
    reasons = letters(engine, tenant)
    assert len(reasons) == 2
    assert all("too old" in r and "(EVENT_MAX_PAST_AGE_DAYS)" in r for r in reasons), reasons
    assert any(r.startswith("timestamp 0001-01-01T00:00:00+00:00") for r in reasons), reasons


def test_the_http_api_refuses_too_old_timestamps_per_event(engine: Engine, database_url: str) -> None:
    """POST /v1/events goes through track(): the refusal comes back in the event's result."""
    from fastapi.testclient import TestClient

    from storage.api_keys import create_key
    from web.app import app

    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="past-bound", tenant_id=f"abuse-http-{uuid.uuid4().hex[:8]}")
    bound_days = get_settings().event_max_past_age_days
    now = datetime.now(UTC)
    stamps = [datetime(1, 1, 1, tzinfo=UTC), now - bound_days * DAY - timedelta(minutes=5), now - DAY]
    events = [{"feature_name": "f", "user_id": "u", "timestamp": stamp.isoformat()} for stamp in stamps]
    with TestClient(app) as client:
        response = client.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 207, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["rejected", "rejected", "accepted"]
    for result in results[:2]:
        assert result["error"].startswith("timestamp ") and "(EVENT_MAX_PAST_AGE_DAYS)" in result["error"]


# --- the partition cap ------------------------------------------------------------------


def test_a_batch_over_1000_months_creates_the_cap_and_dead_letters_the_rest(
    engine: Engine, tenant: str, made_tables: set[str]
) -> None:
    policy = PartitionPolicy(max_past_age_days=ALL_PAST_DAYS)
    attack = [as_row(w) for w in attack_rows(tenant, FIRST_ATTACK_MONTH, ATTACK_MONTHS)]
    # Two more rows in 1950-06 and one more in 1960-01: the months with the most rows go first.
    busiest, second = Month(1950, 6), Month(1960, 1)
    extra = [as_row(wire_row(tenant, busiest.start + timedelta(days=d))) for d in (1, 2)]
    extra.append(as_row(wire_row(tenant, second.start + timedelta(days=3))))
    good = [as_row(wire_row(tenant, datetime.now(UTC) - timedelta(minutes=i))) for i in range(GOOD_EVENTS)]
    attack_months = {FIRST_ATTACK_MONTH.shift(i) for i in range(ATTACK_MONTHS)}
    with engine.connect() as conn:
        assert not attack_months & existing_months(conn)
    before = tables(engine)

    started = time.monotonic()
    result = store(engine, attack[:500] + good + extra + attack[500:], policy)
    elapsed = time.monotonic() - started

    created = tables(engine) - before
    # Ties broken by the earliest month: 1900-01 and 1900-02 after the two busiest.
    expected = {m.table_name for m in (busiest, second, Month(1900, 1), Month(1900, 2))}
    assert created == expected
    assert result.stored == GOOD_EVENTS + 3 + 2 + 1 + 1  # good, 1950-06 x3, 1960-01 x2, 1900-01, 1900-02
    assert len(result.rejected) == ATTACK_MONTHS - CAP
    assert all(CAP_SETTING in r.reason and "has no partition" in r.reason for r in result.rejected)
    assert stored_count(engine, tenant) == result.stored
    assert len(letters(engine, tenant)) == ATTACK_MONTHS - CAP
    print(f"1,000-month batch stored {result.stored}, dead-lettered {len(result.rejected)} in {elapsed:.2f} s")


def test_with_the_default_past_bound_the_window_refuses_most_of_the_1000_months(
    engine: Engine, tenant: str, made_tables: set[str]
) -> None:
    """Months ending with the current one: only the last ~24 are inside the window."""
    policy = PartitionPolicy()  # Settings' defaults: 730 days, cap 4
    now = datetime.now(UTC)
    first = Month.of(now).shift(-(ATTACK_MONTHS - 1))
    wires = attack_rows(tenant, first, ATTACK_MONTHS)
    rows = [as_row(w) for w in wires]
    earliest = now - timedelta(days=policy.max_past_age_days)
    inside = [m for m, _ in rows if m["timestamp"] >= earliest and m["timestamp"] <= now]
    with engine.connect() as conn:
        existing = existing_months(conn)
    inside_missing = {Month.of(m["timestamp"]) for m in inside} - existing

    result = store(engine, rows, policy)

    by_window = [r for r in result.rejected if "(EVENT_MAX_PAST_AGE_DAYS)" in r.reason]
    by_cap = [r for r in result.rejected if CAP_SETTING in r.reason]
    # The row of the current month may be ahead of now (mid-month): the future bound refuses it.
    future = [r for r in result.rejected if "(EVENT_MAX_FUTURE_SKEW_S)" in r.reason]
    assert len(by_window) == ATTACK_MONTHS - len(inside) - len(future)
    assert len(by_window) > 0.9 * ATTACK_MONTHS
    assert len(by_cap) == max(0, len(inside_missing) - CAP)
    assert len(by_window) + len(by_cap) + len(future) == len(result.rejected)
    assert result.stored == len(inside) - len(by_cap)
    with engine.connect() as conn:
        assert len(existing_months(conn) - existing) == min(CAP, len(inside_missing))


def test_a_real_worker_acknowledges_a_1000_month_message_without_retrying_it(
    engine: Engine, tenant: str, made_tables: set[str], tmp_path: Path
) -> None:
    url = get_settings().celery_broker_url
    queue = f"months-{uuid.uuid4().hex[:8]}"
    wires = attack_rows(tenant, FIRST_ATTACK_MONTH, ATTACK_MONTHS)
    now = datetime.now(UTC)
    wires[500:500] = [wire_row(tenant, now - timedelta(minutes=i)) for i in range(GOOD_EVENTS)]
    message = {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": wires}
    before = tables(engine)
    env = {"EVENT_MAX_PAST_AGE_DAYS": str(ALL_PAST_DAYS)}
    with celery_worker(url, queue, log_dir=tmp_path, env=env, stop_timeout=2) as worker, Connection(url) as conn:
        from tasks.app import app

        app.send_task(INGEST_WRITE_BATCH, args=[message], queue=queue, connection=conn)
        [outcome] = wait_for(lambda: worker.results() or None, WORKER_TIMEOUT_S, lambda: describe(worker))
        assert outcome == {"stored": GOOD_EVENTS + CAP, "duplicates": 0, "dead_lettered": ATTACK_MONTHS - CAP}
        time.sleep(1)  # a retry would have been logged by now
        assert len(worker.results()) == 1 and "retry" not in worker.log().lower(), describe(worker)
    # Acknowledged: with the worker gone, an unacknowledged message would be back in the queue.
    with Connection(url) as conn, conn.channel() as channel:
        _, ready, _ = channel.queue_declare(queue=queue, passive=True)
        channel.queue_delete(queue=queue)
    assert ready == 0
    assert len(tables(engine) - before) == CAP
    assert stored_count(engine, tenant) == GOOD_EVENTS + CAP
    reasons = letters(engine, tenant)
    assert len(reasons) == ATTACK_MONTHS - CAP and all(CAP_SETTING in r for r in reasons)
