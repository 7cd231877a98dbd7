"""Bad input at every door: ``track()``, ``POST /v1/events`` and straight on the queue.

Each bad event gets a clear error (client, HTTP) or a dead letter with its
reason (queue); the good events beside it land exactly once; no worker dies.
The end-to-end tests use the machine's brokers with a queue of their own and
the test database; the hypothesis tests need only the database, or nothing.
The catalogue of bad rows, messages and raw bodies is devtools/faults/malformed.py,
shared with the ``bad_input`` fault scenario.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import Settings, get_settings
from devtools.faults import malformed
from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from producer import Tracker
from schema.event import MAX_INT32, WIRE_FIELDS, InvalidEvent, parse_wire_row
from schema.message import decode_message
from storage import dead_letters
from storage.dead_letters import Rejected
from storage.events import store_batch
from storage.writers import WRITERS
from tasks.broker import ingest_queue
from tasks.names import INGEST_WRITE_BATCH

BROKERS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
    "redis": "redis://127.0.0.1:6379/7",
}
REDIS_URL = BROKERS["redis"]  # the Redis database of broker_url (conftest) in this module
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1
AT_THE_CAP = Settings().ingest_max_rows_per_message  # the largest message the worker takes: stored
OVER_THE_CAP = AT_THE_CAP + 1  # one more row: dead-lettered whole, unparsed
SETTLE_S = 60


def stored_users(engine: Engine, tenant: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(
            text("SELECT user_id, count(*) FROM analytics_events WHERE tenant_id = :t GROUP BY user_id"),
            {"t": tenant},
        ).all())  # fmt: skip


def letters(engine: Engine, marker: str) -> list[tuple[str, str, str]]:
    """(source, reason, payload) of the dead letters whose payload holds ``marker``."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            text("SELECT source, reason, payload FROM dead_letters WHERE payload LIKE :m"), {"m": f"%{marker}%"}
        ).all()]  # fmt: skip


# --- the client ---------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "feature_name": "summarization",
    "model": "gpt-4o-mini",
    "input_tokens": 100,
    "output_tokens": 20,
    "latency_ms": 640.5,
    "status": "success",
}
FAR_FUTURE = datetime.now(UTC) + timedelta(days=3650)

# (name, keyword overrides, the error it must raise, a word its message must contain)
CLIENT_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("extra field", {"cost_usd": 0.3}, TypeError, "cost_usd"),
    ("tokens as a string", {"input_tokens": "100"}, TypeError, "input_tokens"),
    ("tokens as a float", {"output_tokens": 2.5}, TypeError, "output_tokens"),
    ("negative tokens", {"input_tokens": -1}, ValueError, "input_tokens"),
    ("huge tokens", {"output_tokens": 10**30}, ValueError, "output_tokens"),
    ("negative latency", {"latency_ms": -0.9}, ValueError, "latency_ms"),
    ("huge latency", {"latency_ms": 1e30}, ValueError, "latency_ms"),
    ("NaN latency", {"latency_ms": math.nan}, ValueError, "latency_ms"),
    ("over-long feature", {"feature_name": "f" * 65}, ValueError, "feature_name"),
    ("over-long model", {"model": "m" * 65}, ValueError, "model"),
    ("NUL byte", {"model": "gpt\x00"}, ValueError, "model"),
    ("invalid UTF-8 (lone surrogate)", {"feature_name": "r\udce9sum\udce9"}, ValueError, "feature_name"),
    ("bytes for a string", {"feature_name": b"summarization"}, TypeError, "feature_name"),
    ("naive timestamp", {"timestamp": datetime(2026, 1, 1, 12, 0)}, ValueError, "timezone"),
    ("far-future timestamp", {"timestamp": FAR_FUTURE}, ValueError, "ahead of this clock"),
    ("timestamp as a string", {"timestamp": "2026-01-01T12:00:00Z"}, TypeError, "timestamp"),
    ("unknown status", {"status": "partial"}, ValueError, "status"),
    ("event_id not a UUID", {"event_id": "evt-1"}, ValueError, "event_id"),
]


