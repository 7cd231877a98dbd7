"""The ingest unit of work (storage.flush) against the real database: one transaction, then the metrics.

Every ingest path commits through ``commit_flush`` (the Celery task, the
consumer's dead letters, the aggregator, the test helpers), so these are the
guarantees all of them share: rows and dead letters commit together or not at
all, and the metrics count a transaction once, only after it committed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from config import Settings, get_settings
from schema import reasons
from schema.event import WIRE_FIELDS, WIRE_VERSION
from schema.message import decode_message
from storage.db import make_engine, make_session_factory
from storage.dead_letters import SOURCE_QUEUE, SOURCE_WORKER
from storage.flush import Flush, commit_flush, failure_detail, write_flush

SAMPLES = {
    "stored": "analytics_events_stored_total",
    "duplicates": "analytics_events_duplicate_total",
    "dead_lettered": "analytics_events_dead_lettered_total",
    "transactions": "analytics_ingest_batch_events_count",
    "events": "analytics_ingest_batch_events_sum",
    "combined": "analytics_ingest_transaction_messages_count",
}


def counted() -> dict[str, float]:
    return {key: REGISTRY.get_sample_value(name) or 0.0 for key, name in SAMPLES.items()}


def delta(before: dict[str, float]) -> dict[str, float]:
    after = counted()
    return {key: after[key] - before[key] for key in SAMPLES}


def wire_row(tenant: str, *, age: timedelta = timedelta(0), input_tokens: int = 3) -> list[object]:
    ts_us = int((datetime.now(UTC) - age).timestamp() * 1_000_000)
    return [uuid.uuid4().hex, tenant, "summarize", "u1", "m1", input_tokens, 4, None, 12, "success", None, ts_us,
            0, 0, 0, None, 7]  # fmt: skip


def decoded(*rows: list[object]) -> Flush:
    return Flush.decoded(decode_message({"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": list(rows)}))


def counts(engine: Engine, tenant: str) -> tuple[int, int]:
    """(events stored, dead letters) of ``tenant``."""
    with engine.connect() as conn:
        return tuple(conn.execute(text(
            "SELECT (SELECT count(*) FROM analytics_events WHERE tenant_id = :t),"
            " (SELECT count(*) FROM dead_letters WHERE payload LIKE '%' || :t || '%')"
        ), {"t": tenant}).one())  # fmt: skip


@pytest.fixture
def settings() -> Settings:
    return get_settings()


def test_a_commit_stores_rows_and_dead_letters_then_counts_once(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    sessions = make_session_factory(engine)
    flush = decoded(wire_row(tenant, age=timedelta(minutes=5)), wire_row(tenant), wire_row(tenant, input_tokens=-1))
    before = counted()
    result = commit_flush(sessions, flush, settings)
    assert (result.events, result.stored, result.duplicates, result.dead_lettered) == (3, 2, 0, 1)
    assert counts(engine, tenant) == (2, 1)
    assert delta(before) == {"stored": 2, "duplicates": 0, "dead_lettered": 1, "transactions": 1, "events": 3,
                             "combined": 0}  # fmt: skip
    assert result.lag_s(datetime.now(UTC)) == pytest.approx(300, abs=30)  # the oldest row: 5 minutes

    before = counted()
    again = commit_flush(sessions, flush, settings, messages=4)  # redelivered, by a consumer combining 4 messages
    assert (again.stored, again.duplicates, again.dead_lettered) == (0, 2, 1)
    assert counts(engine, tenant) == (2, 1)
    assert delta(before) == {"stored": 0, "duplicates": 2, "dead_lettered": 1, "transactions": 1, "events": 3,
                             "combined": 1}  # fmt: skip


def test_a_failed_commit_counts_nothing(tenant: str, database_url: str, settings: Settings) -> None:
    """The database refuses the connection: the error reaches the caller (to retry), nothing is counted."""
    missing = make_url(database_url).set(database=f"missing_{uuid.uuid4().hex[:8]}")
    unreachable = make_engine(settings.model_copy(update={"database_url": missing.render_as_string(False)}))
    before = counted()
    try:
        with pytest.raises(Exception, match="does not exist") as raised:
            commit_flush(make_session_factory(unreachable), decoded(wire_row(tenant)), settings)
    finally:
        unreachable.dispose()
    assert delta(before) == dict.fromkeys(SAMPLES, 0.0)
    assert failure_detail(raised.value).startswith("OperationalError: (psycopg2.OperationalError)")


def test_rows_and_dead_letters_roll_back_together(engine: Engine, tenant: str, settings: Settings) -> None:
    """``write_flush`` in the caller's transaction (replay): a rollback leaves neither, and nothing is counted."""
    before = counted()
    with Session(engine) as session:
        session.begin()
        result = write_flush(session, decoded(wire_row(tenant), wire_row(tenant, input_tokens=-1)), settings)
        assert (result.stored, result.dead_lettered) == (1, 1)
        session.rollback()
    assert counts(engine, tenant) == (0, 0)
    assert delta(before) == dict.fromkeys(SAMPLES, 0.0)


def test_a_message_refused_whole_is_one_dead_letter_with_its_source(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    """What the consumer commits for a raw message it will not run (source ``queue``)."""
    flush = Flush.refused_whole({"body": f"not ours {tenant}"}, reasons.unknown_task("x"), SOURCE_QUEUE)
    before = counted()
    result = commit_flush(make_session_factory(engine), flush, settings)
    assert (result.events, result.stored, result.dead_lettered, result.oldest) == (1, 0, 1, None)
    assert delta(before)["dead_lettered"] == 1
    with engine.connect() as conn:
        [(source, reason)] = conn.execute(
            text("SELECT source, reason FROM dead_letters WHERE payload LIKE :t"), {"t": f"%{tenant}%"}
        ).all()
    assert (source, reason) == (SOURCE_QUEUE, reasons.unknown_task("x"))


def test_joined_flushes_are_one_transaction(engine: Engine, tenant: str, settings: Settings) -> None:
    """The aggregator's flush of several messages: one transaction, their rows and dead letters together."""
    parts = [decoded(wire_row(tenant), wire_row(tenant)), decoded(wire_row(tenant, input_tokens=-1))]
    joined = Flush.join(parts)
    assert (len(joined.rows), len(joined.refused), joined.events) == (2, 1, 3)
    assert {letter.source for letter in joined.refused} == {SOURCE_WORKER}
    before = counted()
    commit_flush(make_session_factory(engine), joined, settings, messages=len(parts))
    assert counts(engine, tenant) == (2, 1)
    assert {k: v for k, v in delta(before).items() if k in ("transactions", "combined")} == {
        "transactions": 1, "combined": 1,
    }  # fmt: skip
