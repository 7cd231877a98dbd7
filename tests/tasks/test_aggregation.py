"""The aggregating consumer (tasks.aggregator), end to end on RabbitMQ and Redis.

Each test starts ``python -m tasks.aggregator`` as a subprocess in a process
group of its own, on a queue of its own, against the test database, publishes
real Celery task messages with the producer's own publisher, and reconciles
in the database and in the broker (after a stop, no message may be left on
the queue or unacknowledged). Flushes are counted twice: from the process's
"flush committed" log lines, and as distinct ``batch_id`` of the stored rows
(storage.rollups: one per transaction that stored rows).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import Engine, text

from config import Settings
from devtools.events_db import blocked_inserts, count_events
from devtools.messages import batch_publisher, make_message, wire_rows
from devtools.processes import REPO_ROOT, wait_for
from devtools.workers import Aggregator, aggregator, worker_env
from schema import reasons
from storage.dead_letters import SOURCE_QUEUE, SOURCE_WORKER
from tasks.broker import ingest_queue
from tasks.names import INGEST_WRITE_BATCH

REDIS_URL = "redis://127.0.0.1:6379/10"  # only to show that it is refused
SETTLE_TIMEOUT_S = 30
REDELIVERY_TIMEOUT_S = 45
# The aggregator refuses Redis (tasks/aggregator.py): every test with broker_url runs on RabbitMQ.
pytestmark = pytest.mark.brokers("rabbitmq")


# --- fixtures ------------------------------------------------------------------


def queue_depth(broker_url: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of ``queue``. RabbitMQ counts ready
    messages only, so call it when no consumer is connected (unacked ones have
    then returned to the queue)."""
    with Connection(broker_url) as conn:
        _, ready, _ = conn.default_channel.queue_declare(queue, passive=True)
        return ready, 0


@pytest.fixture
def settings(broker_url: str, queue: str, database_url: str) -> Settings:
    return Settings(celery_broker_url=broker_url, ingest_queue=queue, database_url=database_url)


@pytest.fixture
def start(broker_url: str, queue: str, database_url: str, tmp_path: Path) -> Iterator[Callable[..., Aggregator]]:
    with ExitStack() as stack:

        def start(**env: str) -> Aggregator:
            return stack.enter_context(aggregator(broker_url, queue, tmp_path, env))

        yield start


# --- helpers -------------------------------------------------------------------


def publish(settings: Settings, messages: list[dict[str, Any]]) -> None:
    with batch_publisher(settings) as publisher:
        for message in messages:
            publisher.publish(message, len(message["rows"]))


