"""Messages that are not ours, put straight on the ingest queue, are dead-lettered, never dropped."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import Engine, text

from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from schema import reasons
from storage.dead_letters import SOURCE_QUEUE
from tasks.broker import ingest_queue
from tasks.names import INGEST_WRITE_BATCH

BROKERS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
    "redis": "redis://127.0.0.1:6379/6",
}


def dead_letters_for(engine: Engine, marker: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT source, reason FROM dead_letters WHERE payload LIKE :m ORDER BY reason"),
            {"m": f"%{marker}%"},
        ).all()


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_foreign_messages_are_dead_lettered_and_the_worker_keeps_going(
    broker: str, engine: Engine, tmp_path: Path
) -> None:
    url = BROKERS[broker]
    queue = f"poison-{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    with celery_worker(url, queue, log_dir=tmp_path) as worker, Connection(url) as conn:
        producer = conn.Producer()
        target = ingest_queue(queue, dead_letter_exchange=True)
        publish = lambda body, **kw: producer.publish(  # noqa: E731
            body, routing_key=queue, declare=[target], retry=True, **kw
        )
        # not JSON although it says so
        publish(f"{{broken json {marker}".encode(), content_type="application/json", content_encoding="utf-8")
        # a serializer the worker does not accept
        publish(f"pickle? {marker}".encode(), content_type="application/x-python-serialize",
                content_encoding="binary")  # fmt: skip
        # JSON, but not a task message
        publish(json.dumps({"hello": marker}).encode(), content_type="application/json", content_encoding="utf-8")
        # a task message naming a task we do not have
        publish(json.dumps([[marker], {}, {}]).encode(), content_type="application/json", content_encoding="utf-8",
                headers={"task": "somebody.elses_task", "id": str(uuid.uuid4()), "lang": "py",
                         "argsrepr": "", "kwargsrepr": ""})  # fmt: skip

        rows = wait_for(lambda: len(d := dead_letters_for(engine, marker)) >= 4 and d, 30,
                        lambda: describe(worker, dead_letters=dead_letters_for(engine, marker)))  # fmt: skip
        assert worker.alive(), describe(worker)
        found = " | ".join(reason for _, reason in rows)
        assert {source for source, _ in rows} == {SOURCE_QUEUE}
        assert reasons.COULD_NOT_DECODE in found
        assert reasons.unknown_task("somebody.elses_task") in found
        assert reasons.NOT_A_TASK_MESSAGE in found
        assert len(rows) == 4, found

        # The queue is not blocked: a good batch behind the poison is stored.
        from tasks.app import app

        tenant = f"after-poison-{marker[:8]}"
        event_id = uuid.uuid4().hex
        good = {"v": 1, "fields": ["event_id", "tenant_id", "feature_name", "user_id", "model", "input_tokens",
                                   "output_tokens", "tokens_used", "latency_ms", "status", "error_type",
                                   "timestamp_us"],
                "rows": [[event_id, tenant, "summarization", "u1", None, 1, 2, None, 5, "success", None,
                          time.time_ns() // 1000]]}  # fmt: skip
        app.send_task(INGEST_WRITE_BATCH, args=[good], queue=queue, connection=conn)

        def stored() -> int:
            with engine.connect() as c:
                return c.execute(text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"),
                                 {"t": tenant}).scalar_one()  # fmt: skip

        wait_for(lambda: stored() == 1, 30, lambda: describe(worker))
