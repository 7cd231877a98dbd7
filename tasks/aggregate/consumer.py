"""The aggregator's consumer: broker I/O, flush decisions and step 4, the acks.

One loop owns the messages from delivery to acknowledgement (kombu's
``ConsumerMixin``, in the main thread): it decodes each delivery
(tasks.aggregate.received) into the accumulator (tasks.aggregate.accumulator),
hands a due flush to the writer thread (tasks.aggregate.writer), and when the
commit is done acknowledges every message of the flush, or parks on
``<queue>.dead`` a message that could neither be stored nor dead-lettered and
acknowledges it once the broker confirmed the parked copy. Nothing is
acknowledged before its rows and dead letters commit; if the connection was
lost meanwhile, the acks fail and the broker redelivers, stored as duplicates,
dropped. While a write is in flight the loop keeps draining the connection
(AMQP heartbeats) and the next flush accumulates. The prefetch window
(tasks.aggregate.window) follows the message size with ``basic.qos``,
channel-global on RabbitMQ as Celery does, so the running consumer follows it.

Stopping. SIGTERM or SIGINT: stop consuming, wait for the write in flight,
flush and commit what is buffered, ack, close (``STOP_TIMEOUT_S`` at most;
what is not committed by then stays unacknowledged and is redelivered). A
second signal exits at once, which loses nothing either.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Connection, Consumer, Queue
from kombu.message import Message
from kombu.mixins import ConsumerMixin
from sqlalchemy import Engine

import celeryconfig
from config import Settings
from monitoring import metrics
from schema import reasons
from storage.db import make_session_factory
from storage.dead_letters import storable_text
from tasks.aggregate.accumulator import Accumulator
from tasks.aggregate.received import Received, decode
from tasks.aggregate.window import PrefetchWindow
from tasks.aggregate.writer import FlushReport, Stopped, TransactionWriter, WriterThread
from tasks.broker import AMQP_CLASS, park

logger = logging.getLogger(__name__)

READY_LOG = "aggregator ready"
COMMITTED_LOG = "flush committed"
STOP_TIMEOUT_S = 10.0  # warm stop: longest wait for the last commits
IDLE_POLL_S = 1.0  # drain timeout with nothing buffered: signals and heartbeats
WRITE_POLL_S = 0.01  # drain timeout while a write is in flight: notice its commit quickly


@dataclass
class InFlight:
    batch: list[Received]
    future: Future[FlushReport]


class Aggregator(ConsumerMixin):
    """Consumes ``settings.ingest_queue``; see the module docstring and tasks.aggregate."""

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
        self.buffer: Accumulator[Received] = Accumulator(self.max_events, settings.ingest_aggregate_max_wait_ms / 1000)
        self._stop_writes = threading.Event()
        self.writer = WriterThread(TransactionWriter(make_session_factory(engine), settings, self._stop_writes).write)
        self.inflight: InFlight | None = None
        # First guess of the message size: the producers' batch size; then measured flush by flush.
        self.window = PrefetchWindow(self.max_events, self.max_messages, float(settings.producer_batch_size))
        self._consumer: Consumer | None = None
        self._qos_global = False
        self._stopping = False
        self.flushes = 0

    # -- the prefetch window (tasks.aggregate.window) ------------------------------

    @property
    def prefetch(self) -> int:
        return self.window.size

    def _resize_window(self, batch: list[Received]) -> None:
        resized = self.window.follow(len(batch), sum(item.events for item in batch))
        if resized is not None and self._consumer is not None:
            self._consumer.qos(prefetch_count=resized, apply_global=self._qos_global)
            logger.info("prefetch window now %d messages (%.0f events per message)",
                        resized, self.window.mean_message_events)  # fmt: skip

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

    def on_consume_ready(
        self, connection: Connection, channel: Any, consumers: Sequence[Consumer], **kwargs: Any
    ) -> None:
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

    def consume(  # type: ignore[override]
        self, limit: int | None = None, timeout: float | None = None, safety_interval: float = 1, **kwargs: Any
    ) -> Iterator[None]:
        # kombu's stubs are wrong here: consume() is a generator that ConsumerMixin.run iterates,
        # consumer_context() a context manager.
        with self.consumer_context(**kwargs) as (conn, _channel, consumers):  # type: ignore[attr-defined]
            while not self.should_stop:
                self._advance()
                if self._stopping:
                    self._join(consumers)
                    self.should_stop = True
                    break
                with suppress(TimeoutError):  # socket.timeout: nothing delivered in time
                    conn.drain_events(timeout=self._drain_timeout())
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
            except Exception:
                logger.debug("requeue failed", exc_info=True)
            return
        metrics.message_parked()
        logger.error("parked a message on %s.dead: %s", queue, reason)
        try:
            item.message.ack()
        except Exception:  # noqa: BLE001 - redelivered, parked again: a copy, never none
            logger.warning("a parked message could not be acknowledged; it will be delivered again")

    def _join(self, consumers: Sequence[Consumer]) -> None:
        """Warm stop: no new deliveries; commit and ack what is held, within STOP_TIMEOUT_S."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for consumer in consumers:
            try:
                consumer.cancel()
            except Exception:
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