def test_track_refuses_bad_input_by_name_and_the_good_events_beside_it_land(engine: Engine, tmp_path: Path) -> None:
    queue = f"bad-input-{uuid.uuid4().hex[:8]}"
    tenant = f"bad-client-{uuid.uuid4().hex[:8]}"
    tracker = Tracker(Settings(celery_broker_url=BROKERS["rabbitmq"], ingest_queue=queue,
                               producer_spool_dir=str(tmp_path / "spool")))  # fmt: skip
    good = 0

    def track_good() -> None:
        nonlocal good
        assert tracker.track(tenant_id=tenant, user_id=f"u{good}", **GOOD)
        good += 1

    with celery_worker(BROKERS["rabbitmq"], queue, log_dir=tmp_path) as worker:
        assert tracker.flush(5), "an empty buffer flushes at once (an empty batch is never sent)"
        for name, overrides, error, word in CLIENT_CASES:
            track_good()
            with pytest.raises(error) as refused:
                tracker.track(tenant_id=tenant, user_id=f"bad-{name}", **{**GOOD, **overrides})
            assert word in str(refused.value), f"{name}: {refused.value}"
        with pytest.raises(TypeError, match="user_id"):  # a required field missing
            tracker.track(tenant_id=tenant, **GOOD)  # type: ignore[call-arg]
        # The same event tracked twice (a retried request with its own idempotency key): stored once.
        event_id, when = uuid.uuid4(), datetime.now(UTC)
        for _ in range(2):
            assert tracker.track(tenant_id=tenant, user_id=f"u{good}", event_id=event_id, timestamp=when, **GOOD)
        good += 1
        # Far more than one batch at once: split into batches of PRODUCER_BATCH_SIZE.
        for _ in range(2_500):
            track_good()
        assert tracker.flush(30), tracker.stats()
        wait_for(lambda: len(stored_users(engine, tenant)) >= good, SETTLE_S,
                 lambda: describe(worker, stored=len(stored_users(engine, tenant)), expected=good))  # fmt: skip
        time.sleep(1)  # a late duplicate would show now
        assert worker.alive(), describe(worker)
    tracker.close(timeout=5)
    users = stored_users(engine, tenant)
    assert set(users) == {f"u{n}" for n in range(good)}
    assert set(users.values()) == {1}, "an event stored twice"
    assert letters(engine, tenant) == [], "refused events never leave the client"


# --- the queue --------------------------------------------------------------------------------


def test_bad_input_on_the_queue_is_dead_lettered_with_its_reason_and_the_good_events_land(
    broker_url: str, engine: Engine, tmp_path: Path
) -> None:
    from tasks.app import app

    queue = f"bad-input-{uuid.uuid4().hex[:8]}"
    tenant = f"bad-queue-{uuid.uuid4().hex[:8]}"
    good_users: list[str] = []

    def good_row() -> list[Any]:
        good_users.append(f"g{len(good_users)}")
        return malformed.row(malformed.event(tenant, good_users[-1]))

    with celery_worker(broker_url, queue, log_dir=tmp_path) as worker, Connection(broker_url) as conn:

        def send(argument: Any) -> None:
            app.send_task(INGEST_WRITE_BATCH, args=[argument], queue=queue, connection=conn)

        # 1. Every kind of bad row, each between good ones, in one batch.
        rows: list[Any] = []
        for n, case in enumerate(malformed.BAD_ROWS):
            rows += [good_row(), case.make(tenant, f"bad-{n:02d}-{tenant}")]
        repeated = good_row()
        rows += [repeated, list(repeated)]  # the same event twice in one batch
        send(malformed.message(rows))
        # 2. Messages that are not batches, empty and oversized batches.
        for n, bad in enumerate(malformed.BAD_MESSAGES):
            send(bad.make(f"{tenant}-message-{n}"))
        send(malformed.message([]))
        send(malformed.message([good_row() for _ in range(AT_THE_CAP)]))
        send(malformed.message([malformed.row(malformed.event(tenant, f"over-{i}")) for i in range(OVER_THE_CAP)]))
        # 3. Bodies no Celery client made: not JSON, not UTF-8, not a task, someone else's task.
        target = ingest_queue(queue, dead_letter_exchange=True)
        for n, raw in enumerate(malformed.RAW_BODIES):
            marker = f"{tenant}-raw-{n}"
            conn.Producer().publish(raw.body(marker), routing_key=queue, declare=[target], retry=True,
                                    content_type=raw.content_type, content_encoding=raw.content_encoding,
                                    headers=raw.headers(marker))  # fmt: skip
        # 4. The queue is not blocked: a good batch behind all that.
        send(malformed.message([good_row()]))

        expected_letters = len(malformed.BAD_ROWS) + len(malformed.BAD_MESSAGES) + len(malformed.RAW_BODIES) + 1
        wait_for(lambda: len(stored_users(engine, tenant)) >= len(good_users)
                 and len(letters(engine, tenant)) >= expected_letters, SETTLE_S,
                 lambda: describe(worker, stored=len(stored_users(engine, tenant)), expected=len(good_users),
                                  letters=len(letters(engine, tenant))))  # fmt: skip
        time.sleep(1)
        assert worker.alive(), describe(worker)
        assert "Traceback" not in worker.log(), describe(worker)

    users = stored_users(engine, tenant)
    assert set(users) == set(good_users)
    assert set(users.values()) == {1}, "an event stored twice"
    found = letters(engine, tenant)
    assert len(found) == expected_letters, [reason for _, reason, _ in found]

    def letter(marker: str) -> tuple[str, str]:
        [(source, reason)] = [(s, r) for s, r, p in found if marker in p]
        return source, reason

    for n, case in enumerate(malformed.BAD_ROWS):
        source, reason = letter(f"bad-{n:02d}-{tenant}")
        assert source == "worker" and case.reason in reason, f"{case.name}: {reason}"
    for n, bad in enumerate(malformed.BAD_MESSAGES):
        source, reason = letter(f"{tenant}-message-{n}")
        assert source == "worker" and bad.reason in reason, f"{bad.name}: {reason}"
    for n, raw in enumerate(malformed.RAW_BODIES):
        source, reason = letter(f"{tenant}-raw-{n}")
        assert source == "queue" and raw.reason in reason, f"{raw.name}: {reason}"
    source, reason = letter(f'"rows_total": {OVER_THE_CAP}')
    assert source == "worker" and f"INGEST_MAX_ROWS_PER_MESSAGE={AT_THE_CAP}" in reason, reason


