"""A Celery consumer that dead-letters messages it cannot run, instead of dropping them.

Celery's stock consumer logs and acknowledges (or rejects without requeue) a
message it cannot decode, one that is not a task message, or one naming an
unknown task: the message is gone. On the ingest queue that would be silent
loss, so here the raw message goes to ``dead_letters`` with the reason first
(storage.flush, counted in the ingest metrics like any dead letter; the
reasons are schema.reasons'), and is acknowledged only after that commit.
Enabled by ``worker_consumer`` in celeryconfig.

It also keeps the worker alive through a broker outage where Celery and
kombu would end it. On Redis, when the connection drops while a message is
unacknowledged, Celery closes the dead connection and kombu's channel tries to
put the message back through a client it can no longer build
(``AttributeError: 'NoneType' object has no attribute 'hostname'``, seen about
one Redis outage in five under load): the worker process exits. The message is
still in Redis' unacknowledged set, which any worker returns to the queue
after the visibility timeout, so here that error is a warning and the consumer
reconnects as usual. A late ack of such a message fails the same way; an
unacknowledged message is delivered again and its batch written again
idempotently, so a failed ack is a warning too, never a dead worker.

The ingest queue carries only ``ingest.write_batch`` (tasks.admission): a
message for another task (``rollups.run`` put on the ingest queue, say) or one
larger than ``INGEST_MAX_MESSAGE_BYTES`` is dead-lettered before it runs,
checked on the raw message.

A message that cannot even be dead-lettered, for a reason that is about the
message (tasks.failures), is parked on the broker (``<queue>.dead``,
tasks.broker), logged and counted, then acknowledged; for any other reason
(the database down) it goes back to the queue after a pause, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message
from sqlalchemy.orm import Session, sessionmaker
from vine import promise

from config import Settings, get_settings
from monitoring import metrics
from schema import reasons
from storage.dead_letters import SOURCE_QUEUE, storable_text
from storage.flush import Flush, commit_flush
from tasks import resources
from tasks.admission import raw_payload, refusal
from tasks.broker import park
from tasks.failures import caused_by_message

logger = logging.getLogger(__name__)

REQUEUE_PAUSE_S = 1.0  # the database is down: do not spin on the same message
__all__ = ["SOURCE_QUEUE", "DeadLetteringConsumer", "raw_payload"]


def _ack_that_cannot_crash(ack: Callable[..., Any]) -> Callable[..., Any]:
    """``ack`` (Celery routes rejects the same way) logging its failure instead of raising it."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return ack(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the message stays in the broker: nothing is lost
            logger.warning(
                "could not acknowledge a message (%s: %s); the broker will deliver it again"
                " and its batch is written again idempotently",
                type(exc).__name__,
                exc,
            )
            return None

    return guarded


class DeadLetteringConsumer(Consumer):
    # Consumer.call_soon_ack exists since Celery 5.7; celery-types' stubs predate it.
    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().call_soon_ack(_ack_that_cannot_crash(p), *args, **kwargs)  # type: ignore[misc]

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as cleanup_error:
            if self.connection is not None:
                raise  # not the closing of the dead connection: a real bug
            # Celery dropped the connection, then closing it failed (see the module docstring).
            logger.warning(
                "the lost broker connection could not be closed cleanly (%s); its unacknowledged"
                " messages return to the queue after the visibility timeout",
                cleanup_error,
            )

    @cached_property
    def _settings(self) -> Settings:
        return get_settings()

    @property
    def _dead_letter_sessions(self) -> sessionmaker[Session]:
        """The worker process's sessions (tasks.resources), the tasks' own with the threads pool."""
        return resources.session_factory()

    def _on_ingest_queue(self, message: Message) -> bool:
        """The message came from the ingest queue (routed by its name, as Celery and
        the default exchange do), or this worker consumes nothing else."""
        ingest = self._settings.ingest_queue
        if (message.delivery_info or {}).get("routing_key") == ingest:
            return True
        consumed = {queue.name for queue in self.app.amqp.queues.consume_from.values()}
        return consumed == {ingest}

    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        handler = super().create_task_handler(promise)

        def on_task_received(message: Message) -> Any:
            if self._on_ingest_queue(message):
                refused = refusal(message, self._settings.ingest_max_message_bytes)
                if refused is not None:
                    reason, keep_chars = refused
                    return self._dead_letter(message, reason, keep_chars)
            return handler(message)

        return on_task_received

    def _dead_letter(self, message: Message, reason: str, keep_chars: int | None = None) -> None:
        try:
            flush = Flush.refused_whole(raw_payload(message, keep_chars), reason, SOURCE_QUEUE)
            commit_flush(self._dead_letter_sessions, flush, self._settings)
        except Exception as exc:  # noqa: BLE001 - waited out (requeued) or parked with its reason, never dropped
            if not caused_by_message(exc):  # the database is down (or misconfigured): wait
                logger.warning("cannot dead-letter a message (%s: %s); it goes back to the queue",
                               type(exc).__name__, storable_text(exc, 300))  # fmt: skip
                time.sleep(REQUEUE_PAUSE_S)
                message.reject(requeue=True)
                return
            self._park(message, reasons.could_not_be_dead_lettered(reason, exc))
            return
        logger.error("dead-lettered a message from the queue: %s", storable_text(reason, 500))
        message.ack()

    def _park(self, message: Message, reason: str) -> None:
        """Step aside a message the database will not take: on the broker's dead queue."""
        queue = self._settings.ingest_queue
        try:
            park(self.app.connection_for_write(), queue, message, storable_text(reason))
        except Exception as exc:  # noqa: BLE001 - not parked: it stays in the queue
            logger.error("cannot park a message on %s.dead (%s: %s); it goes back to the queue",
                         queue, type(exc).__name__, storable_text(exc, 300))  # fmt: skip
            time.sleep(REQUEUE_PAUSE_S)
            message.reject(requeue=True)
            return
        metrics.message_parked()
        logger.error("parked a message on %s.dead: %s", queue, storable_text(reason, 500))
        message.ack()

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, reasons.could_not_decode(message.content_type, exc))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._dead_letter(message, reasons.NOT_A_TASK_MESSAGE)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)  # Celery raises KeyError(name)
        self._dead_letter(message, reasons.unknown_task(name))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._dead_letter(message, reasons.invalid_task_message(exc))
