"""A Celery consumer that dead-letters messages it cannot run, instead of dropping them.

Celery's stock consumer logs and acknowledges (or rejects without requeue) a
message it cannot decode, one that is not a task message, or one naming an
unknown task: the message is gone. On the ingest queue that would be silent
loss, so here the raw message goes to ``dead_letters`` with the reason first,
and is acknowledged only after that commit. Enabled by ``worker_consumer`` in
celeryconfig.

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
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from storage import dead_letters
from storage.db import make_engine, make_session_factory
from storage.dead_letters import Rejected

logger = logging.getLogger(__name__)

SOURCE_QUEUE = "queue"
REQUEUE_PAUSE_S = 1.0  # the database is down: do not spin on the same message


def raw_payload(message: Message) -> dict[str, Any]:
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        text = body.decode("utf-8")
        encoded: dict[str, Any] = {"body": text}
    except UnicodeDecodeError:
        encoded = {"body_base64": base64.b64encode(body).decode()}
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "routing_key": (message.delivery_info or {}).get("routing_key"),
        **encoded,
    }


def _ack_that_cannot_crash(ack: Callable[..., Any]) -> Callable[..., Any]:
    """``ack`` (Celery routes rejects the same way) logging its failure instead of raising it."""
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return ack(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the message stays in the broker: nothing is lost
            logger.warning(
                "could not acknowledge a message (%s: %s); the broker will deliver it again"
                " and its batch is written again idempotently", type(exc).__name__, exc,
            )
            return None

    return guarded


class DeadLetteringConsumer(Consumer):
    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().call_soon_ack(_ack_that_cannot_crash(p), *args, **kwargs)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as cleanup_error:
            if self.connection is not None:
                raise  # not the closing of the dead connection: a real bug
            # Celery dropped the connection, then closing it failed (see the module docstring).
            logger.warning(
                "the lost broker connection could not be closed cleanly (%s); its unacknowledged"
                " messages return to the queue after the visibility timeout", cleanup_error,
            )

    @cached_property
    def _dead_letter_sessions(self) -> sessionmaker[Session]:
        return make_session_factory(make_engine(get_settings()))

    def _dead_letter(self, message: Message, reason: str) -> None:
        try:
            with self._dead_letter_sessions.begin() as session:
                dead_letters.record(
                    session, [Rejected(payload=raw_payload(message), reason=reason, source=SOURCE_QUEUE)]
                )
        except Exception:
            logger.exception("cannot dead-letter a message (%s); it goes back to the queue", reason)
            time.sleep(REQUEUE_PAUSE_S)
            message.reject(requeue=True)
            return
        logger.error("dead-lettered a message from the queue: %s", reason)
        message.ack()

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"message could not be decoded ({message.content_type}): {exc}")

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._dead_letter(message, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"unknown task: {exc}")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"invalid task message: {exc}")
