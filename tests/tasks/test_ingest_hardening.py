"""Issue 12, findings 4, 5 and the worker's part of 8: nothing acknowledged unless stored,
dead-lettered or parked; no poisoned message loops; the ingest queue runs ingest only.

Task mode is the Celery worker, aggregate mode ``python -m tasks.aggregator``
(both devtools.workers); both on the machine's RabbitMQ with a queue of their
own and the test database. The outage test runs on a private PostgreSQL and a
private RabbitMQ (devtools.servers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine, create_engine, text

import celeryconfig
from config import Settings
from devtools.messages import make_message, wire_rows
from devtools.processes import REPO_ROOT, wait_for
from devtools.servers import RABBITMQ_SBIN, PrivatePostgres, PrivateRabbitMQ
from devtools.workers import LoggedProcess, aggregator, celery_worker, describe
from producer.publisher import BatchPublisher
from schema import reasons
from storage.dead_letters import SOURCE_QUEUE
from tasks.broker import AMQP_CLASS, dead_queue_name, ingest_queue, requeue_dead
from tasks.failures import caused_by_message
from tasks.ingest import BACKOFF_MAX_EXPONENT, backoff_seconds
from tasks.names import INGEST_WRITE_BATCH, PARTITIONS_APPLY_RETENTION, ROLLUPS_RUN

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/8"
MANAGEMENT_API = "http://127.0.0.1:15672/api"
SETTLE_S = 60.0
MODES = ["task", "aggregate"]  # on RabbitMQ
TASK_ON_REDIS = "task-redis"  # the Celery worker on Redis (no dead-letter exchange there)


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """Redis for the TASK_ON_REDIS mode of ``ingest``, RabbitMQ otherwise."""
    params = getattr(request.node, "callspec", None)
    return REDIS_URL if params is not None and params.params.get("ingest") == TASK_ON_REDIS else RABBITMQ_URL


@pytest.fixture
def queue(broker: str) -> Iterator[str]:
    name = f"ingest-h4-{uuid.uuid4().hex[:10]}"
    yield name
    with Connection(broker) as conn:
        for leftover in (name, dead_queue_name(name)):
            conn.default_channel.queue_delete(leftover)


def publisher_app(broker_url: str, queue: str) -> Celery:
    app = Celery("test-h4", set_as_current=False, amqp=AMQP_CLASS)
    app.conf.update(celeryconfig.build(Settings(celery_broker_url=broker_url, ingest_queue=queue)))
    return app


def publish_batches(broker_url: str, queue: str, messages: list[dict[str, Any]]) -> None:
    """Through the producer's own path (celeryconfig.build + BatchPublisher)."""
    settings = Settings(celery_broker_url=broker_url, ingest_queue=queue)
    publisher = BatchPublisher(publisher_app(broker_url, queue), settings)
    try:
        for message in messages:
            publisher.publish(message, len(message["rows"]))
    finally:
        publisher.close()


def publish_raw(url: str, queue: str, body: bytes, *, content_type: str = "application/json", **kwargs: Any) -> None:
    with Connection(url) as conn:
        conn.Producer().publish(
            body, routing_key=queue, declare=[ingest_queue(queue, dead_letter_exchange=True)], retry=True,
            content_type=content_type, content_encoding="utf-8", **kwargs,
        )  # fmt: skip


def task_headers(name: str = INGEST_WRITE_BATCH) -> dict[str, Any]:
    return {"task": name, "id": str(uuid.uuid4()), "lang": "py", "argsrepr": "", "kwargsrepr": ""}


def publish_call(url: str, queue: str, args: list[Any], kwargs: dict[str, Any], task: str = INGEST_WRITE_BATCH) -> None:
    """A protocol 2 task message, as any Celery client would send it."""
    publish_raw(url, queue, json.dumps([args, kwargs, {}]).encode(), headers=task_headers(task))


