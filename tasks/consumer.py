"""A Celery consumer that dead-letters messages it cannot run, instead of dropping them.

Celery's stock consumer logs and acknowledges (or rejects without requeue) a
message it cannot decode, one that is not a task message, or one naming an
unknown task: the message is gone. On the ingest queue that would be silent
loss, so here the raw message goes to ``dead_letters`` with the reason first,
and is acknowledged only after that commit. Enabled by ``worker_consumer`` in
celeryconfig.
"""

from __future__ import annotations

import base64
import logging
import time
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


class DeadLetteringConsumer(Consumer):
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
