"""The producer client: ``track()`` in the request path, publishing off it.

``track`` validates (raising ValueError/TypeError naming the field), appends
one row to an in-process buffer and returns: a few microseconds, no I/O, no
lock. A background thread publishes the buffer as micro-batches of up to
``producer_batch_size`` events, at least every ``producer_flush_interval_ms``.

When the broker is slow or down the thread retries with exponential backoff
while ``track`` keeps buffering. The buffer is bounded: once it holds
``producer_buffer_max_events``, ``track`` refuses the new event, returns
False and counts it in ``stats().dropped_buffer_full`` (an event dropped is
never silent). At interpreter exit the buffer is flushed for up to
``producer_exit_flush_timeout_s``; what cannot be published by then is logged
with its count.

Forked web workers (gunicorn, uvicorn --workers): the child starts with an
empty buffer and its own thread and connection; the parent's buffered events
stay the parent's to publish, so none is sent twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery

import celeryconfig
from config import Settings, get_settings
from producer.ids import uuid7_hex_batch
from producer.publisher import BatchPublisher
from schema.event import (
    MAX_ERROR_TYPE_LEN,
    MAX_FEATURE_NAME_LEN,
    MAX_MODEL_LEN,
    MAX_TENANT_ID_LEN,
    MAX_USER_ID_LEN,
    WIRE_FIELDS,
    WIRE_VERSION,
    check_count,
    check_latency,
    check_status,
    check_str,
    check_tokens_used,
    timestamp_to_us,
)

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.05
IDLE_POLL_S = 0.05  # how often flush() re-checks while it waits
EVENT_ID_INDEX = WIRE_FIELDS.index("event_id")
TIMESTAMP_INDEX = WIRE_FIELDS.index("timestamp_us")


@dataclass(frozen=True)
class TrackerStats:
    published: int
    buffered: int
    in_flight: int
    dropped_buffer_full: int
    publish_failures: int


def _event_id_hex(event_id: object) -> str | None:
    if event_id is None:
        return None  # assigned by the publishing thread, off the request path
    try:
        return uuid.UUID(str(event_id)).hex
    except ValueError:
        raise ValueError(f"event_id must be a UUID, got {event_id!r}") from None


class Tracker:
    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._batch_size = self._settings.producer_batch_size
        self._max_events = self._settings.producer_buffer_max_events
        self._interval_s = self._settings.producer_flush_interval_ms / 1000
        self._reset()
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (t := this()) and t._reset())
        atexit.register(lambda: (t := this()) and t.close())

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child."""
        self._pid = os.getpid()
        self._buffer: deque[list[Any]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._in_flight = 0
        self._published = 0
        self._dropped = 0
        self._publish_failures = 0

    # --- request path ---------------------------------------------------------

    def track(
        self,
        *,
        tenant_id: str,
        feature_name: str,
        user_id: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        latency_ms: int | float = 0,
        status: str = "success",
        model: str | None = None,
        error_type: str | None = None,
        tokens_used: int | None = None,
        timestamp: datetime | None = None,
        event_id: uuid.UUID | str | None = None,
    ) -> bool:
        """Record one AI call. Returns False if the full buffer refused it."""
        input_tokens = check_count("input_tokens", input_tokens)
        output_tokens = check_count("output_tokens", output_tokens)
        row = [
            _event_id_hex(event_id),
            check_str("tenant_id", tenant_id, MAX_TENANT_ID_LEN),
            check_str("feature_name", feature_name, MAX_FEATURE_NAME_LEN),
            check_str("user_id", user_id, MAX_USER_ID_LEN),
            check_str("model", model, MAX_MODEL_LEN, optional=True),
            input_tokens,
            output_tokens,
            check_tokens_used(tokens_used, input_tokens, output_tokens),
            check_latency(latency_ms),
            check_status(status),
            check_str("error_type", error_type, MAX_ERROR_TYPE_LEN, optional=True),
            time.time_ns() // 1000 if timestamp is None else timestamp_to_us(timestamp),
        ]
        if self._thread is None or self._pid != os.getpid():
            self._start()
        buffer = self._buffer
        if len(buffer) >= self._max_events:
            self._dropped += 1
            return False
        buffer.append(row)
        if len(buffer) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._pid != os.getpid():
                self._reset()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="analytics-producer", daemon=True
                )
                self._thread.start()

    # --- control --------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Publish everything buffered; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._buffer or self._in_flight:
                if self._thread is None:
                    self._start()
                self._wake.set()
                remaining = IDLE_POLL_S if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, IDLE_POLL_S))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (bounded), then stop the thread. Called at interpreter exit."""
        if self._pid != os.getpid() or self._thread is None:
            return
        if timeout is None:
            timeout = self._settings.producer_exit_flush_timeout_s
        if not self.flush(timeout):
            logger.error(
                "analytics producer: %d events could not be published before exit",
                len(self._buffer) + self._in_flight,
            )
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=1.0)

    def stats(self) -> TrackerStats:
        return TrackerStats(
            published=self._published,
            buffered=len(self._buffer),
            in_flight=self._in_flight,
            dropped_buffer_full=self._dropped,
            publish_failures=self._publish_failures,
        )

    # --- publishing thread ----------------------------------------------------

    def _run(self) -> None:
        app = Celery("analytics-producer", set_as_current=False)
        app.conf.update(celeryconfig.build(self._settings))
        publisher = BatchPublisher(app, self._settings)
        try:
            while not self._closing:
                self._wake.wait(self._interval_s)
                self._wake.clear()
                while self._buffer and not self._closing:
                    self._publish_next(publisher)
        finally:
            publisher.close()

    def _publish_next(self, publisher: BatchPublisher) -> None:
        buffer = self._buffer
        size = min(len(buffer), self._batch_size)
        self._in_flight = size  # before popping, so flush() never sees a gap
        rows = [buffer.popleft() for _ in range(size)]
        missing = [row for row in rows if row[EVENT_ID_INDEX] is None]
        for row, event_id in zip(missing, uuid7_hex_batch([r[TIMESTAMP_INDEX] for r in missing])):
            row[EVENT_ID_INDEX] = event_id
        message = {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": rows}
        if self._publish_with_retry(publisher, message, size):
            self._published += size
        else:
            buffer.extendleft(reversed(rows))  # closing: leave them counted as unpublished
        with self._idle:
            self._in_flight = 0
            self._idle.notify_all()

    def _publish_with_retry(self, publisher: BatchPublisher, message: dict[str, Any], size: int) -> bool:
        backoff = BACKOFF_START_S
        while True:
            try:
                publisher.publish(message, size)
                return True
            except Exception as exc:  # noqa: BLE001 - whatever failed, the batch is kept
                self._publish_failures += 1
                logger.warning(
                    "analytics producer: publish of %d events failed (%s: %s); retry in %.2fs",
                    size, type(exc).__name__, exc, backoff,
                )
            if self._closing:
                return False
            time.sleep(backoff)
            backoff = min(backoff * 2, self._settings.producer_retry_max_s)
