"""What the ingest queue may carry, checked on the raw broker message before it runs.

Only ``ingest.write_batch`` with exactly one argument (the batch), in a body of
at most ``INGEST_MAX_MESSAGE_BYTES``. Anything else (another task, say a
``rollups.run`` or ``partitions.*`` put on the ingest queue; a call with other
arguments; a body too large) is refused with a reason, and the caller
dead-letters the raw message (source ``queue``) instead of running it. Used by
the Celery worker's consumer (tasks.consumer) and by the aggregator. The task
message is read by schema.task_message; the reasons come from schema.reasons.

The size is checked on the raw body, before it is parsed; a body over the cap is
recorded truncated to ``RAW_BODY_KEEP_CHARS``.
"""

from __future__ import annotations

import base64
from typing import Any

from kombu.message import Message

from schema import reasons
from schema.task_message import batch_argument, ingest_batch
from schema.task_message import task_name as message_task_name
from storage.dead_letters import SOURCE_QUEUE
from tasks.names import INGEST_WRITE_BATCH

__all__ = [
    "SOURCE_QUEUE", "batch_argument", "kept_chars", "oversized", "raw_payload", "refusal", "task_argument",
    "task_name",
]  # fmt: skip

RAW_BODY_KEEP_CHARS = 65_536  # of an oversized body, what its dead letter keeps


def body_size(message: Message) -> int:
    body = message.body
    return len(body) if isinstance(body, (bytes, bytearray, str)) else len(str(body))


def raw_payload(message: Message, keep_chars: int | None = None) -> dict[str, Any]:
    """The raw message as a dead letter records it; the body cut to ``keep_chars`` if given."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    size = len(body)
    if keep_chars is not None and size > keep_chars:
        body = body[:keep_chars]
    try:
        text = body.decode("utf-8")
        encoded: dict[str, Any] = {"body": text}
    except UnicodeDecodeError:
        if keep_chars is not None and size > keep_chars:  # cut mid-character: keep what decodes
            encoded = {"body": body.decode("utf-8", errors="replace")}
        else:
            encoded = {"body_base64": base64.b64encode(body).decode()}
    if keep_chars is not None and size > keep_chars:
        encoded["body_truncated_from_bytes"] = size
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": message.headers,
        "routing_key": (message.delivery_info or {}).get("routing_key"),
        **encoded,
    }


def kept_chars(max_bytes: int) -> int:
    """How much of an oversized body its dead letter keeps."""
    return min(RAW_BODY_KEEP_CHARS, max_bytes)


def oversized(message: Message, max_bytes: int) -> str | None:
    """The reason a body is too large (INGEST_MAX_MESSAGE_BYTES), or None."""
    size = body_size(message)
    if size <= max_bytes:
        return None
    return reasons.too_large(size, max_bytes, kept_chars(max_bytes))


def task_argument(message: Message) -> tuple[Any, str | None]:
    """The argument of the ``ingest.write_batch`` call a message carries, or why
    the message is not such a call."""
    try:
        body = message.decode()
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a dead letter
        return None, reasons.could_not_decode(message.content_type, exc)
    return ingest_batch(message.headers, body)


def task_name(message: Message) -> str | None:
    """The task a message calls, without parsing a protocol 2 body (None if it is no task message)."""
    try:
        return message_task_name(message.headers, message.decode)  # kombu caches the decoding
    except Exception:  # noqa: BLE001 - the consumer dead-letters it as undecodable
        return None


def refusal(message: Message, max_bytes: int) -> tuple[str, int | None] | None:
    """Why the ingest queue must not run this message, and how much of its body
    the dead letter keeps (None: all of it); None if it may run.

    Checks the size and the task name only (cheap: a protocol 2 body is parsed
    once, by the task); the task checks its own arguments (tasks.ingest).
    """
    too_large = oversized(message, max_bytes)
    if too_large is not None:
        return too_large, kept_chars(max_bytes)
    name = task_name(message)
    if name is not None and name != INGEST_WRITE_BATCH:
        return reasons.unknown_task(name, ingest_queue=True), None
    return None
