"""The delivery tasks in a real Celery worker (RabbitMQ): dispatch enqueues, deliver sends; a worker killed
in the middle of a request has the message redelivered and the notification delivered, with the same id."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import Engine, text

from devtools.processes import wait_for
from devtools.webhook_receiver import WebhookReceiver
from devtools.workers import celery_worker, describe
from tasks.app import app
from tasks.broker import dead_queue_name
from tasks.names import WEBHOOKS_DISPATCH

DELIVERY_TIMEOUT_S = 30.0
UNUSED_INGEST_SUFFIX = "-ingest-unused"
HANGING_S = 60.0  # longer than the test: the first request never gets its answer
ADD_NOTIFICATION = text(
    "INSERT INTO notifications (tenant_id, id, rule_id, kind, state, payload)"
    " VALUES (:t, :id, 3, 'reminder', 'critical', CAST(:p AS jsonb))"
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


def worker_settings(queue: str) -> dict[str, str]:
    """The test's queue as the alerts queue (not as the ingest queue: that one carries only ingest batches)."""
    return {"ALERTS_QUEUE": queue, "INGEST_QUEUE": f"{queue}{UNUSED_INGEST_SUFFIX}", "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}  # fmt: skip


@pytest.fixture
def alerts_queue(broker_url: str, queue: str) -> Iterator[str]:
    """The test's queue; the ingest queue name the worker was given is deleted too, in case it was declared."""
    yield queue
    with Connection(broker_url) as conn:
        for name in (f"{queue}{UNUSED_INGEST_SUFFIX}", dead_queue_name(f"{queue}{UNUSED_INGEST_SUFFIX}")):
            conn.default_channel.queue_delete(name)


def setup_delivery(engine: Engine, tenant: str, url: str) -> str:
    notification = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO webhooks (tenant_id, url, secret) VALUES (:t, :u, 'whsec_test')"),
                     {"t": tenant, "u": url})  # fmt: skip
        conn.execute(ADD_NOTIFICATION, {"t": tenant, "id": notification, "p": json.dumps({"rule_name": "spend"})})
    return notification


def delivery_row(engine: Engine, tenant: str) -> tuple[str, int] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, attempt FROM deliveries WHERE tenant_id = :t"), {"t": tenant}).first()
    return None if row is None else (row.status, row.attempt)


@pytest.fixture
def owned(engine: Engine, tenant: str) -> Iterator[str]:
    yield tenant
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM webhooks WHERE tenant_id = :t"), {"t": tenant})
        conn.execute(text("DELETE FROM notifications WHERE tenant_id = :t"), {"t": tenant})


@pytest.mark.brokers("rabbitmq")
def test_a_worker_killed_mid_request_redelivers_and_the_receiver_sees_one_id(
    broker_url: str, alerts_queue: str, engine: Engine, owned: str, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    notification = setup_delivery(engine, owned, receiver.url)
    queue = alerts_queue
    receiver.delay_s = HANGING_S
    with celery_worker(broker_url, queue, log_dir=tmp_path, env=worker_settings(queue), stop_timeout=2) as worker:
        app.send_task(WEBHOOKS_DISPATCH, queue=queue)
        wait_for(lambda: receiver.received, DELIVERY_TIMEOUT_S, lambda: describe(worker, received=receiver.received))
        worker.kill_group()  # in the middle of the request: the answer never comes, nothing is recorded
    assert delivery_row(engine, owned) == ("pending", 0)

    receiver.delay_s = 0.0
    with celery_worker(broker_url, queue, log_dir=tmp_path, env=worker_settings(queue), stop_timeout=2) as worker:
        wait_for(lambda: delivery_row(engine, owned) == ("delivered", 1), DELIVERY_TIMEOUT_S,
                 lambda: describe(worker, row=delivery_row(engine, owned)))  # fmt: skip
    assert receiver.notification_ids() == [notification, notification]  # the receiver deduplicates by it
