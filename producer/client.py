"""The producer client: ``track()`` in the request path, publishing off it.

``track`` validates (raising ValueError/TypeError naming the field), appends
one row to an in-process buffer and returns: a few microseconds, no I/O, no
lock. A background thread publishes the buffer as micro-batches of up to
``producer_batch_size`` events, at least every ``producer_flush_interval_ms``.

When the broker is slow or down the thread retries with exponential backoff
and, once per flush interval, moves the buffer to the on-disk spool
(producer.spool), replayed in order when the broker is back or by the next
process that starts. The loss window of a hard crash (SIGKILL, power) is
therefore one flush interval: the events tracked since the last publish or
spool write. The memory buffer is bounded: once it holds
``producer_buffer_max_events`` (only reachable when the spool is disabled or
cannot be written), ``track`` refuses the new event, returns False and counts
it in ``stats().dropped_buffer_full``: an event dropped is never silent. At
interpreter exit the buffer is published, or spooled, for up to
``producer_exit_flush_timeout_s``.

Forked web workers (gunicorn, uvicorn --workers): the child starts with an
empty buffer and its own thread and connection; the parent's buffered events
stay the parent's to publish, so none is sent twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery

import celeryconfig
from config import Settings, get_settings
from monitoring import metrics
from producer.ids import uuid7_hex_batch
from producer.publisher import BatchPublisher
from producer.resend import RecentMessages
from producer.spool import Spool, SpoolFull
from retry_policy import Backoff
from schema.event import (
    MAX_ERROR_TYPE_LEN,
    MAX_FEATURE_NAME_LEN,
    MAX_MODEL_LEN,
    MAX_PROVIDER_LEN,
    MAX_TENANT_ID_LEN,
    MAX_USER_ID_LEN,
    WIRE_FIELDS,
    WIRE_VERSION,
    check_count,
    check_latency,
    check_status,
    check_str,
    check_time_to_first_token,
    check_timestamp,
    check_token_buckets,
    check_tokens_used,
)
from tasks.broker import AMQP_CLASS

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.05
IDLE_POLL_S = 0.05  # how often flush() re-checks while it waits
CLOSE_JOIN_S = 2.0
FORK_WAIT_S = 5.0  # longest a fork waits for the publishing thread to finish a step
EVENT_ID_INDEX = WIRE_FIELDS.index("event_id")
TIMESTAMP_INDEX = WIRE_FIELDS.index("timestamp_us")


def _if_alive(ref: weakref.ref[Tracker], method: Callable[[Tracker], None]) -> Callable[[], None]:
    """A hook calling ``method`` on the tracker while it exists (the hook must not keep it alive)."""

    def hook() -> None:
        tracker = ref()
        if tracker is not None:
            method(tracker)

    return hook


@dataclass(frozen=True)
class TrackerStats:
    published: int
    buffered: int
    spooled: int
    in_flight: int
    dropped_buffer_full: int
    publish_failures: int
    resent: int  # events published again after a Redis outage (producer.resend)
    spool_full: bool = False  # the spool reached PRODUCER_SPOOL_MAX_BYTES: events wait in memory
    spool_full_episodes: int = 0  # times it did (one per episode)


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
        self._max_future_us = self._settings.event_max_future_skew_s * 1_000_000
        self._reset()
        this = weakref.ref(self)
        os.register_at_fork(
            before=_if_alive(this, Tracker._before_fork),
            after_in_parent=_if_alive(this, Tracker._after_fork_in_parent),
            after_in_child=_if_alive(this, Tracker._reset),
        )
        atexit.register(_if_alive(this, Tracker.close))

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child."""
        self._pid = os.getpid()
        inherited: Spool | None = getattr(self, "_spool", None)
        if inherited is not None:
            inherited.abandon()  # the parent's segments stay the parent's
        spool_dir = self._settings.producer_spool_dir
        # One directory per queue: a replayed batch goes where it was meant to go.
        queue_dir = re.sub(r"[^A-Za-z0-9_.-]", "_", self._settings.ingest_queue)
        self._spool = Spool(Path(spool_dir) / queue_dir, self._settings.producer_spool_max_bytes) if spool_dir else None
        self._buffer: deque[list[Any]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._start_lock = threading.Lock()
        # Held by the publishing thread while it works (not while it waits).
        self._busy = threading.Lock()
        self._fork_holds_busy = False
        self._thread: threading.Thread | None = None
        self._closing = False
        self._in_flight = 0
        self._published = 0
        self._dropped = 0
        self._publish_failures = 0
        window_s = self._settings.producer_redis_resend_window_s
        self._recent = RecentMessages(window_s) if self._settings.broker_is_redis and window_s > 0 else None
        self._outage_at: float | None = None  # monotonic time of the first failed publish since the last resend
        self._resent = 0
        self._spool_full = False  # in a spool-full episode (logged and counted once)
        self._spool_full_episodes = 0

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
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        provider: str | None = None,
        time_to_first_token_ms: int | float | None = None,
    ) -> bool:
        """Record one AI call. Returns False if the full buffer refused it.

        Token buckets as OpenTelemetry GenAI counts them: ``input_tokens``
        includes ``cache_read_tokens`` and ``cache_write_tokens``;
        ``output_tokens`` includes ``reasoning_tokens``. ``provider`` names the
        API's provider ("openai", "anthropic", ...; gen_ai.provider.name).
        ``time_to_first_token_ms`` is how long a streamed call waited for its
        first token (rounded like ``latency_ms``, at most ``latency_ms``); None
        for a call that did not stream.
        """
        input_tokens = check_count("input_tokens", input_tokens)
        output_tokens = check_count("output_tokens", output_tokens)
        cache_read, cache_write, reasoning = check_token_buckets(
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens
        )
        latency = check_latency(latency_ms)
        row = [
            _event_id_hex(event_id),
            check_str("tenant_id", tenant_id, MAX_TENANT_ID_LEN),
            check_str("feature_name", feature_name, MAX_FEATURE_NAME_LEN),
            check_str("user_id", user_id, MAX_USER_ID_LEN),
            check_str("model", model, MAX_MODEL_LEN, optional=True),
            input_tokens,
            output_tokens,
            check_tokens_used(tokens_used, input_tokens, output_tokens),
            latency,
            check_status(status),
            check_str("error_type", error_type, MAX_ERROR_TYPE_LEN, optional=True),
            (
                time.time_ns() // 1000
                if timestamp is None
                else check_timestamp(
                    timestamp,
                    self._max_future_us,
                    max_past_age_days=self._settings.event_max_past_age_days,
                    retention_months=self._settings.partition_retention_months,
                )
            ),
            cache_read,
            cache_write,
            reasoning,
            None if provider is None else check_str("provider", provider, MAX_PROVIDER_LEN, optional=True),
            None if time_to_first_token_ms is None else check_time_to_first_token(time_to_first_token_ms, latency),
        ]
        if self._thread is None or self._pid != os.getpid():
            self.start()
        buffer = self._buffer
        if len(buffer) >= self._max_events:
            self._dropped += 1
            return False
        buffer.append(row)
        if len(buffer) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def start(self) -> None:
        """Start the publishing thread now (it also starts on the first track()).

        Starting it replays what a previous process left in the spool.
        """
        with self._start_lock:
            if self._pid != os.getpid():
                self._reset()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="analytics-producer", daemon=True)
                self._thread.start()

    # --- control --------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Publish everything buffered; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._buffer or self._in_flight or (self._spool and self._spool.has_pending()):
                if self._thread is None:
                    self.start()
                self._wake.set()
                remaining = IDLE_POLL_S if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, IDLE_POLL_S))
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush (bounded), then stop the thread. Called at interpreter exit.

        Once closed, closing again returns at once (atexit calls it after an
        explicit close; with the broker down it would wait the timeout again).
        """
        if self._pid != os.getpid() or self._thread is None or self._closing:
            return
        if timeout is None:
            timeout = self._settings.producer_exit_flush_timeout_s
        published = self.flush(timeout)
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=CLOSE_JOIN_S)
        if published:
            return
        if self._spool is not None and not self._buffer:
            logger.warning(
                "analytics producer: broker unreachable at exit; %d events kept in the spool %s,"
                " published by the next process that starts",
                self._spool.pending_events(),
                self._spool.directory,
            )
        else:
            logger.error(
                "analytics producer: %d events could not be published before exit",
                len(self._buffer) + self._in_flight,
            )

    def stats(self) -> TrackerStats:
        return TrackerStats(
            published=self._published,
            buffered=len(self._buffer),
            spooled=self._spool.pending_events() if self._spool else 0,
            in_flight=self._in_flight,
            dropped_buffer_full=self._dropped,
            publish_failures=self._publish_failures,
            resent=self._resent,
            spool_full=self._spool_full,
            spool_full_episodes=self._spool_full_episodes,
        )

    # --- fork safety -----------------------------------------------------------

    def _before_fork(self) -> None:
        # Fork only while the publishing thread is idle. Its first steps import
        # modules lazily (celery, kombu, the transport); a fork while it holds
        # an import lock leaves that lock held for ever in the child, whose own
        # publishing thread then blocks on it and never publishes.
        self._fork_holds_busy = self._busy.acquire(timeout=FORK_WAIT_S)

    def _after_fork_in_parent(self) -> None:
        if self._fork_holds_busy:
            self._fork_holds_busy = False
            self._busy.release()

    # --- publishing thread ----------------------------------------------------

    def _run(self) -> None:
        with self._busy:
            app = Celery("analytics-producer", set_as_current=False, amqp=AMQP_CLASS)
            app.conf.update(celeryconfig.build(self._settings))
            publisher = BatchPublisher(app, self._settings)
            spool = self._spool
            if spool is not None and (claimed := spool.claim_orphans()):
                logger.warning("analytics producer: replaying %d spool segments left by a previous process", claimed)
        # Without jitter, as before: the thread wakes once per flush interval anyway.
        backoff = Backoff(BACKOFF_START_S, self._settings.producer_retry_max_s, jitter=False)
        retry_at = 0.0
        failures = 0  # consecutive failed drains: the retry number of the next pause
        try:
            while True:
                self._wake.wait(self._interval_s)
                self._wake.clear()
                try:
                    with self._busy:
                        drained = time.monotonic() < retry_at or self._drain(publisher)
                except Exception:
                    logger.exception("analytics producer: unexpected error while publishing")
                    drained = False
                if not drained and time.monotonic() >= retry_at:
                    retry_at = time.monotonic() + backoff.delay(failures)
                    failures += 1
                elif drained and time.monotonic() >= retry_at:
                    failures = 0
                broker_down = time.monotonic() < retry_at
                if spool is not None and (broker_down or self._closing):
                    # At most one flush interval of events is only in memory.
                    with self._busy:
                        self._spill(spool)
                if self._closing:
                    return
        finally:
            publisher.close()

    def _take_batch(self) -> list[list[Any]]:
        buffer = self._buffer
        size = min(len(buffer), self._batch_size)
        self._in_flight = size  # before popping, so flush() never sees a gap
        rows = [buffer.popleft() for _ in range(size)]
        missing = [row for row in rows if row[EVENT_ID_INDEX] is None]
        for row, event_id in zip(missing, uuid7_hex_batch([r[TIMESTAMP_INDEX] for r in missing]), strict=True):
            row[EVENT_ID_INDEX] = event_id  # fixed before the first publish: retries are idempotent
        return rows

    def _batch_done(self) -> None:
        with self._idle:
            self._in_flight = 0
            self._idle.notify_all()

    def _drain(self, publisher: BatchPublisher) -> bool:
        """Publish the spool (older) then the buffer; False at the first failure.

        After an outage on Redis, the messages of the last few seconds go first, again.
        """
        if self._outage_at is not None and self._recent is not None:
            recent = self._recent.before(self._outage_at)
            for message, events in recent:
                if not self._try_publish(publisher, message, events):
                    return False
                self._resent += events
            if recent:
                logger.warning(
                    "analytics producer: the broker is back; published again the %d events"
                    " of the last %g s (PRODUCER_REDIS_RESEND_WINDOW_S)",
                    sum(events for _, events in recent),
                    self._settings.producer_redis_resend_window_s,
                )
        self._outage_at = None
        if self._spool is not None:
            for segment in self._spool.segments_to_replay():
                for message in segment.messages():
                    events = len(message.get("rows", ()))
                    if not self._try_publish(publisher, message, events):
                        return False
                    self._remember(message, events)
                self._published += segment.events
                self._spool.replayed(segment)
                self._batch_done()
            self._spool_has_room(self._spool)
        while self._buffer:
            rows = self._take_batch()
            message = {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": rows}
            published = self._try_publish(publisher, message, len(rows))
            if published:
                self._published += len(rows)
                self._remember(message, len(rows))
            else:
                self._buffer.extendleft(reversed(rows))  # ids stay assigned
            self._batch_done()
            if not published:
                return False
        return True

    def _remember(self, message: dict[str, Any], events: int) -> None:
        if self._recent is not None:
            self._recent.add(message, events)

    def _try_publish(self, publisher: BatchPublisher, message: dict[str, Any], size: int) -> bool:
        try:
            publisher.publish(message, size)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever failed, the caller keeps the batch
            self._publish_failures += 1
            if self._outage_at is None:
                self._outage_at = time.monotonic()
            logger.warning(
                "analytics producer: publish of %d events failed (%s: %s); will retry",
                size,
                type(exc).__name__,
                exc,
            )
            return False

    def _spill(self, spool: Spool) -> None:
        while self._buffer:
            rows = self._take_batch()
            try:
                spool.write({"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": rows}, len(rows))
            except SpoolFull:
                self._buffer.extendleft(reversed(rows))
                self._spool_reached_cap(spool)
                return
            except OSError as exc:
                self._buffer.extendleft(reversed(rows))
                logger.error("analytics producer: cannot write the spool in %s: %s", spool.directory, exc)
                return
            finally:
                self._batch_done()
            self._spool_has_room(spool)

    def _spool_reached_cap(self, spool: Spool) -> None:
        """Once per episode: a log line and the metric (events wait in the memory buffer)."""
        if self._spool_full:
            return
        self._spool_full = True
        self._spool_full_episodes += 1
        metrics.producer_spool_full()
        logger.error(
            "analytics producer: spool %s reached PRODUCER_SPOOL_MAX_BYTES=%d; events wait in memory "
            "(up to PRODUCER_BUFFER_MAX_EVENTS=%d, beyond that they are dropped and counted)",
            spool.directory, spool.max_bytes, self._max_events,
        )  # fmt: skip

    def _spool_has_room(self, spool: Spool) -> None:
        if self._spool_full:
            self._spool_full = False
            logger.warning("analytics producer: spool %s below PRODUCER_SPOOL_MAX_BYTES again", spool.directory)
