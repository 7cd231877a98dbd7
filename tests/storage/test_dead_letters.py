"""Dead letters: replay after a fix is idempotent, still-failing ones stay, purge, and the CLI."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cli.main import cli
from config import get_settings
from schema.event import WIRE_FIELDS, WIRE_FIELDS_V1
from schema.message import decode_message
from storage import dead_letters
from storage.db import make_session_factory
from storage.dead_letters import SOURCE_QUEUE, Rejected
from storage.flush import Flush, commit_flush
from storage.partitions import PartitionPolicy
from storage.replay import replay
from tasks.names import INGEST_WRITE_BATCH, ROLLUPS_RUN

HOUR_US = 3_600 * 1_000_000


def wire_row(tenant: str, *, ts_us: int | None = None, status: str = "success") -> list:
    return [uuid.uuid4().hex, tenant, "summarization", "u1", None, 3, 4, None, 12, status, None,
            ts_us if ts_us is not None else time.time_ns() // 1000]  # fmt: skip


def message(*rows: list) -> dict:
    """A version-1 message (no token buckets, no provider): its dead letters replay as version 1."""
    return {"v": 1, "fields": list(WIRE_FIELDS_V1), "rows": list(rows)}


def letters(engine: Engine, tenant: str) -> list[tuple[int, int, str]]:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT id, attempts, reason FROM dead_letters WHERE payload LIKE :t ORDER BY id"),
            {"t": f"%{tenant}%"},
        ).all()


def stored(engine: Engine, tenant: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()


def ingest(engine: Engine, msg: dict, policy: PartitionPolicy) -> None:
    """What the worker does with one message (tasks.ingest), in one transaction."""
    commit_flush(make_session_factory(engine), Flush.decoded(decode_message(msg)), get_settings(), policy=policy)


def test_replay_after_a_fix_stores_once_and_removes_the_dead_letter(engine: Engine) -> None:
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    strict = PartitionPolicy(max_future_skew=timedelta(minutes=5))
    future = wire_row(tenant, ts_us=time.time_ns() // 1000 + 2 * HOUR_US)  # a skewed client clock
    ingest(engine, message(wire_row(tenant), future), strict)
    assert stored(engine, tenant) == 1
    [(letter_id, attempts, reason)] = letters(engine, tenant)
    assert attempts == 1 and "future" in reason

    relaxed = PartitionPolicy(max_future_skew=timedelta(days=1))  # the fix
    for _ in range(2):  # replaying twice changes nothing the second time
        with Session(engine) as session, session.begin():
            replay(session, [letter_id], get_settings(), policy=relaxed)
    assert stored(engine, tenant) == 2
    assert letters(engine, tenant) == []


def test_a_version_2_dead_letter_replays_with_its_time_to_first_token(engine: Engine) -> None:
    """A version-2 row keeps every field through its dead letter: the replayed event streamed, as sent."""
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    strict = PartitionPolicy(max_future_skew=timedelta(minutes=5))
    v1 = wire_row(tenant, ts_us=time.time_ns() // 1000 + 2 * HOUR_US)
    v2 = dict(zip(WIRE_FIELDS_V1, v1, strict=True)) | {
        "cache_read_tokens": 1, "cache_write_tokens": 0, "reasoning_tokens": 2, "provider": "openai",
        "time_to_first_token_ms": 9,
    }  # fmt: skip
    ingest(engine, {"v": 2, "fields": list(WIRE_FIELDS), "rows": [[v2[f] for f in WIRE_FIELDS]]}, strict)
    [(letter_id, _, reason)] = letters(engine, tenant)
    assert "future" in reason
    with Session(engine) as session, session.begin():
        replay(session, [letter_id], get_settings(), policy=PartitionPolicy(max_future_skew=timedelta(days=1)))
    with engine.connect() as conn:
        ttft, latency = conn.execute(
            text("SELECT time_to_first_token_ms, latency_ms FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).one()
    assert (ttft, latency) == (9, 12)
    assert letters(engine, tenant) == []


def test_a_dead_letter_that_still_fails_stays_with_more_attempts(engine: Engine) -> None:
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    policy = PartitionPolicy()
    ingest(engine, message(wire_row(tenant, status="exploded")), policy)
    [(letter_id, attempts, reason)] = letters(engine, tenant)
    assert attempts == 1 and "status" in reason
    with Session(engine) as session, session.begin():
        result = replay(session, [letter_id], get_settings(), policy=policy)
    assert (result.replayed, result.stored, result.still_failing) == (0, 0, 1)
    [(same_id, attempts, _)] = letters(engine, tenant)
    assert (same_id, attempts) == (letter_id, 2)
    assert stored(engine, tenant) == 0


def test_redelivered_bad_row_is_one_dead_letter(engine: Engine) -> None:
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    bad = wire_row(tenant)
    bad[5] = -1  # negative input_tokens
    ingest(engine, message(bad), PartitionPolicy())
    ingest(engine, message(bad), PartitionPolicy())
    [(_, attempts, reason)] = letters(engine, tenant)
    assert attempts == 2 and "input_tokens" in reason


def test_cli_lists_replays_and_purges(engine: Engine) -> None:
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    bad = wire_row(tenant, status="exploded")
    ingest(engine, message(bad), PartitionPolicy())
    [(letter_id, _, _)] = letters(engine, tenant)
    runner = CliRunner()

    listed = runner.invoke(cli, ["dead-letters", "list", "--payload", "--limit", "500"])
    assert listed.exit_code == 0, listed.output
    assert f"#{letter_id} " in listed.output and bad[0] in listed.output  # id and event_id

    replayed = runner.invoke(cli, ["dead-letters", "replay", str(letter_id)])
    assert replayed.exit_code == 0, replayed.output
    assert "0 events stored" in replayed.output and "1 still failing" in replayed.output

    refused = runner.invoke(cli, ["dead-letters", "purge"])
    assert refused.exit_code != 0 and "name dead-letter ids" in refused.output

    purged = runner.invoke(cli, ["dead-letters", "purge", str(letter_id), "--yes"])
    assert purged.exit_code == 0 and "purged 1" in purged.output
    assert letters(engine, tenant) == []


def test_a_raw_queue_message_for_the_ingest_task_can_be_replayed(engine: Engine) -> None:
    """The consumer dead-letters raw messages; one carrying a good batch replays into events."""
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    body = json.dumps([[message(wire_row(tenant), wire_row(tenant))], {}, {}])
    raw = {"content_type": "application/json", "content_encoding": "utf-8",
           "headers": {"task": INGEST_WRITE_BATCH}, "routing_key": "ingest", "body": body}  # fmt: skip
    with Session(engine) as session, session.begin():
        dead_letters.record(session, [Rejected(raw, "worker was misconfigured", source="queue")])
    [(letter_id, _, _)] = letters(engine, tenant)
    with Session(engine) as session, session.begin():
        result = replay(session, [letter_id], get_settings())
    assert (result.replayed, result.stored) == (1, 2)
    assert stored(engine, tenant) == 2


def raw_letter(engine: Engine, tenant: str, body: object, headers: dict) -> int:
    """A raw broker message dead-lettered by the consumer (source ``queue``) holding ``tenant``: its id."""
    raw = {"content_type": "application/json", "content_encoding": "utf-8", "headers": headers,
           "routing_key": "ingest", "body": json.dumps(body)}  # fmt: skip
    with Session(engine) as session, session.begin():
        dead_letters.record(session, [Rejected(raw, "worker was misconfigured", source=SOURCE_QUEUE)])
    [(letter_id, _, _)] = letters(engine, tenant)
    return letter_id


def test_a_raw_protocol1_message_for_the_ingest_task_can_be_replayed(engine: Engine) -> None:
    """Celery's protocol 1 (the task named in the body) replays like protocol 2 (schema.task_message)."""
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    body = {"task": INGEST_WRITE_BATCH, "id": str(uuid.uuid4()), "args": [message(wire_row(tenant))], "kwargs": {}}
    letter_id = raw_letter(engine, tenant, body, headers={})
    with Session(engine) as session, session.begin():
        result = replay(session, [letter_id], get_settings())
    assert (result.replayed, result.stored, result.still_failing) == (1, 1, 0)
    assert stored(engine, tenant) == 1
    assert letters(engine, tenant) == []