# --- hypothesis: malformed events ---------------------------------------------------------------

NOW_US = time.time_ns() // 1000
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([MAX_INT32, MAX_INT32 + 1, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=200),  # NUL, lone surrogates, anything
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
# Timestamps that are not valid event times: out of range, far ahead, or not integers.
# (A plausible past time is valid and would create its month's partition.)
BAD_TIMESTAMP = st.one_of(
    st.integers(min_value=NOW_US + 2 * 86_400_000_000, max_value=2**80),
    st.integers(max_value=-62_200_000_000_000_000, min_value=-(2**80)),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.none(),
)


@st.composite
def wire_rows(draw: st.DrawFn, tenant: str) -> list[Any] | Any:
    """A wire row: valid, or with one field replaced by junk, or of the wrong shape."""
    user = f"h{draw(st.integers(0, 10**9))}"
    values = malformed.event(tenant, user, timestamp_us=NOW_US - draw(st.integers(0, 3_600_000_000)))
    kind = draw(st.sampled_from(["valid", "junk field", "junk field", "bad timestamp", "shape"]))
    if kind == "junk field":
        values[draw(st.sampled_from([f for f in WIRE_FIELDS if f != "timestamp_us"]))] = draw(JUNK)
    elif kind == "bad timestamp":
        values["timestamp_us"] = draw(BAD_TIMESTAMP)
    row = malformed.row(values)
    if kind == "shape":
        return draw(st.one_of(st.just(row[:-1]), st.just([*row, 0]), st.just(values), JUNK))
    return row


def over_the_wire(message: Any) -> Any:
    """What the worker receives: the message through Celery's JSON (NaN and lone surrogates survive)."""
    from kombu.utils import json as kombu_json

    return kombu_json.loads(kombu_json.dumps(message))


@pytest.fixture(scope="module")
def hypothesis_tenant() -> str:
    return f"hyp-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("writer", sorted(WRITERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_events_are_stored_or_dead_lettered_never_lost_never_raised(
    engine: Engine, hypothesis_tenant: str, writer: str, data: st.DataObject
) -> None:
    tenant = hypothesis_tenant
    rows = data.draw(st.lists(wire_rows(tenant), min_size=0, max_size=25))
    if rows and data.draw(st.booleans()):
        rows.append(list(rows[0]) if isinstance(rows[0], list) else rows[0])  # a repeat in the batch
    message = over_the_wire(malformed.message(rows))
    window_end = datetime.now(UTC) + timedelta(days=1)
    decoded = decode_message(message)
    with Session(engine) as session:
        session.begin()
        try:
            result = store_batch(session, decoded.rows, get_settings(), writer=WRITERS[writer])
            rejected = [Rejected(p, r) for p, r in decoded.invalid] + result.rejected
            dead_letters.record(session, rejected)
            stored = session.execute(
                text("SELECT count(*) FROM analytics_events WHERE event_id = ANY(:ids)"),
                {"ids": [m["event_id"] for m, _ in decoded.rows]},
            ).scalar_one()
        finally:
            session.rollback()  # nothing stays behind
    # Every row is accounted for exactly once: stored, a duplicate in the batch, or rejected with a reason.
    assert result.stored + result.duplicates + len(rejected) == len(rows)
    assert stored == result.stored
    assert all(reason for _, reason in decoded.invalid) and all(r.reason for r in result.rejected)
    # Only the malformed ones are rejected: a row the worker's contract accepts is stored
    # unless its time is beyond the accepted window (the generated bad timestamps are).
    beyond = {(m["event_id"], m["timestamp"]) for m, _ in decoded.rows if m["timestamp"] > window_end}
    assert len(result.rejected) == len(beyond)