def stored(engine: Engine, tenant: str) -> tuple[int, int]:
    """(rows, distinct event ids) of ``tenant``."""
    with engine.connect() as conn:
        return tuple(conn.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM analytics_events WHERE tenant_id = :t"),
            {"t": tenant},
        ).one())  # fmt: skip


def letters(engine: Engine, marker: str) -> list[tuple[str, str, str]]:
    """(source, reason, payload) of the dead letters whose payload holds ``marker``."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            text("SELECT source, reason, payload FROM dead_letters WHERE payload LIKE :m ORDER BY id"),
            {"m": f"%{marker}%"},
        ).all()]  # fmt: skip


def queue_messages(queue: str, url: str = RABBITMQ_URL) -> int:
    with Connection(url) as conn:
        try:
            return conn.default_channel.queue_declare(queue, passive=True).message_count
        except Exception:  # noqa: BLE001 - no such queue
            return 0


@pytest.fixture
def ingest(
    broker: str, queue: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., AbstractContextManager[LoggedProcess]]:
    """Starts the ingest consumer of the parametrized mode on ``queue``, with extra env."""
    mode = request.param

    def start(**env: str) -> AbstractContextManager[LoggedProcess]:
        if mode in ("task", TASK_ON_REDIS):
            return celery_worker(broker, queue, log_dir=tmp_path, concurrency=2, env=env, stop_timeout=3)
        return aggregator(RABBITMQ_URL, queue, tmp_path, {"INGEST_AGGREGATE_MAX_WAIT_MS": "100", **env})

    return start


def info(process: LoggedProcess, **extra: Any) -> str:
    details = "".join(f"\n{key}: {value}" for key, value in extra.items())
    return f"{details}\n--- log tail ---\n{process.log_tail(60)}"


# --- finding 4: no retry count or broker blip acknowledges a batch -----------------------------


@pytest.mark.parametrize("retries", [0, 1, 10, 1023, 1024, 5_000, 10**6])
def test_backoff_is_bounded_by_the_cap_at_any_retry_count(retries: int) -> None:
    for cap in (0.5, 60.0):
        delays = [backoff_seconds(retries, cap) for _ in range(200)]
        assert all(0.0 <= delay <= cap for delay in delays), (retries, cap, max(delays))
    # past the exponent bound the spread is the whole cap, not a collapse to 0
    if retries >= BACKOFF_MAX_EXPONENT:
        assert max(backoff_seconds(retries, 60.0) for _ in range(200)) > 30.0


def management_queue(name: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{MANAGEMENT_API}/queues/%2F/{name}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, the machine's test broker
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_rejected_batch_lands_in_the_dead_queue_and_an_operator_moves_it_back(
    queue: str, tenant: str, engine: Engine, tmp_path: Path
) -> None:
    publish_batches(RABBITMQ_URL, queue, [make_message(wire_rows(tenant, 5))])
    arguments = management_queue(queue)["arguments"]
    assert arguments == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_queue_name(queue)}

    # What the broker is told to drop (Celery's reject without requeue) is kept.
    with Connection(RABBITMQ_URL) as conn:
        message = ingest_queue(queue, dead_letter_exchange=True)(conn.default_channel).get(no_ack=False)
        assert message is not None
        message.reject(requeue=False)
    wait_for(lambda: queue_messages(dead_queue_name(queue)) == 1, 10, "the rejected message is not in the dead queue")

    moved = requeue_dead(publisher_app(RABBITMQ_URL, queue).connection_for_write(), queue)
    assert moved == 1
    assert queue_messages(dead_queue_name(queue)) == 0
    with celery_worker(RABBITMQ_URL, queue, log_dir=tmp_path, stop_timeout=3) as worker:
        wait_for(lambda: stored(engine, tenant) == (5, 5), SETTLE_S, lambda: describe(worker))


def test_a_queue_declared_before_the_dead_letter_exchange_keeps_working(
    queue: str, tenant: str, engine: Engine, tmp_path: Path
) -> None:
    """RabbitMQ refuses to redeclare a queue with other arguments (406): the worker, the
    producer and the aggregator use the old queue as it is and say so in one line."""
    with Connection(RABBITMQ_URL) as conn:  # as Celery declared it before this change
        Queue(queue, Exchange(queue), routing_key=queue, durable=True)(conn.default_channel).declare()
    with celery_worker(RABBITMQ_URL, queue, log_dir=tmp_path, stop_timeout=3) as worker:
        publish_batches(RABBITMQ_URL, queue, [make_message(wire_rows(tenant, 4))])
        wait_for(lambda: stored(engine, tenant) == (4, 4), SETTLE_S, lambda: describe(worker))
        assert worker.log().count("exists without the dead-letter arguments") == 1, describe(worker)
    with aggregator(RABBITMQ_URL, queue, tmp_path) as process:
        publish_batches(RABBITMQ_URL, queue, [make_message(wire_rows(tenant, 3))])
        wait_for(lambda: stored(engine, tenant) == (7, 7), SETTLE_S, process.describe)
        assert "exists without the dead-letter arguments" in process.log()
    assert "x-dead-letter-exchange" not in management_queue(queue)["arguments"]


def rabbitmqctl(node: PrivateRabbitMQ, *args: str) -> None:
    subprocess.run([str(RABBITMQ_SBIN / "rabbitmqctl"), "-n", node.nodename, *args],
                   env=node._env, check=True, capture_output=True, timeout=60)  # fmt: skip


def test_database_down_then_broker_refusing_and_restarting_loses_nothing(tmp_path: Path) -> None:
    """PostgreSQL down: every batch retries. Then the broker refuses the retries'
    publishes for a while (a max-length-0 policy: publisher confirms answer nack; Celery
    would reject the original without requeue) and restarts; then both are back:
    every event is stored once, none dead-lettered."""
    queue = f"ingest-outage-{uuid.uuid4().hex[:8]}"
    tenant = f"tenant-{uuid.uuid4().hex[:12]}"
    messages = [make_message(wire_rows(tenant, 20)) for _ in range(12)]
    expected = sum(len(m["rows"]) for m in messages)
    postgres, rabbit = PrivatePostgres(), PrivateRabbitMQ()
    try:
        postgres.start()
        postgres.migrate()
        rabbit.start()
        env = {"DATABASE_URL": postgres.url(), "INGEST_RETRY_MAX_S": "1"}
        with celery_worker(rabbit.url, queue, log_dir=tmp_path, concurrency=4, env=env, stop_timeout=3) as worker:
            postgres.stop()
            publish_batches(rabbit.url, queue, messages)
            wait_for(lambda: worker.log().count("not stored") >= 2 * len(messages), 120,
                     lambda: describe(worker, note="the batches are not retrying"))  # fmt: skip
            rabbitmqctl(rabbit, "set_policy", "--apply-to", "queues", "refuse", f"^{queue}$",
                        '{"max-length": 0, "overflow": "reject-publish"}')  # fmt: skip
            refused = worker.log().count("reject requeue=")  # Celery's line for a Reject, either way
            wait_for(lambda: worker.log().count("reject requeue=") >= refused + 4, 120,
                     lambda: describe(worker, note="no retry publish was refused"))  # fmt: skip
            rabbitmqctl(rabbit, "clear_policy", "refuse")  # (a queue over max-length at boot would be trimmed)
            rabbit.stop()
            time.sleep(2)
            rabbit.start()
            postgres.start()
            database = create_engine(postgres.url())
            try:
                wait_for(lambda: stored(database, tenant)[0] >= expected, 180,
                         lambda: describe(worker, stored=stored(database, tenant), expected=expected))  # fmt: skip
                time.sleep(3)  # anything still in flight would show up as a duplicate or an extra
                assert stored(database, tenant) == (expected, expected), describe(worker)
                with database.connect() as conn:
                    assert conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one() == 0
                with Connection(rabbit.url) as conn:
                    dead = conn.default_channel.queue_declare(dead_queue_name(queue), passive=True).message_count
                assert dead == 0, "nothing was rejected to the dead queue: every batch was retried or requeued"
            finally:
                database.dispose()
    finally:
        rabbit.close()
        postgres.close()


# --- finding 8 (worker): ingest only, one argument, bounded messages ------------------------------


@pytest.mark.parametrize("ingest", MODES, indirect=True)
def test_other_tasks_and_wrong_calls_on_the_ingest_queue_are_dead_lettered_not_run(
    ingest: Callable[..., AbstractContextManager[LoggedProcess]], broker: str, queue: str, tenant: str, engine: Engine
) -> None:
    marker = uuid.uuid4().hex
    with ingest() as process:
        publish_call(broker, queue, [], {"marker": marker}, task=ROLLUPS_RUN)
        publish_call(broker, queue, [], {"marker": marker}, task=PARTITIONS_APPLY_RETENTION)
        publish_call(broker, queue, [make_message(wire_rows(tenant, 2)), marker], {})  # two positional arguments
        publish_call(
            broker, queue, [], {"message": make_message(wire_rows(tenant, 2)), "marker": marker}
        )  # unknown kwarg
        publish_call(broker, queue, [], {"batch": marker})  # kwargs only, wrong name
        publish_batches(broker, queue, [make_message(wire_rows(tenant, 3))])
        wait_for(lambda: len(letters(engine, marker)) >= 5 and stored(engine, tenant) == (3, 3), SETTLE_S,
                 lambda: info(process, letters=letters(engine, marker), stored=stored(engine, tenant)))  # fmt: skip
        time.sleep(1)
        log = process.log()
    rows = letters(engine, marker)
    found = [reason for _, reason, _ in rows]
    assert len(rows) == 5, found
    assert {source for source, _, _ in rows} == {SOURCE_QUEUE}
    assert sum(reasons.unknown_task(ROLLUPS_RUN) in r for r in found) == 1, found
    assert sum(reasons.unknown_task(PARTITIONS_APPLY_RETENTION) in r for r in found) == 1, found
    assert sum(r.startswith(reasons.INVALID_TASK_MESSAGE) and "takes one argument" in r for r in found) == 3, found
    assert "Task rollups.run" not in log and "rolled up" not in log, log[-3000:]
    assert stored(engine, tenant) == (3, 3)


@pytest.mark.parametrize("ingest", MODES, indirect=True)
def test_messages_over_the_row_or_byte_cap_are_dead_lettered_whole(
    ingest: Callable[..., AbstractContextManager[LoggedProcess]], broker: str, queue: str, tenant: str, engine: Engine
) -> None:
    max_rows, max_bytes = 50, 40_000
    many = wire_rows(f"{tenant}-rows", max_rows + 1)  # small rows: under the byte cap
    big = wire_rows(f"{tenant}-bytes", 12, error_type="e" * 4000)  # few rows: over the byte cap
    with ingest(INGEST_MAX_ROWS_PER_MESSAGE=str(max_rows), INGEST_MAX_MESSAGE_BYTES=str(max_bytes)) as process:
        publish_batches(broker, queue, [make_message(many), make_message(big),
                                              make_message(wire_rows(tenant, max_rows))])  # fmt: skip
        wait_for(lambda: len(letters(engine, f"{tenant}-")) >= 2 and stored(engine, tenant)[0] == max_rows,
                 SETTLE_S, lambda: info(process, letters=[r[:2] for r in letters(engine, f"{tenant}-")]))  # fmt: skip
    assert stored(engine, f"{tenant}-rows") == (0, 0) and stored(engine, f"{tenant}-bytes") == (0, 0)
    by_reason = {reason: payload for _, reason, payload in letters(engine, f"{tenant}-")}
    assert len(by_reason) == 2, list(by_reason)
    rows_reason = next(r for r in by_reason if f"{reasons.TOO_MANY_ROWS}=50" in r)
    assert f"has {max_rows + 1} rows" in rows_reason
    bytes_reason = next(r for r in by_reason if r.startswith(reasons.TOO_LARGE) and f"_BYTES={max_bytes}" in r)
    assert f"truncated to {max_bytes} bytes" in bytes_reason
    kept = json.loads(by_reason[bytes_reason])
    assert kept["body_truncated_from_bytes"] > max_bytes and len(kept["body"]) <= max_bytes


# --- finding 5: a poisoned message is dead-lettered or parked, never looped on ---------------------


@pytest.mark.parametrize("ingest", [*MODES, TASK_ON_REDIS], indirect=True)
def test_nul_and_control_characters_are_dead_lettered_and_the_rest_lands(
    ingest: Callable[..., AbstractContextManager[LoggedProcess]], broker: str, queue: str, tenant: str, engine: Engine
) -> None:
    marker = uuid.uuid4().hex
    with ingest() as process:
        # a content type holding NUL and ESC (quoted in the reason)
        publish_raw(broker, queue, f"{{not json {marker}".encode(), content_type="application/\x00json\x1b[2J")
        # a header holding NUL: the task name, quoted in the reason
        publish_raw(
            broker, queue, json.dumps([[marker], {}, {}]).encode(), headers=task_headers(f"evil\x00task\x07{marker}")
        )
        # a body holding NUL and control characters, in and out of the JSON strings
        publish_raw(broker, queue, b"\x00\x01{" + marker.encode() + b"\x1b\x00")
        bad_row = wire_rows(tenant, 1, user_id=f"{marker}\x00\x1b[31m")[0]
        publish_batches(broker, queue, [make_message([bad_row, *wire_rows(tenant, 4)])])
        publish_batches(broker, queue, [make_message(wire_rows(tenant, 6))])
        wait_for(lambda: len(letters(engine, marker)) >= 4 and stored(engine, tenant) == (10, 10), SETTLE_S,
                 lambda: info(process, letters=letters(engine, marker), stored=stored(engine, tenant)))  # fmt: skip
        time.sleep(2)
        log = process.log()
    rows = letters(engine, marker)
    assert len(rows) == 4, rows
    found = " | ".join(reason for _, reason, _ in rows)
    assert "\x00" not in found and "\x1b" not in found
    assert "\\x00" in found  # the NUL of the content type or task name, escaped
    # nothing loops: no message went back to the queue
    assert "goes back to the queue" not in log and "not stored" not in log, log[-3000:]


def _refuse_dead_letters_holding(engine: Engine, marker: str) -> None:
    """A database-side refusal that is about the message (not an outage): a trigger."""
    with engine.begin() as conn:
        conn.execute(
            text(f"""
            CREATE OR REPLACE FUNCTION h4_refuse() RETURNS trigger AS $$
            BEGIN
                IF NEW.payload LIKE '%{marker}%' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )  # marker is a uuid hex: no quoting issue
        conn.execute(text("DROP TRIGGER IF EXISTS h4_refuse ON dead_letters"))
        conn.execute(
            text("CREATE TRIGGER h4_refuse BEFORE INSERT ON dead_letters FOR EACH ROW EXECUTE FUNCTION h4_refuse()")
        )


