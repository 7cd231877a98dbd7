"""The write path against the real database: storage.events.store_batch and
storage.dead_letters.record, in one transaction by storage.flush as the ingest task does.

Rows are built by hand where a test needs what validation would refuse, so
that PostgreSQL itself rejects them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from config import Settings, get_settings
from schema.event import WIRE_FIELDS, parse_wire_row
from storage import dead_letters
from storage.db import make_session_factory
from storage.dead_letters import Rejected, encode_payload
from storage.events import Row, store_batch
from storage.flush import Flush, FlushResult, commit_flush


@pytest.fixture(params=["bulk", "copy"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Every test that writes runs with each writer (INGEST_WRITER): the guarantees must not depend on it."""
    return get_settings().model_copy(update={"ingest_writer": request.param})


@pytest.fixture
def tenant() -> str:
    return f"writer-{uuid.uuid4().hex[:12]}"


def make_rows(tenant: str, n: int) -> list[Row]:
    """``n`` valid (mapping, raw payload) pairs, as decode_message returns them."""
    now_us = time.time_ns() // 1000
    rows = []
    for i in range(n):
        wire = [
            uuid.uuid4().hex, tenant, "summarize", f"user-{i}", "gpt-test",
            i, 2, i + 2, 100 + i, "success", None, now_us - i,
            i // 2, i % 3 // 2, i % 2, "openai" if i % 2 else None,  # the token buckets and provider
            None if i % 3 else 50 + i,  # the time to first token of a streamed call
        ]  # fmt: skip
        rows.append((parse_wire_row(WIRE_FIELDS, wire), dict(zip(WIRE_FIELDS, wire, strict=False))))
    return rows


def tamper(row: Row, **columns: Any) -> Row:
    """The same event with columns changed past validation (mapping and payload)."""
    mapping, payload = row
    return {**mapping, **columns}, {**payload, **columns}


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session, session.begin():
        yield session


def write(engine: Engine, rows: list[Row], settings: Settings) -> FlushResult:
    """What the ingest task does with a decoded batch: store, dead-letter, commit (storage.flush)."""
    return commit_flush(make_session_factory(engine), Flush(rows=rows), settings)


def stored(engine: Engine, tenant: str) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text("SELECT count(*), count(DISTINCT event_id) FROM analytics_events WHERE tenant_id = :t"),
                {"t": tenant},
            ).one()
        )


