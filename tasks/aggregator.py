"""Aggregating ingest consumer: many small broker messages, one large transaction.

``python -m tasks.aggregator`` (the Procfile's ``worker`` with
``INGEST_MODE=aggregate``) consumes the same queue (``INGEST_QUEUE``) and the
same Celery task messages (``ingest.write_batch``, protocol 2, or 1) as the
Celery worker, but it does not run one transaction per message: it combines
the messages it holds into one ``store_batch`` transaction of up to
``INGEST_AGGREGATE_MAX_EVENTS`` events, and acknowledges every one of them
only after that commit. Whatever the producers send (a web process flushing
10 events every 200 ms, hundreds of them), the database sees few large
transactions.

Why a consumer of its own and not a Celery batching strategy. Buffering
Celery ``Request`` objects in the worker's main process and handing one job per
buffer to the pool (what celery-batches does) fights Celery on every
guarantee: its acks are per request and tied to the task's own outcome
(celery-batches acks before the run, or acks a failed batch; see the
design notes), the flush timer is lost on a broker reconnect, and a
pool child killed mid-batch must requeue many requests at once. Here one loop
owns the messages from delivery to acknowledgement, so each step is a few
lines with one contract (in the style of getsentry/arroyo):

1. **decode** (``decode``, main thread, per message, never raises): broker
   message → Celery task call (schema.task_message, protocol 2 or 1, as the
   Celery worker reads it) → ``schema.message.decode_message``: valid rows,
   and dead letters for invalid rows (source ``worker``) or for a message that
   is not an ``ingest.write_batch`` task at all (source ``queue``, the raw
   message, with the reasons of schema.reasons that tasks.consumer uses too:
   could not be decoded, not a Celery task message, unknown task, invalid task
   message, too large).
2. **accumulate** (``Accumulator``): holds decoded messages, in delivery order,
   until a flush is due: ``INGEST_AGGREGATE_MAX_EVENTS`` events reached, the
   oldest message waited ``INGEST_AGGREGATE_MAX_WAIT_MS``, or the broker will
   not deliver more (the prefetch window is full). A flush takes a prefix of at
   most MAX_EVENTS events (at least one message).
3. **write + commit** (``TransactionWriter``, one writer thread): the rows of
   all the flushed messages and their dead letters in ONE transaction, by the
   ingest unit of work the Celery task uses too (``storage.flush.commit_flush``:
   ``storage.events.store_batch``'s dedupe, partitions on demand, bisection of
   bad rows, one rollup batch; the metrics counted once it committed). Any error that is not about the rows
   (database down, deadlock, bug) is retried with exponential backoff and
   jitter (``INGEST_RETRY_MAX_S``), forever, while the messages stay
   unacknowledged: never acked as done. An error caused by what a message
   holds (tasks.failures: one the dead-letter insert itself refuses) is tried
   ``POISON_ATTEMPTS`` times, then the flush is written message by message
   and the message that still fails is parked on ``<queue>.dead``
   (tasks.broker), logged and counted; its flush-mates are stored.
4. **ack** (main thread): only after the commit, every message of the flush
   (a parked one: after the broker confirmed the parked copy).
   If the broker connection was lost meanwhile the acks fail and the broker
   redelivers the messages; the writes are idempotent, so the redelivery is
   stored as duplicates, dropped.

Nothing is acknowledged before its rows and dead letters commit; a process
killed anywhere (mid-accumulation, mid-INSERT, between commit and ack) leaves
its messages unacknowledged, so the broker redelivers them (RabbitMQ at once,
Redis after ``REDIS_VISIBILITY_TIMEOUT_S``) and ``store_batch`` drops what
was already stored.

Pipelining and heartbeats. The main thread does only broker I/O, decoding
and acks; the writer thread does the database. While flush N is written,
flush N+1 accumulates, so decoding overlaps the database's work. The main
thread keeps draining the connection while a write waits (on a lock, or in a
retry backoff during an outage), so AMQP heartbeats keep flowing and the
broker does not drop the connection under a long write.

Backpressure and memory: the prefetch window. The broker delivers at most
``prefetch_count`` unacknowledged messages, and that is everything this
process holds. The window is sized in *events*: about two flushes (the one
being written and the one accumulating), i.e. ``2 x MAX_EVENTS / events per
message``, the message size being the mean of the last flush (first guess:
``PRODUCER_BATCH_SIZE``), capped at ``INGEST_AGGREGATE_MAX_MESSAGES``, and
updated with ``basic.qos`` as producers change (channel-global on RabbitMQ,
as Celery does, so the running consumer follows it). So 10-event messages get
a window of 1,000 messages and 1,000-event messages one of 10: memory stays
near 2 x MAX_EVENTS decoded events whatever the producers do (until a
sudden change of message size is noticed at the next flush, at most
MAX_MESSAGES x the largest message). When the window is full and a write is
in flight, the consumer simply waits for the commit: the broker keeps the
backlog.

Stopping. SIGTERM or SIGINT: stop consuming, wait for the write in flight,
flush and commit what is buffered, ack, close (``STOP_TIMEOUT_S`` at most;
what is not committed by then stays unacknowledged and is redelivered). A
second signal exits at once, which loses nothing either.

Differences from the Celery task (``INGEST_MODE=task``). Task messages with an
``eta`` (the task path's own retries, left on the queue when switching modes)
are written at once. Any task other than ``ingest.write_batch`` on the ingest
queue is dead-lettered, not run.

RabbitMQ only. The aggregator holds many messages unacknowledged for a flush
interval plus a write; Redis' transport redelivers whatever is held longer
than its visibility timeout, so on Redis a slow write turns into a stream of
redeliveries (stored once, but written again and again), and after a kill the
redelivery waited on kombu's restore sweep for longer than our tests allow.
With a ``redis://`` broker it refuses to start; use ``INGEST_MODE=task``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu import Connection, Consumer, Queue
from kombu.message import Message
from kombu.mixins import ConsumerMixin
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import celeryconfig
from config import Settings, get_settings
from monitoring import metrics
from monitoring.escape import install_log_escaping
from schema import reasons
from schema.message import decode_message
from storage.db import make_engine, make_session_factory
from storage.dead_letters import SOURCE_QUEUE, storable_text
from storage.flush import Flush, FlushResult, commit_flush, failure_detail
from tasks.admission import kept_chars, oversized, raw_payload, task_argument
from tasks.broker import AMQP_CLASS, park
from tasks.failures import POISON_ATTEMPTS, caused_by_message
from tasks.ingest import backoff_seconds

logger = logging.getLogger(__name__)

READY_LOG = "aggregator ready"
COMMITTED_LOG = "flush committed"
STOP_TIMEOUT_S = 10.0  # warm stop: longest wait for the last commits
IDLE_POLL_S = 1.0  # drain timeout with nothing buffered: signals and heartbeats
WRITE_POLL_S = 0.01  # drain timeout while a write is in flight: notice its commit quickly
WINDOW_FLUSHES = 2  # prefetch window: the flush being written + the one accumulating
QOS_HYSTERESIS = 0.2  # change the window only when it is off by more than this share


# --- 1. decode ----------------------------------------------------------------


@dataclass
class Received:
    """One broker message, decoded: its valid rows and what goes to dead_letters."""

    message: Message
    flush: Flush
    received_at: float = field(default_factory=time.monotonic)

    @property
    def events(self) -> int:
        return self.flush.events


def decode(message: Message, max_bytes: int, max_rows: int, refusal: str | None = None) -> Received:
    """Step 1. Never raises: what cannot be stored becomes a dead letter. The body's
    size is checked before it is parsed, the row count before the rows are."""
    argument, keep_chars = None, None
    if refusal is None and (refusal := oversized(message, max_bytes)) is not None:
        keep_chars = kept_chars(max_bytes)
    if refusal is None:
        argument, refusal = task_argument(message)
    if refusal is not None:
        payload = raw_payload(message, keep_chars)
        return Received(message, Flush.refused_whole(payload, refusal, SOURCE_QUEUE))
    return Received(message, Flush.decoded(decode_message(argument, max_rows=max_rows)))


# --- 2. accumulate ---------------------------------------------------------------


class Accumulator:
    """Step 2: decoded messages in delivery order, until a flush is due."""

    def __init__(self, max_events: int, max_wait_s: float) -> None:
        self.max_events = max_events
        self.max_wait_s = max_wait_s
        self._items: deque[Received] = deque()
        self.events = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Received) -> None:
        self._items.append(item)
        self.events += item.events

    def deadline(self) -> float | None:
        """When the oldest message has waited long enough (monotonic), None if empty."""
        return self._items[0].received_at + self.max_wait_s if self._items else None

    def due(self, now: float, window_full: bool) -> bool:
        if not self._items:
            return False
        return window_full or self.events >= self.max_events or now >= self._items[0].received_at + self.max_wait_s

    def take(self) -> list[Received]:
        """The oldest messages, at most ``max_events`` events (but at least one message)."""
        taken: list[Received] = []
        events = 0
        while self._items and (not taken or events + self._items[0].events <= self.max_events):
            item = self._items.popleft()
            taken.append(item)
            events += item.events
        self.events -= events
        return taken

    def clear(self) -> int:
        dropped = len(self._items)
        self._items.clear()
        self.events = 0
        return dropped


# --- 3. write + commit ------------------------------------------------------------


class Stopped(Exception):
    """The process is stopping: a write given up while retrying; nothing was acked."""


@dataclass
class FlushReport:
    """What one flush of messages came to, over its transactions (one, unless a message was poisoned)."""

    messages: int
    events: int
    stored: int
    duplicates: int
    dead_lettered: int
    attempts: int
    seconds: float
    # messages that could neither be stored nor dead-lettered, with why: parked, not acked as stored
    parked: list[tuple[Received, str]] = field(default_factory=list)


class TransactionWriter:
    """Step 3: one flush = one transaction, retried with backoff until it commits.

    The database being unavailable is waited out, however long. A flush that
    fails ``POISON_ATTEMPTS`` times because of what it holds (tasks.failures)
    is written message by message; a message that still fails alone is handed
    back to be parked, so one poisoned message never holds up the others.
    """

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, stop: threading.Event) -> None:
        self._sessions = sessions
        self._settings = settings
        self._retry_max_s = settings.ingest_retry_max_s
        self._stop = stop

    def _commit(self, batch: list[Received]) -> FlushResult:
        """The messages' rows and dead letters in one transaction (counted in the metrics once committed)."""
        flush = Flush.join(item.flush for item in batch)
        return commit_flush(self._sessions, flush, self._settings, messages=len(batch))

    def _commit_retrying(self, batch: list[Received], give_up_on_poison: bool) -> tuple[FlushResult | None, int, str]:
        """(result, attempts, why) — result None: failed POISON_ATTEMPTS times, not the database's fault."""
        attempt = poisoned = 0
        while True:
            try:
                return self._commit(batch), attempt + 1, ""
            except Exception as exc:
                detail = failure_detail(exc)
                if caused_by_message(exc):
                    poisoned += 1
                    if give_up_on_poison and poisoned >= POISON_ATTEMPTS:
                        return None, attempt + 1, detail
                delay = backoff_seconds(attempt, self._retry_max_s)
                attempt += 1
                logger.warning(
                    "flush of %d messages (%d events) not stored (%s); retry %d in %.1fs",
                    len(batch), sum(item.events for item in batch), detail, attempt, delay,
                )  # fmt: skip
                if self._stop.wait(delay):
                    raise Stopped(f"stopping; {len(batch)} messages left unacknowledged") from exc

    def write(self, batch: list[Received]) -> FlushReport:
        started = time.monotonic()
        result, attempts, _why = self._commit_retrying(batch, give_up_on_poison=True)
        results: list[FlushResult] = []
        parked: list[tuple[Received, str]] = []
        if result is not None:
            results.append(result)
        elif len(batch) == 1:
            parked.append((batch[0], reasons.not_stored(POISON_ATTEMPTS, _why)))
        else:
            logger.error("a flush of %d messages keeps failing for a reason that is not the database's;"
                         " writing its messages one by one", len(batch))  # fmt: skip
            for item in batch:
                alone, tries, why = self._commit_retrying([item], give_up_on_poison=True)
                attempts += tries
                if alone is None:
                    parked.append((item, reasons.not_stored(POISON_ATTEMPTS, why)))
                else:
                    results.append(alone)
        return FlushReport(
            messages=len(batch),
            events=sum(r.events for r in results),
            stored=sum(r.stored for r in results),
            duplicates=sum(r.duplicates for r in results),
            dead_lettered=sum(r.dead_lettered for r in results),
            attempts=attempts,
            seconds=time.monotonic() - started,
            parked=parked,
        )