@pytest.fixture
def refusing_trigger(engine: Engine) -> Iterator[Callable[[str], None]]:
    yield lambda marker: _refuse_dead_letters_holding(engine, marker)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS h4_refuse ON dead_letters"))
        conn.execute(text("DROP FUNCTION IF EXISTS h4_refuse()"))


@pytest.mark.parametrize("ingest", [*MODES, TASK_ON_REDIS], indirect=True)
def test_a_message_that_cannot_be_dead_lettered_is_parked_not_looped_on(
    ingest: Callable[..., AbstractContextManager[LoggedProcess]],
    broker: str,
    queue: str,
    tenant: str,
    engine: Engine,
    refusing_trigger: Callable[[str], None],
) -> None:
    marker = uuid.uuid4().hex
    refusing_trigger(marker)
    with ingest(INGEST_RETRY_MAX_S="1") as process:
        publish_raw(broker, queue, f"{{not json {marker}".encode())  # dead letter refused by the trigger
        bad_row = wire_rows(tenant, 1, user_id=f"{marker}-\x00")[0]
        publish_batches(broker, queue, [make_message([bad_row, *wire_rows(tenant, 2)])])
        publish_batches(broker, queue, [make_message(wire_rows(tenant, 5))])
        wait_for(
            lambda: queue_messages(dead_queue_name(queue), broker) >= 2 and stored(engine, tenant)[0] >= 5,
            SETTLE_S,
            lambda: info(process, parked=queue_messages(dead_queue_name(queue), broker), stored=stored(engine, tenant)),
        )
        time.sleep(2)
        assert queue_messages(dead_queue_name(queue), broker) == 2, info(process)
        assert process.log().count("parked a") == 2, info(process)
    assert stored(engine, tenant) == (5, 5)  # the flush-mates of the parked batch were not stored with it
    assert letters(engine, marker) == []
    # After the cause is removed, the operator moves them back and they are dead-lettered as usual.
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS h4_refuse ON dead_letters"))
    assert requeue_dead(publisher_app(broker, queue).connection_for_write(), queue) == 2
    with ingest() as process:
        wait_for(lambda: len(letters(engine, marker)) == 2 and stored(engine, tenant) == (7, 7), SETTLE_S,
                 lambda: info(process, letters=letters(engine, marker), stored=stored(engine, tenant)))  # fmt: skip