def test_a_raw_message_of_another_task_is_not_replayed(engine: Engine) -> None:
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    letter_id = raw_letter(engine, tenant, [[message(wire_row(tenant))], {}, {}], headers={"task": ROLLUPS_RUN})
    with Session(engine) as session, session.begin():
        result = replay(session, [letter_id], get_settings())
    assert (result.replayed, result.stored, result.still_failing) == (0, 0, 1)
    [(same_id, attempts, _)] = letters(engine, tenant)
    assert (same_id, attempts) == (letter_id, 2)
    assert stored(engine, tenant) == 0


def test_a_row_failing_again_keeps_the_source_of_its_dead_letter(engine: Engine) -> None:
    """A raw message whose row storage still refuses: the new dead letter of the row says ``queue``."""
    tenant = f"dl-{uuid.uuid4().hex[:8]}"
    future = wire_row(tenant, ts_us=time.time_ns() // 1000 + 2 * HOUR_US)
    letter_id = raw_letter(engine, tenant, [[message(future)], {}, {}], headers={"task": INGEST_WRITE_BATCH})
    strict = PartitionPolicy(max_future_skew=timedelta(minutes=5))
    with Session(engine) as session, session.begin():
        result = replay(session, [letter_id], get_settings(), policy=strict)
    assert (result.replayed, result.stored, result.still_failing) == (1, 0, 1)
    with engine.connect() as conn:
        [(source, reason)] = conn.execute(
            text("SELECT source, reason FROM dead_letters WHERE payload LIKE :t"), {"t": f"%{tenant}%"}
        ).all()
    assert source == SOURCE_QUEUE and "future" in reason