@settings(max_examples=300, deadline=None)
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            [
                "tenant_id",
                "feature_name",
                "user_id",
                "model",
                "input_tokens",
                "output_tokens",
                "tokens_used",
                "latency_ms",
                "status",
                "error_type",
                "timestamp",
                "event_id",
            ]
        ),
        st.one_of(JUNK, st.datetimes(timezones=st.none() | st.just(UTC)), st.uuids()),
        max_size=4,
    )
)
def test_track_refuses_by_name_or_makes_a_row_the_worker_accepts(overrides: dict[str, Any]) -> None:
    """The two edges agree: whatever ``track()`` accepts, the worker's contract accepts."""
    tracker = Tracker(Settings(celery_broker_url=UNREACHABLE_BROKER, producer_spool_dir="",
                               producer_flush_interval_ms=3_600_000, producer_exit_flush_timeout_s=0))  # fmt: skip
    event = {"tenant_id": "acme", "feature_name": "summarization", "user_id": "u1", **overrides}
    try:
        accepted = tracker.track(**event)
    except (TypeError, ValueError) as exc:
        assert str(exc), "an error must say what is wrong"
        return
    assert accepted
    row = list(tracker._buffer[-1])  # the wire row, as the publishing thread would send it
    row[WIRE_FIELDS.index("event_id")] = row[WIRE_FIELDS.index("event_id")] or uuid.uuid4().hex
    try:
        parse_wire_row(WIRE_FIELDS, over_the_wire(row))
    except InvalidEvent as exc:  # pragma: no cover - the failure hypothesis looks for
        pytest.fail(f"track() accepted {event!r} but the worker would dead-letter it: {exc}")
    finally:
        tracker._buffer.clear()
        tracker.close(timeout=0)


# --- the HTTP endpoint ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(database_url: str, engine: Engine) -> Iterator[tuple[Any, dict[str, str], Tracker]]:
    """A TestClient of the web app, a tenant key, and the Tracker its /v1/events feeds (never published)."""
    from fastapi.testclient import TestClient

    import web.ingest
    from storage.api_keys import create_key
    from web.app import app

    tracker = Tracker(Settings(celery_broker_url=UNREACHABLE_BROKER, producer_spool_dir="",
                               producer_flush_interval_ms=3_600_000, producer_exit_flush_timeout_s=0))  # fmt: skip
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="bad-input", tenant_id=f"http-{uuid.uuid4().hex[:8]}")
    original = web.ingest.get_tracker
    web.ingest.get_tracker = lambda: tracker
    try:
        with TestClient(app) as client:
            yield client, {"Authorization": f"Bearer {key}"}, tracker
    finally:
        web.ingest.get_tracker = original
        tracker._buffer.clear()
        tracker.close(timeout=0)


HTTP_VALUE = st.one_of(JUNK, st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
                       st.uuids().map(str))  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    *sorted(
                        {
                            "feature_name",
                            "user_id",
                            "model",
                            "input_tokens",
                            "output_tokens",
                            "tokens_used",
                            "latency_ms",
                            "status",
                            "error_type",
                            "timestamp",
                            "event_id",
                        }
                    ),
                    "tenant_id",
                    "colour",
                ]
            ),
            HTTP_VALUE,
            max_size=5,
        ).map(lambda e: {"feature_name": "summarization", "user_id": "u1", **e}),
        min_size=1,
        max_size=8,
    )
)
def test_http_endpoint_answers_every_malformed_event(http: tuple[Any, dict[str, str], Tracker],
                                                     events: list[dict[str, Any]]) -> None:  # fmt: skip
    client, headers, tracker = http
    tracker._buffer.clear()
    body = json.dumps({"events": events}, allow_nan=True)  # NaN as JSON clients send it
    response = client.post("/v1/events", content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code in (202, 207, 422), response.text  # never a 500
    if response.status_code == 422:
        return  # refused whole (not JSON the endpoint accepts), with the reason
    answer = response.json()
    assert len(answer["results"]) == len(events)
    assert answer["accepted"] == len(tracker._buffer)
    for result in answer["results"]:
        assert result["status"] in ("accepted", "rejected")
        assert result["status"] == "accepted" or result["error"], result
    for row in list(tracker._buffer):  # every accepted event passes the worker's contract
        parse_wire_row(WIRE_FIELDS, over_the_wire(list(row)))