def stored_ids(engine: Engine, tenant: str) -> set[uuid.UUID]:
    with engine.connect() as conn:
        return set(
            conn.execute(text("SELECT event_id FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}).scalars()
        )


def letters_for(engine: Engine, tenant: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row._mapping)
            for row in conn.execute(
                text(
                    "SELECT fingerprint, source, reason, payload, attempts, first_seen, last_seen"
                    " FROM dead_letters WHERE payload LIKE '%' || :t || '%' ORDER BY id"
                ),
                {"t": tenant},
            )
        ]


# --- idempotency ----------------------------------------------------------------------


def test_batch_stored_twice_stores_each_event_once(engine: Engine, tenant: str, settings: Settings) -> None:
    rows = make_rows(tenant, 50)
    first = write(engine, rows, settings)
    assert (first.stored, first.duplicates, first.rejected) == (50, 0, [])
    second = write(engine, rows, settings)
    assert (second.stored, second.duplicates, second.rejected) == (0, 50, [])
    assert stored(engine, tenant) == (50, 50)


def test_overlapping_batch_stores_only_the_new_events(engine: Engine, tenant: str, settings: Settings) -> None:
    old, new = make_rows(tenant, 30), make_rows(tenant, 20)
    write(engine, old, settings)
    # Already-stored events scattered among new ones, as a partly replayed spool would send them.
    mixed = [row for pair in zip(old[10:], new, strict=False) for row in pair]
    result = write(engine, mixed, settings)
    assert (result.stored, result.duplicates, result.rejected) == (20, 20, [])
    assert stored(engine, tenant) == (50, 50)
    assert stored_ids(engine, tenant) == {m["event_id"] for m, _ in old + new}


def test_duplicate_event_id_inside_one_batch_is_stored_once(engine: Engine, tenant: str, settings: Settings) -> None:
    a, b, c = make_rows(tenant, 3)
    a_again = tamper(a, user_id="second-copy")  # same key (event_id, tenant_id, timestamp)
    result = write(engine, [a, b, a_again, c, b], settings)
    assert (result.stored, result.duplicates, result.rejected) == (3, 2, [])
    assert stored(engine, tenant) == (3, 3)
    with engine.connect() as conn:
        user = conn.execute(
            text("SELECT user_id FROM analytics_events WHERE event_id = :id"), {"id": a[0]["event_id"]}
        ).scalar_one()
    assert user == a[0]["user_id"], "the first copy in the batch wins"


def as_tenant(row: Row, tenant: str) -> Row:
    """The same event id and timestamp, sent by another tenant."""
    return tamper(row, tenant_id=tenant)


def test_the_same_event_id_and_timestamp_in_two_tenants_stores_two_events(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    """Issue 12 finding 6: tenant A's pre-submitted ids must not drop tenant B's events."""
    attacker = f"{tenant}-a"
    victim_rows = make_rows(tenant, 20)
    stolen = [as_tenant(row, attacker) for row in victim_rows]
    assert (write(engine, stolen, settings).stored, stored(engine, attacker)) == (20, (20, 20))
    victim = write(engine, victim_rows, settings)
    assert (victim.stored, victim.duplicates, victim.rejected) == (20, 0, [])
    assert stored_ids(engine, tenant) == stored_ids(engine, attacker) == {m["event_id"] for m, _ in victim_rows}
    # Both tenants in one batch too: two events each, none a duplicate of the other.
    both = make_rows(tenant, 5)
    mixed = both + [as_tenant(row, attacker) for row in both]
    assert (write(engine, mixed, settings).stored, stored(engine, tenant)[0], stored(engine, attacker)[0]) == (
        10,
        25,
        25,
    )


def test_a_redelivered_two_tenant_batch_stores_nothing_twice(engine: Engine, tenant: str, settings: Settings) -> None:
    other = f"{tenant}-b"
    rows = make_rows(tenant, 30)
    batch = rows + [as_tenant(row, other) for row in rows]
    assert write(engine, batch, settings).stored == 60
    again = write(engine, batch, settings)
    assert (again.stored, again.duplicates, again.rejected) == (0, 60, [])
    # Partly stored: only the other tenant's copies are new.
    third = f"{tenant}-c"
    partly = batch[:10] + [as_tenant(row, third) for row in rows[:10]]
    result = write(engine, partly, settings)
    assert (result.stored, result.duplicates) == (10, 10)
    assert stored(engine, tenant) == stored(engine, other) == (30, 30)
    assert stored(engine, third) == (10, 10)


def test_store_batch_commits_with_the_callers_transaction(engine: Engine, tenant: str, settings: Settings) -> None:
    """Nothing is stored unless the caller commits: the task acknowledges after the commit."""
    rows = make_rows(tenant, 10)
    with Session(engine) as session:
        session.begin()
        assert store_batch(session, rows, settings).stored == 10
        session.rollback()
    assert stored(engine, tenant) == (0, 0)
    assert write(engine, rows, settings).stored == 10


# --- rows the database rejects ------------------------------------------------------------


def test_row_violating_a_check_constraint_is_dead_lettered_while_its_batch_mates_land(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    rows = make_rows(tenant, 100)
    bad = tamper(rows[57], input_tokens=40, output_tokens=40, tokens_used=10)  # < input + output
    rows[57] = bad

    result = write(engine, rows, settings)

    assert result.stored == 99
    assert result.duplicates == 0
    assert len(result.rejected) == 1
    rejected = result.rejected[0]
    assert rejected.payload == bad[1]
    assert "23514" in rejected.reason  # check_violation
    assert "violates check constraint" in rejected.reason and "counts_valid" in rejected.reason
    assert stored(engine, tenant) == (99, 99)
    assert bad[0]["event_id"] not in stored_ids(engine, tenant)

    (letter,) = letters_for(engine, tenant)
    assert letter["reason"] == rejected.reason
    assert letter["payload"] == encode_payload(bad[1])
    assert (letter["source"], letter["attempts"]) == ("worker", 1)


def test_the_database_refuses_a_time_to_first_token_past_the_latency(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    """The table's own check, for a writer that bypasses the schema's: TTFT in [0, latency_ms], NULL allowed."""
    rows = make_rows(tenant, 6)  # rows 0 and 3 streamed, the others not
    rows[1] = tamper(rows[1], latency_ms=100, time_to_first_token_ms=101)
    rows[2] = tamper(rows[2], time_to_first_token_ms=-1)
    rows[4] = tamper(rows[4], latency_ms=100, time_to_first_token_ms=100)  # the whole call before the first token

    result = write(engine, rows, settings)

    assert result.stored == 4
    assert sorted(r.payload["user_id"] for r in result.rejected) == ["user-1", "user-2"]
    assert all("time_to_first_token_valid" in r.reason for r in result.rejected)
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT user_id, time_to_first_token_ms FROM analytics_events WHERE tenant_id = :t ORDER BY user_id"),
            {"t": tenant},
        ).all()
    assert [tuple(row) for row in kept] == [("user-0", 50), ("user-3", 53), ("user-4", 100), ("user-5", None)]


def test_several_rejected_rows_are_isolated_whatever_their_position(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    rows = make_rows(tenant, 200)
    broken = {
        0: (tamper(rows[0], status="pending"), "status_known"),  # check constraint
        77: (tamper(rows[77], input_tokens=2**31, tokens_used=2**31 + 2), "out of range"),  # integer column
        78: (tamper(rows[78], latency_ms=-5), "counts_valid"),
        199: (tamper(rows[199], user_id="u" * 129), "too long"),  # varchar(128)
    }
    for index, (row, _) in broken.items():
        rows[index] = row

    result = write(engine, rows, settings)

    assert result.stored == 200 - len(broken)
    assert stored(engine, tenant) == (196, 196)
    reasons = {r.payload["event_id"]: r.reason for r in result.rejected}
    assert len(reasons) == len(broken)
    for row, expected in broken.values():
        assert expected in reasons[row[1]["event_id"]], reasons[row[1]["event_id"]]
    assert len(letters_for(engine, tenant)) == len(broken)


def test_a_batch_of_only_rejected_rows_stores_nothing_and_letters_all(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    rows = [tamper(row, tokens_used=0) for row in make_rows(tenant, 5)]
    result = write(engine, rows, settings)
    assert result.stored == 0
    assert len(result.rejected) == 5
    assert stored(engine, tenant) == (0, 0)
    assert len(letters_for(engine, tenant)) == 5


# --- dead letters ---------------------------------------------------------------------------------


def test_dead_lettering_the_same_payload_twice_keeps_one_row(engine: Engine, tenant: str) -> None:
    payload = {"tenant_id": tenant, "input_tokens": -1, "note": "NUL \x00 and surrogate \udcff survive"}
    with transaction(engine) as session:
        dead_letters.record(session, [Rejected(payload=payload, reason="first reason")])
    (first,) = letters_for(engine, tenant)
    assert first["attempts"] == 1

    with transaction(engine) as session:
        dead_letters.record(session, [Rejected(payload=dict(payload), reason="second reason")])
    (second,) = letters_for(engine, tenant)
    assert second["fingerprint"] == first["fingerprint"]
    assert second["attempts"] == 2
    assert second["reason"] == "second reason"
    assert second["first_seen"] == first["first_seen"]
    assert second["last_seen"] > first["last_seen"]


def test_the_same_payload_twice_in_one_call_is_one_row(engine: Engine, tenant: str) -> None:
    payload = {"tenant_id": tenant, "status": "weird"}
    other = {"tenant_id": tenant, "status": "odd"}
    with transaction(engine) as session:
        dead_letters.record(session, [Rejected(payload, "a"), Rejected(dict(payload), "b"), Rejected(other, "c")])
    letters = letters_for(engine, tenant)
    assert len(letters) == 2
    assert all(letter["attempts"] == 1 for letter in letters)


def test_a_redelivered_batch_with_a_bad_row_bumps_its_dead_letter(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    """Redelivery of a batch: the good rows are duplicates, the bad row's letter counts twice."""
    rows = make_rows(tenant, 20)
    rows[3] = tamper(rows[3], tokens_used=1)
    first = write(engine, rows, settings)
    second = write(engine, rows, settings)
    assert (first.stored, len(first.rejected)) == (19, 1)
    assert (second.stored, second.duplicates, len(second.rejected)) == (0, 19, 1)
    assert stored(engine, tenant) == (19, 19)
    (letter,) = letters_for(engine, tenant)
    assert letter["attempts"] == 2


# --- settings ---------------------------------------------------------------------------------


def test_the_callers_settings_decide_not_the_process_environment(
    engine: Engine, tenant: str, settings: Settings
) -> None:
    """store_batch reads no global settings: a past bound passed in refuses what the process's would store."""
    rows = make_rows(tenant, 2)
    rows[0] = tamper(rows[0], timestamp=datetime.now(UTC) - timedelta(days=3))
    strict = settings.model_copy(update={"event_max_past_age_days": 1})
    assert get_settings().event_max_past_age_days > 3  # the process's own bound would take the old event
    refused = write(engine, rows, strict)
    assert (refused.stored, len(refused.rejected)) == (1, 1)
    assert "EVENT_MAX_PAST_AGE_DAYS" in refused.rejected[0].reason
    accepted = write(engine, rows, settings)
    assert (accepted.stored, accepted.duplicates, accepted.rejected) == (1, 1, [])
    assert stored(engine, tenant) == (2, 2)