def publish_concurrently(settings: Settings, messages: list[dict[str, Any]], producers: int) -> None:
    """Each producer (a thread with its own connection) publishes every producers-th message."""
    errors: list[BaseException] = []

    def run(share: list[dict[str, Any]]) -> None:
        try:
            publish(settings, share)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(messages[i::producers],)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def transactions(engine: Engine, tenant: str) -> int:
    """Transactions that stored rows of ``tenant`` (one batch_id each)."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(DISTINCT batch_id) FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()


def backends(engine: Engine, app_name: str, waiting_on_lock: bool = False) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE application_name = :app"
    if waiting_on_lock:
        sql += " AND wait_event_type = 'Lock'"
    with engine.connect() as conn:
        return list(conn.execute(text(sql), {"app": app_name}).scalars())


def dead_letters_for(engine: Engine, marker: str) -> list[tuple[str, str, str, int]]:
    with engine.connect() as conn:
        return [
            tuple(row)  # type: ignore[misc]
            for row in conn.execute(
                text(
                    "SELECT payload, source, reason, attempts FROM dead_letters"
                    " WHERE payload LIKE '%' || :m || '%' ORDER BY reason"
                ),
                {"m": marker},
            )
        ]


def small_messages(tenant: str, count: int, size: int) -> list[dict[str, Any]]:
    return [make_message(wire_rows(tenant, size)) for _ in range(count)]


def settle(
    process: Aggregator, engine: Engine, tenant: str, expected_rows: int, processed: int, timeout: float
) -> None:
    """Wait until ``expected_rows`` rows of the tenant are stored and the process
    has accounted for ``processed`` events in its committed flushes."""
    wait_for(
        lambda: count_events(engine, tenant)[0] >= expected_rows and process.processed() >= processed,
        timeout,
        lambda: process.describe(rows=count_events(engine, tenant), processed=process.processed()),
    )


# --- tests ---------------------------------------------------------------------

PRODUCERS = 5
MESSAGES = 50
MESSAGE_EVENTS = 10


def test_many_small_messages_become_few_transactions(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    # A generous wait: on a busy machine the 50 publishes may take a while.
    process = start(INGEST_AGGREGATE_MAX_WAIT_MS="1000")
    messages = small_messages(tenant, MESSAGES, MESSAGE_EVENTS)
    sent = MESSAGES * MESSAGE_EVENTS
    publish_concurrently(settings, messages, PRODUCERS)
    settle(process, engine, tenant, sent, sent, SETTLE_TIMEOUT_S)

    assert count_events(engine, tenant) == (sent, sent)
    flushes = process.flushes()
    assert sum(f.messages for f in flushes) == MESSAGES, flushes
    assert sum(f.stored for f in flushes) == sent, flushes
    assert len(flushes) <= 5, flushes  # 50 transactions with the Celery task
    assert transactions(engine, tenant) == len(flushes)
    assert process.stop() == 0, process.describe()
    assert queue_depth(broker_url, queue) == (0, 0), "every message was acknowledged"


def test_backlog_is_written_in_transactions_of_at_most_max_events(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    max_events = 1000
    count = 300
    sent = count * MESSAGE_EVENTS
    publish(settings, small_messages(tenant, count, MESSAGE_EVENTS))
    # The first window is sized for PRODUCER_BATCH_SIZE-event messages (10
    # messages), then opens up to two flushes of 10-event messages.
    process = start(INGEST_AGGREGATE_MAX_EVENTS=str(max_events))
    settle(process, engine, tenant, sent, sent, SETTLE_TIMEOUT_S)

    assert count_events(engine, tenant) == (sent, sent)
    flushes = process.flushes()
    assert all(f.events <= max_events for f in flushes), flushes
    assert sum(f.messages for f in flushes) == count
    # 3 full flushes, plus the small first one and a remainder or two.
    assert len(flushes) <= sent // max_events + 3, flushes
    assert sum(1 for f in flushes if f.events == max_events) >= 2, flushes
    assert "prefetch window now 200 messages" in process.log(), process.describe()
    assert process.stop() == 0, process.describe()
    assert queue_depth(broker_url, queue) == (0, 0)


def test_same_message_twice_is_stored_once(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str
) -> None:
    process = start()
    message = make_message(wire_rows(tenant, 40))
    publish(settings, [message, message])
    settle(process, engine, tenant, 40, 80, SETTLE_TIMEOUT_S)
    assert count_events(engine, tenant) == (40, 40)
    flushes = process.flushes()
    assert sum(f.stored for f in flushes) == 40 and sum(f.duplicates for f in flushes) == 40, flushes


KILL_MESSAGES = 30


def test_killed_mid_flush_loses_nothing(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    first = start()
    sent = KILL_MESSAGES * MESSAGE_EVENTS
    with ExitStack() as lock:
        release = lock.enter_context(blocked_inserts(engine))
        publish(settings, small_messages(tenant, KILL_MESSAGES, MESSAGE_EVENTS))
        wait_for(
            lambda: backends(engine, first.app_name, waiting_on_lock=True),
            SETTLE_TIMEOUT_S,
            lambda: first.describe(note="no backend of the aggregator waits on the table lock"),
        )
        first.kill_group()  # mid-INSERT, holding every message unacknowledged
        assert first.proc.returncode == -signal.SIGKILL
        release()
    wait_for(lambda: not backends(engine, first.app_name), SETTLE_TIMEOUT_S, "killed aggregator's backend remains")
    assert count_events(engine, tenant) == (0, 0)
    assert first.flushes() == []

    second = start()
    settle(second, engine, tenant, sent, sent, REDELIVERY_TIMEOUT_S)
    assert count_events(engine, tenant) == (sent, sent)
    flushes = second.flushes()
    assert sum(f.stored for f in flushes) == sent and sum(f.duplicates for f in flushes) == 0, flushes
    assert second.stop() == 0, second.describe()
    assert queue_depth(broker_url, queue) == (0, 0)


def test_database_errors_are_retried_and_never_acknowledged(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    sent = 20 * MESSAGE_EVENTS
    # 1. A write that cannot succeed (its table is gone) is retried with
    #    backoff, and its messages are held unacknowledged: a process killed
    #    during the outage leaves them all to the next one.
    first = start()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE rollup_pending_batches RENAME TO rollup_pending_batches_away"))
    try:
        publish(settings, small_messages(tenant, 20, MESSAGE_EVENTS))
        wait_for(
            lambda: first.log().count("not stored (ProgrammingError") >= 2,
            SETTLE_TIMEOUT_S,
            lambda: first.describe(note="no retries logged"),
        )
        assert first.flushes() == [] and count_events(engine, tenant) == (0, 0)
        first.kill_group()
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE rollup_pending_batches_away RENAME TO rollup_pending_batches"))

    # 2. A connection lost mid-write (the backend terminated while it waits on
    #    a lock) is retried by the same process, on a new connection.
    second = start()
    with ExitStack() as lock:
        release = lock.enter_context(blocked_inserts(engine))
        waiting = wait_for(
            lambda: backends(engine, second.app_name, waiting_on_lock=True),
            REDELIVERY_TIMEOUT_S,
            lambda: second.describe(note="no backend of the aggregator waits on the table lock"),
        )
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[0]})
        wait_for(lambda: "not stored (OperationalError" in second.log(), SETTLE_TIMEOUT_S, second.describe)
        release()
    settle(second, engine, tenant, sent, sent, SETTLE_TIMEOUT_S)
    assert count_events(engine, tenant) == (sent, sent)
    assert second.alive()
    assert second.stop() == 0, second.describe()
    assert queue_depth(broker_url, queue) == (0, 0)


def test_bad_rows_are_dead_lettered_while_flush_mates_land(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str
) -> None:
    process = start(INGEST_AGGREGATE_MAX_WAIT_MS="1000")
    good = [wire_rows(tenant, 10) for _ in range(6)]
    far_future = wire_rows(tenant, 1, timestamp=datetime(2200, 6, 15, 12, 0, tzinfo=UTC))[0]
    negative = wire_rows(tenant, 1, input_tokens=-4)[0]
    not_ours = f"not a batch {tenant}"
    messages: list[Any] = [make_message(rows) for rows in good]
    messages[2] = make_message([*good[2][:5], far_future, *good[2][5:]])  # refused by the write path
    messages[4] = make_message([*good[4][:3], negative, *good[4][3:]])  # refused by validation
    with batch_publisher(settings) as publisher:
        for message in messages[:3]:
            publisher.publish(message, len(message["rows"]))
        publisher.publish(not_ours, 1)  # type: ignore[arg-type]
        for message in messages[3:]:
            publisher.publish(message, len(message["rows"]))

    stored = sum(len(rows) for rows in good)
    settle(process, engine, tenant, stored, stored + 3, SETTLE_TIMEOUT_S)
    assert count_events(engine, tenant) == (stored, stored)
    flushes = process.flushes()
    assert sum(f.messages for f in flushes) == 7
    assert sum(f.dead_lettered for f in flushes) == 3, flushes
    assert len(flushes) <= 2, flushes  # the bad rows do not split the flush into transactions
    letters = {
        payload: (source, reason, attempts) for payload, source, reason, attempts in dead_letters_for(engine, tenant)
    }
    assert len(letters) == 3, letters

    def letter(marker: str) -> tuple[str, str, int]:
        (found,) = [value for payload, value in letters.items() if marker in payload]
        return found

    assert "too far in the future" in letter(far_future[0])[1]
    assert "input_tokens must not be negative" in letter(negative[0])[1]
    assert reasons.NOT_AN_INGEST_MESSAGE in letter(not_ours)[1]
    assert {source for source, _, _ in letters.values()} == {SOURCE_WORKER}
    assert {attempts for _, _, attempts in letters.values()} == {1}


def test_foreign_messages_are_dead_lettered_and_the_rest_lands(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    process = start(INGEST_AGGREGATE_MAX_WAIT_MS="1000")
    marker = uuid.uuid4().hex
    good = make_message(wire_rows(tenant, 25))
    with Connection(broker_url) as conn:
        producer = conn.Producer()
        target = ingest_queue(queue, dead_letter_exchange=True)

        def raw(body: bytes, content_type: str = "application/json", **kw: Any) -> None:
            producer.publish(body, routing_key=queue, declare=[target], retry=True, content_type=content_type,
                             content_encoding="utf-8" if content_type.endswith("json") else "binary", **kw)  # fmt: skip

        def task(name: str, body: Any) -> None:
            raw(json.dumps(body).encode(), headers={"task": name, "id": str(uuid.uuid4()), "lang": "py"})

        raw(f"{{broken json {marker}".encode())
        raw(f"pickle? {marker}".encode(), content_type="application/x-python-serialize")
        raw(json.dumps({"hello": marker}).encode())
        task("somebody.elses_task", [[marker], {}, {}])
        task(INGEST_WRITE_BATCH, [[marker, "two arguments"], {}, {}])
        task(INGEST_WRITE_BATCH, [[good], {}, {}])  # protocol 2, as the producer sends it
    protocol1 = make_message(wire_rows(tenant, 5))
    with Connection(broker_url) as conn:
        conn.Producer().publish(
            {"task": INGEST_WRITE_BATCH, "id": str(uuid.uuid4()), "args": [protocol1], "kwargs": {}},
            routing_key=queue, declare=[ingest_queue(queue, dead_letter_exchange=True)], serializer="json",
        )  # fmt: skip

    settle(process, engine, tenant, 30, 30, SETTLE_TIMEOUT_S)
    wait_for(lambda: len(dead_letters_for(engine, marker)) >= 5, SETTLE_TIMEOUT_S, process.describe)
    rows = dead_letters_for(engine, marker)
    found = " | ".join(reason for _, _, reason, _ in rows)
    assert {source for _, source, _, _ in rows} == {SOURCE_QUEUE}, rows
    assert found.count(reasons.COULD_NOT_DECODE) == 2, found
    assert reasons.NOT_A_TASK_MESSAGE in found
    assert reasons.unknown_task("somebody.elses_task") in found
    assert reasons.INVALID_TASK_MESSAGE in found
    assert len(rows) == 5, found
    assert count_events(engine, tenant) == (30, 30)
    assert process.alive()
    assert process.stop() == 0, process.describe()
    assert queue_depth(broker_url, queue) == (0, 0), "poison is acknowledged once dead-lettered"


def test_warm_stop_commits_what_is_buffered(
    start: Callable[..., Aggregator], settings: Settings, engine: Engine, tenant: str, broker_url: str, queue: str
) -> None:
    # Nothing is due for a minute: only the stop flushes.
    process = start(INGEST_AGGREGATE_MAX_WAIT_MS="60000", PRODUCER_BATCH_SIZE="10")
    sent = 12 * MESSAGE_EVENTS
    publish(settings, small_messages(tenant, 12, MESSAGE_EVENTS))
    time.sleep(1.0)
    assert process.flushes() == [] and count_events(engine, tenant) == (0, 0), process.describe()
    started = time.monotonic()
    assert process.stop() == 0, process.describe()
    assert time.monotonic() - started < 10, "a warm stop with nothing blocked is quick"
    assert count_events(engine, tenant) == (sent, sent)
    assert [f.messages for f in process.flushes()] == [12], process.describe()
    assert queue_depth(broker_url, queue) == (0, 0)


def test_redis_broker_is_refused_with_one_line(database_url: str) -> None:
    env = worker_env(REDIS_URL, "ingest-agg-refused", "aggregator-refused")
    done = subprocess.run(
        [sys.executable, "-m", "tasks.aggregator"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "aggregator: INGEST_MODE=aggregate needs a RabbitMQ broker (amqp://); "
        "with Redis run the Celery worker (INGEST_MODE=task)"
    ]