def test_cli_requeue_broker_moves_the_dead_queue_back(queue: str) -> None:
    dead = dead_queue_name(queue)
    with Connection(RABBITMQ_URL) as conn:
        producer = conn.Producer()
        for n in range(3):
            producer.publish(json.dumps([[n], {}, {}]).encode(), routing_key=dead, declare=[Queue(dead)], retry=True,
                             content_type="application/json", content_encoding="utf-8",
                             headers=task_headers())  # fmt: skip
    env = {**os.environ, "CELERY_BROKER_URL": RABBITMQ_URL, "INGEST_QUEUE": queue}
    first = subprocess.run([sys.executable, "-m", "cli", "dead-letters", "requeue-broker", "--limit", "2"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert f"moved 2 messages from {dead} back to {queue}" in first.stdout
    rest = subprocess.run([sys.executable, "-m", "cli", "dead-letters", "requeue-broker"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "moved 1 messages" in rest.stdout, rest.stdout + rest.stderr
    assert (queue_messages(queue), queue_messages(dead)) == (3, 0)


def test_only_errors_caused_by_the_data_count_as_poison(engine: Engine) -> None:
    """Real errors from PostgreSQL and the driver: the data's fault parks, anything else waits."""

    def error_of(statement: str, params: dict[str, Any] | None = None, url: str | None = None) -> BaseException:
        target = create_engine(url) if url else engine
        try:
            with target.connect() as conn:
                conn.execute(text(statement), params or {})
        except Exception as exc:  # noqa: BLE001 - the error is what is tested
            return exc
        finally:
            if url:
                target.dispose()
        raise AssertionError(f"{statement} did not fail")

    assert caused_by_message(error_of("SELECT CAST(:v AS integer)", {"v": "x" * 10}))  # 22P02
    assert caused_by_message(error_of("SELECT :v", {"v": "a\x00b"}))  # the driver refuses NUL
    assert caused_by_message(error_of("DO $$ BEGIN RAISE EXCEPTION 'refused'; END $$"))  # P0001
    assert not caused_by_message(error_of("SELECT * FROM h4_no_such_table"))  # a bug or a missing migration
    assert not caused_by_message(error_of("SELECT 1", url="postgresql+psycopg2://postgres@127.0.0.1:1/x"))  # down
    assert not caused_by_message(error_of("SET statement_timeout = 1; SELECT pg_sleep(1)"))  # a timeout