class WriterThread:
    """Runs writes one at a time off the broker thread. A daemon: a write blocked
    in the database never keeps the process from exiting (its transaction then
    rolls back, its messages were never acked)."""

    def __init__(self, write: Callable[[list[Received]], FlushReport]) -> None:
        self._write = write
        self._jobs: queue.SimpleQueue[tuple[list[Received], Future[FlushReport]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: list[Received]) -> Future[FlushReport]:
        future: Future[FlushReport] = Future()
        self._jobs.put((batch, future))
        return future

    def _run(self) -> None:
        while True:
            batch, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._write(batch))
            except BaseException as exc:  # noqa: BLE001 - handed to the broker thread
                future.set_exception(exc)


# --- the consumer: broker I/O, flush decisions, 4. ack -------------------------------


@dataclass
class InFlight:
    batch: list[Received]
    future: Future[FlushReport]


class Aggregator(ConsumerMixin):
    """Consumes ``settings.ingest_queue``; see the module docstring."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        """``engine`` is the process's (main() makes and disposes it)."""
        self.settings = settings
        self.app = Celery("analytics-aggregator", set_as_current=False, amqp=AMQP_CLASS)
        self.app.conf.update(celeryconfig.build(settings))
        # The queue as Celery declares it for send_task(queue=...), so that
        # declaring it here never conflicts with the producer's declaration.
        self.queue: Queue = self.app.amqp.queues[settings.ingest_queue]
        self.connection: Connection = self.app.connection_for_read(heartbeat=self.app.conf.broker_heartbeat)
        self.max_events = settings.ingest_aggregate_max_events
        self.max_messages = settings.ingest_aggregate_max_messages
        self.buffer = Accumulator(self.max_events, settings.ingest_aggregate_max_wait_ms / 1000)
        self._stop_writes = threading.Event()
        self.writer = WriterThread(
            TransactionWriter(
                make_session_factory(engine), settings, self._stop_writes
            ).write
        )
        self.inflight: InFlight | None = None
        self.mean_message_events = float(settings.producer_batch_size)  # first guess, then measured
        self.prefetch = self._window(self.mean_message_events)
        self._consumer: Consumer | None = None
        self._qos_global = False
        self._stopping = False
        self.flushes = 0

    # -- the prefetch window ----------------------------------------------------

    def _window(self, mean_events: float) -> int:
        wanted = math.ceil(WINDOW_FLUSHES * self.max_events / max(mean_events, 1.0))
        return max(WINDOW_FLUSHES, min(self.max_messages, wanted))

    def _resize_window(self, batch: list[Received]) -> None:
        # The flush is itself an average over its messages: follow it at once,
        # so that a window sized for big messages opens up after one flush.
        self.mean_message_events = sum(item.events for item in batch) / len(batch)
        wanted = self._window(self.mean_message_events)
        if abs(wanted - self.prefetch) > QOS_HYSTERESIS * self.prefetch and self._consumer is not None:
            self.prefetch = wanted
            self._consumer.qos(prefetch_count=wanted, apply_global=self._qos_global)
            logger.info("prefetch window now %d messages (%.0f events per message)", wanted, self.mean_message_events)

    def _unacked(self) -> int:
        return len(self.buffer) + (len(self.inflight.batch) if self.inflight else 0)

    # -- ConsumerMixin hooks ------------------------------------------------------

    def get_consumers(self, Consumer: Callable[..., Consumer], channel: Any) -> list[Consumer]:  # noqa: N803
        consumer = Consumer(queues=[self.queue], on_message=self._on_message, accept=["json"])
        # Channel-global on RabbitMQ (qos_semantics_matches_spec is False there),
        # so that later basic.qos calls resize the running consumer's window.
        self._qos_global = not channel.connection.client.qos_semantics_matches_spec
        consumer.qos(prefetch_count=self.prefetch, apply_global=self._qos_global)  # before consuming starts
        self._consumer = consumer
        return [consumer]

    def on_connection_revived(self) -> None:
        # Buffered messages belong to the lost channel: the broker redelivers them.
        dropped = self.buffer.clear()
        if dropped:
            logger.warning("broker connection lost; %d buffered messages will be redelivered", dropped)

    def on_consume_ready(self, connection: Connection, channel: Any, consumers: list[Consumer], **kwargs: Any) -> None:
        logger.info(
            "%s: queue=%s max_events=%d max_wait_ms=%d window=%d messages",
            READY_LOG, self.queue.name, self.max_events, self.settings.ingest_aggregate_max_wait_ms, self.prefetch,
        )  # fmt: skip

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        if self._stopping:  # the broker is down and nothing is held: nothing to wait for
            raise SystemExit(0)
        logger.warning("broker unreachable (%s); retrying in %.1fs", exc, interval)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        # kombu's default acks (drops) the message; we dead-letter it with the others.
        self.buffer.add(self._decode(message, reasons.could_not_decode(message.content_type, exc)))

    def _on_message(self, message: Message) -> None:
        self.buffer.add(self._decode(message))

    def _decode(self, message: Message, refusal: str | None = None) -> Received:
        settings = self.settings
        return decode(message, settings.ingest_max_message_bytes, settings.ingest_max_rows_per_message, refusal)

    # -- the loop -----------------------------------------------------------------

    def consume(self, limit: int | None = None, timeout: float | None = None, safety_interval: float = 1, **kwargs: Any) -> Iterator[None]:  # noqa: E501
        with self.consumer_context(**kwargs) as (conn, _channel, consumers):
            while not self.should_stop:
                self._advance()
                if self._stopping:
                    self._join(consumers)
                    self.should_stop = True
                    break
                try:
                    conn.drain_events(timeout=self._drain_timeout())
                except socket.timeout:
                    pass
                conn.heartbeat_check()
                yield

    def _drain_timeout(self) -> float:
        if self.inflight is not None:
            return WRITE_POLL_S
        deadline = self.buffer.deadline()
        if deadline is None:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.001, deadline - time.monotonic()))

    def _advance(self) -> None:
        """Ack a finished write; start the next one when a flush is due."""
        if self.inflight is not None and self.inflight.future.done():
            inflight, self.inflight = self.inflight, None
            self._finish(inflight)
        if self.inflight is None and self.buffer.due(time.monotonic(), self._unacked() >= self.prefetch):
            self._submit()

    def _submit(self) -> None:
        batch = self.buffer.take()
        self._resize_window(batch)
        self.inflight = InFlight(batch, self.writer.submit(batch))

    def _finish(self, inflight: InFlight) -> None:
        """Step 4: ack every message of a committed flush."""
        try:
            result = inflight.future.result()
        except Stopped as exc:
            logger.warning("%s", exc)
            return
        parked = {id(item) for item, _ in result.parked}
        for item, reason in result.parked:
            self._park(item, reason)
        unacked = 0
        for item in inflight.batch:
            if id(item) in parked:
                continue
            try:
                item.message.ack()
            except Exception:  # noqa: BLE001 - the connection is gone: redelivered, stored as duplicates
                unacked += 1
        if unacked:
            logger.warning("%d messages committed but not acknowledged (connection lost); their redelivery "
                           "will be dropped as duplicates", unacked)  # fmt: skip
        self.flushes += 1  # its transactions were counted in the metrics at their commit (storage.flush)
        logger.info(
            "%s: messages=%d events=%d stored=%d duplicates=%d dead_lettered=%d attempts=%d seconds=%.3f",
            COMMITTED_LOG, result.messages, result.events, result.stored, result.duplicates,
            result.dead_lettered, result.attempts, result.seconds,
        )  # fmt: skip

    def _park(self, item: Received, reason: str) -> None:
        """A message that can neither be stored nor dead-lettered: to ``<queue>.dead``, then acked."""
        queue = self.queue.name
        try:
            park(self.app.connection_for_write(), queue, item.message, reason)
        except Exception as exc:  # noqa: BLE001 - not parked: it goes back to the queue
            logger.error("cannot park a message on %s.dead (%s: %s); it goes back to the queue",
                         queue, type(exc).__name__, storable_text(exc, 300))  # fmt: skip
            try:
                item.message.reject(requeue=True)
            except Exception:  # noqa: BLE001 - the connection is gone: redelivered anyway
                logger.debug("requeue failed", exc_info=True)
            return
        metrics.message_parked()
        logger.error("parked a message on %s.dead: %s", queue, reason)
        try:
            item.message.ack()
        except Exception:  # noqa: BLE001 - redelivered, parked again: a copy, never none
            logger.warning("a parked message could not be acknowledged; it will be delivered again")

    def _join(self, consumers: list[Consumer]) -> None:
        """Warm stop: no new deliveries; commit and ack what is held, within STOP_TIMEOUT_S."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for consumer in consumers:
            try:
                consumer.cancel()
            except Exception:  # noqa: BLE001 - closing anyway; unacked messages return to the queue
                logger.debug("cancel failed", exc_info=True)
        while self.inflight is not None or len(self.buffer):
            if self.inflight is None:
                self._submit()
            assert self.inflight is not None
            try:
                self.inflight.future.exception(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            inflight, self.inflight = self.inflight, None
            self._finish(inflight)
        held = self._unacked()
        self._stop_writes.set()  # a write still retrying gives up; its messages stay unacknowledged
        if held:
            logger.warning("stopping with %d messages not committed; the broker redelivers them", held)
        logger.info("aggregator stopped after %d flushes", self.flushes)

    # -- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        """Warm stop (from a signal handler): flush, commit and ack what is held, then exit."""
        self._stopping = True

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT: warm stop; a second one: exit at once (nothing acked is lost)."""

        def handler(signum: int, _frame: Any) -> None:
            if self._stopping:
                logger.warning("second signal %d: exiting now; unacknowledged messages are redelivered", signum)
                os._exit(128 + signum)
            logger.info("signal %d: warm stop", signum)
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.aggregator", description=__doc__.splitlines()[0])
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    settings = get_settings()
    if settings.broker_is_redis:
        raise SystemExit(
            "aggregator: INGEST_MODE=aggregate needs a RabbitMQ broker (amqp://); "
            "with Redis run the Celery worker (INGEST_MODE=task)"
        )
    logging.basicConfig(level=args.loglevel.upper(), format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    install_log_escaping()
    engine = make_engine(settings)  # the process's one engine
    try:
        aggregator = Aggregator(settings, engine)
        with aggregator.signals():
            aggregator.run()
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
