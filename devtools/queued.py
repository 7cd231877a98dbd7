"""What the producer published: the events of the ingest messages waiting in a queue, read off the broker.

For tests of what calls ``track()`` (the producer's helpers, the demo app):
they read the real messages a real Tracker published, no worker involved.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection

from tasks.broker import ingest_queue


def take_queued_events(broker_url: str, queue: str) -> list[dict[str, Any]]:
    """Every event of every ingest message in ``queue``, in order, as field -> value; the messages are consumed."""
    events: list[dict[str, Any]] = []
    with Connection(broker_url) as conn:
        bound = ingest_queue(queue, dead_letter_exchange=not broker_url.startswith("redis"))(conn.default_channel)
        while True:
            try:
                message = bound.get(no_ack=True)
            except conn.channel_errors:  # RabbitMQ: no such queue, nothing was ever published to it
                break
            if message is None:
                break
            args, _kwargs, _embed = message.decode()
            batch = args[0]
            events.extend(dict(zip(batch["fields"], row, strict=True)) for row in batch["rows"])
    return events


def assert_event(event: dict[str, Any], **expected: Any) -> None:
    """``event`` has the ``expected`` field values, and the totals a valid event has."""
    assert {name: event[name] for name in expected} == expected
    assert event["tokens_used"] == event["input_tokens"] + event["output_tokens"]
    assert event["latency_ms"] >= 0


def assert_first_token_after(event: dict[str, Any], pause_s: float) -> None:
    """A stream replayed with ``pause_s`` before its first content chunk and again before its end: the time
    to first token is measured at that chunk, neither at the request nor at the end."""
    ttft = event["time_to_first_token_ms"]
    assert ttft is not None and ttft >= pause_s * 1000, "time to first token is measured at the first content chunk"
    assert event["latency_ms"] - ttft >= pause_s * 1000, "...not at the stream's end"
