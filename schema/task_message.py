"""Celery's task message, decoded once for every reader of the ingest queue.

A Celery task message names its task and carries the call's arguments in one
of two layouts (Celery's "message protocol"):

* protocol 2 (Celery 4+, what ``send_task`` writes): the name in the
  ``task`` header, the body ``[args, kwargs, embed]``;
* protocol 1: no ``task`` header, the body ``{"task", "args", "kwargs", ...}``.

The Celery worker's consumer (tasks.consumer, through tasks.admission), the
aggregator and ``storage.replay`` (a raw message kept in dead_letters) read it
through these functions, so they agree on what a task message is and on the
reason one is refused (schema.reasons). Nothing here parses the transport's
serialization: callers hand over the headers and the decoded body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema import reasons
from tasks.names import INGEST_WRITE_BATCH

TASK_HEADER = "task"
PROTOCOL2_BODY_ITEMS = 3  # [args, kwargs, embed]
BATCH_KEYWORD = "message"  # write_batch(message=...) is the one keyword call accepted


@dataclass(frozen=True)
class TaskCall:
    """The call a task message asks for; ``args``/``kwargs`` as sent (checked by their reader)."""

    name: str
    args: Any = ()
    kwargs: Any = field(default_factory=dict)


def _header_name(headers: object) -> str | None:
    return str(headers[TASK_HEADER]) if isinstance(headers, dict) and TASK_HEADER in headers else None


def task_name(headers: object, body: Callable[[], Any]) -> str | None:
    """The task a message calls, or None if it is not a task message.

    ``body`` decodes the body; it is called only for protocol 1 (protocol 2 names
    its task in the headers, so a large body is not parsed just to route it).
    Decoding errors propagate.
    """
    name = _header_name(headers)
    if name is not None:
        return name
    decoded = body()
    return str(decoded[TASK_HEADER]) if isinstance(decoded, dict) and TASK_HEADER in decoded else None


def task_call(headers: object, body: Any) -> tuple[TaskCall | None, str | None]:
    """The call of a task message (protocol 2 or 1, ``body`` decoded), or why it is none."""
    name = _header_name(headers)
    if name is not None:
        if not (isinstance(body, (list, tuple)) and len(body) == PROTOCOL2_BODY_ITEMS):
            return None, reasons.protocol2_body()
        return TaskCall(name, body[0], body[1]), None
    if isinstance(body, dict) and TASK_HEADER in body:
        return TaskCall(str(body[TASK_HEADER]), body.get("args", ()), body.get("kwargs") or {}), None
    return None, reasons.NOT_A_TASK_MESSAGE


def batch_argument(args: Any, kwargs: Any) -> tuple[Any, str | None]:
    """The batch of a ``write_batch(*args, **kwargs)`` call, or why the call is invalid."""
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return None, reasons.call_not_a_list()
    if len(args) == 1 and not kwargs:
        return args[0], None
    if not args and list(kwargs) == [BATCH_KEYWORD]:
        return kwargs[BATCH_KEYWORD], None
    return None, reasons.wrong_arguments(len(args), [str(key) for key in kwargs])


def ingest_batch(headers: object, body: Any) -> tuple[Any, str | None]:
    """The batch an ``ingest.write_batch`` task message carries, or why it carries none."""
    call, refused = task_call(headers, body)
    if call is None:
        return None, refused
    if call.name != INGEST_WRITE_BATCH:
        return None, reasons.unknown_task(call.name, ingest_queue=True)
    return batch_argument(call.args, call.kwargs)
