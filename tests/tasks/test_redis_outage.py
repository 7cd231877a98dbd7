"""What a Redis outage could cost, and how it is made up for (producer.resend, tasks.consumer).

kombu's Redis transport can lose a message that a worker popped just as Redis
went down. The producer therefore publishes again what it published shortly
before a failed publish; these tests play the loss (the queue emptied behind
the producer's back) on a private redis-server that they stop and restart.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid

import pytest
import redis

from config import Settings
from devtools.servers import PrivateRedis
from producer import Tracker
from tasks.consumer import _ack_that_cannot_crash

BEFORE, DURING = 400, 150
FLUSH_TIMEOUT_S = 15.0


@pytest.fixture(autouse=True)
def redis_running(redis_server: PrivateRedis) -> None:
    """Every test here begins with its private Redis (conftest's ``redis_server``) up."""
    redis_server.start()


def queued_event_ids(client: redis.Redis, queue: str) -> list[str]:
    """The event ids of every ingest message waiting in ``queue`` (kombu's Redis message layout)."""
    ids = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        message = args[0]
        position = message["fields"].index("event_id")
        ids.extend(row[position] for row in message["rows"])
    return ids


def track(tracker: Tracker, count: int, tenant: str) -> None:
    for i in range(count):
        assert tracker.track(tenant_id=tenant, feature_name="summarization", user_id=f"u{i}", input_tokens=i)


@pytest.mark.parametrize("window_s", [30.0, 0.0])
def test_after_an_outage_the_producer_publishes_the_last_seconds_again(
    redis_server: PrivateRedis, window_s: float
) -> None:
    queue = f"test-resend-{uuid.uuid4().hex[:8]}"
    tracker = Tracker(Settings(
        celery_broker_url=redis_server.url, ingest_queue=queue, producer_spool_dir="",
        producer_flush_interval_ms=50, producer_redis_resend_window_s=window_s,
    ))  # fmt: skip
    client = redis.Redis(port=redis_server.port)
    try:
        track(tracker, BEFORE, "tenant-before")
        assert tracker.flush(FLUSH_TIMEOUT_S)
        before = queued_event_ids(client, queue)
        assert len(before) == BEFORE
        client.delete(queue)  # a worker popped them and its connection died: kombu's loss window
        client.close()

        redis_server.stop()
        track(tracker, DURING, "tenant-during")  # its publish fails: the outage is felt
        assert not tracker.flush(1.0)
        redis_server.start()
        assert tracker.flush(FLUSH_TIMEOUT_S)

        client = redis.Redis(port=redis_server.port)
        queued = queued_event_ids(client, queue)
        stats = tracker.stats()
    finally:
        tracker.close(timeout=5.0)
        client.close()
    assert stats.publish_failures > 0
    if window_s:
        assert set(before) <= set(queued), "the lost messages came back"
        assert len(queued) == len(set(queued)) == BEFORE + DURING and stats.resent == BEFORE
    else:
        assert len(queued) == DURING and stats.resent == 0  # without the window they stay lost


def test_a_failed_ack_is_logged_and_does_not_reach_the_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def ack(*args: object) -> None:
        calls.append(args)
        raise AttributeError("'NoneType' object has no attribute 'connection_kwargs'")

    with caplog.at_level(logging.WARNING, logger="tasks.consumer"):
        assert _ack_that_cannot_crash(ack)("logger", ()) is None
    assert calls == [("logger", ())]
    assert "could not acknowledge a message (AttributeError" in caplog.text
