"""Valid ingest messages built and published as the producer does, for tests and tools
that drive the pipeline below ``track()``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery import Celery

import celeryconfig
from config import Settings
from producer.ids import uuid7_hex_batch
from producer.publisher import BatchPublisher
from schema.event import WIRE_FIELDS, WIRE_VERSION, timestamp_to_us


def wire_rows(tenant: str, n: int, *, timestamp: datetime | None = None, **overrides: Any) -> list[list[Any]]:
    """``n`` valid wire rows with fresh event ids, as the producer would send them."""
    ts_us = timestamp_to_us(timestamp) if timestamp else time.time_ns() // 1000
    ids = uuid7_hex_batch([ts_us] * n)
    rows = []
    for i, event_id in enumerate(ids):
        values = {
            "event_id": event_id,
            "tenant_id": tenant,
            "feature_name": "summarize",
            "user_id": f"user-{i}",
            "model": "gpt-test",
            "input_tokens": 10 + i,
            "output_tokens": 5,
            "tokens_used": 15 + i,
            "latency_ms": 120,
            "status": "success",
            "error_type": None,
            "timestamp_us": ts_us,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "provider": None,
            "time_to_first_token_ms": None,
            **overrides,
        }
        rows.append([values[name] for name in WIRE_FIELDS])
    return rows


def make_message(rows: list[list[Any]]) -> dict[str, Any]:
    """The ingest task's argument for ``rows`` (the wire format's columnar batch)."""
    return {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": rows}


@contextmanager
def batch_publisher(settings: Settings) -> Iterator[BatchPublisher]:
    """The producer's own publishing path (celeryconfig.build + BatchPublisher)."""
    app = Celery("test-publisher", set_as_current=False)
    app.conf.update(celeryconfig.build(settings))
    publisher = BatchPublisher(app, settings)
    try:
        yield publisher
    finally:
        publisher.close()
