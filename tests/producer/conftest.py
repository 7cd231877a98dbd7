"""Fixtures of the producer's helper tests: a real Tracker on a queue of the test's own, and what it published."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config import Settings
from devtools.queued import take_queued_events
from producer import Tracker

FLUSH_TIMEOUT_S = 10.0
FLUSH_INTERVAL_MS = 20


@pytest.fixture
def tracker(broker_url: str, queue: str) -> Iterator[Tracker]:
    tracker = Tracker(Settings(celery_broker_url=broker_url, ingest_queue=queue, producer_spool_dir="",
                               producer_flush_interval_ms=FLUSH_INTERVAL_MS))  # fmt: skip
    yield tracker
    tracker.close()


@pytest.fixture
def published(tracker: Tracker, broker_url: str, queue: str) -> Callable[[], list[dict[str, Any]]]:
    """Flushes ``tracker`` and returns the events it published since the last call, read off the broker."""

    def read() -> list[dict[str, Any]]:
        assert tracker.flush(FLUSH_TIMEOUT_S)
        return take_queued_events(broker_url, queue)

    return read
