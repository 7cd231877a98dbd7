"""The ingest task: one broker message = one micro-batch = one transaction.

Contract: the message is acknowledged (task returns) only after its rows and
its dead letters committed, or after it was parked on the broker. Anything
that prevents the commit is retried with backoff and never acknowledged as
done: the retry publishes the message again before the original is
acknowledged, so the batch always exists in the broker. If that publish fails
(the database down and the broker briefly unreachable), Celery would reject
the original without requeue; here it is requeued instead, after a pause.

A failure caused by what the message holds (tasks.failures) is tried
``POISON_ATTEMPTS`` times, then the call is parked on ``<queue>.dead``
(tasks.broker), logged and counted. Any other (the database unavailable) is
retried for as long as it lasts, the backoff capped by ``INGEST_RETRY_MAX_S``
whatever the retry count.

A call with other arguments than the one batch is dead-lettered with the
reason, and so is a batch of more than ``INGEST_MAX_ROWS_PER_MESSAGE`` rows.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.exceptions import Reject

from config import get_settings
from monitoring import metrics
from retry_policy import MAX_EXPONENT as BACKOFF_MAX_EXPONENT
from retry_policy import Backoff
from schema import reasons
from schema.message import decode_message
from schema.task_message import batch_argument
from storage.dead_letters import SOURCE_QUEUE, storable_text
from storage.flush import Flush, commit_flush, failure_detail
from tasks.app import app
from tasks.base import DatabaseTask
from tasks.broker import PARKED_REASON_HEADER, PARKED_REASON_MAX_CHARS, dead_queue
from tasks.failures import POISON_ATTEMPTS, caused_by_message
from tasks.names import INGEST_WRITE_BATCH

logger = logging.getLogger(__name__)

__all__ = ["BACKOFF_MAX_EXPONENT", "backoff_seconds", "write_batch"]

BACKOFF_BASE_S = 1.0
REQUEUE_PAUSE_S = 1.0  # the retry could not be published: pause before the message returns


def backoff_seconds(retries: int, cap: float) -> float:
    """Celery's countdown before retry ``retries``, with full jitter so retrying workers spread out.

    In [0, cap] at any retry count (retry_policy.Backoff; ``BACKOFF_MAX_EXPONENT`` bounds 2**n).
    """
    return Backoff(BACKOFF_BASE_S, cap).delay(retries)


def _decode_call(args: tuple[Any, ...], kwargs: dict[str, Any], max_rows: int) -> Flush:
    message, refused = batch_argument(args, kwargs)
    if refused is not None:
        payload = {"task": INGEST_WRITE_BATCH, "args": list(args), "kwargs": kwargs}
        return Flush.refused_whole(payload, refused, SOURCE_QUEUE)
    return Flush.decoded(decode_message(message, max_rows=max_rows))


@app.task(bind=True, base=DatabaseTask, name=INGEST_WRITE_BATCH, max_retries=None)
def write_batch(self: DatabaseTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    settings = get_settings()
    flush = Flush()
    try:
        # Decoding inside: whatever raises is retried, then parked; the task itself
        # never fails (a failed task would be rejected: dropped by Redis' transport).
        flush = _decode_call(args, kwargs, settings.ingest_max_rows_per_message)
        result = commit_flush(self.session_factory, flush, settings)
    except Exception as exc:  # noqa: BLE001 - retried with backoff or parked with its reason, never dropped
        # Not about the rows (those were handled above): the database is down,
        # a deadlock, a bug, or a message that breaks the dead-letter insert.
        retries = self.request.retries
        detail = failure_detail(exc)
        if caused_by_message(exc) and retries + 1 >= POISON_ATTEMPTS:
            return _park(self, args, kwargs, reasons.not_stored(retries + 1, detail))
        countdown = backoff_seconds(retries, settings.ingest_retry_max_s)
        logger.warning("batch of %d events not stored (%s); retry %d in %.1fs",
                       len(flush.rows), detail, retries + 1, countdown)  # fmt: skip
        try:
            raise self.retry(exc=exc, countdown=countdown) from exc
        except Reject as rejected:
            if rejected.requeue:  # type: ignore[attr-defined]  # set by Celery; celery-types' Reject lacks it
                raise
            # Celery could not publish the retry and would drop the original: keep it.
            logger.warning("the retry could not be published (%s); the message goes back to the queue",
                           rejected.reason)  # type: ignore[attr-defined]  # fmt: skip
            time.sleep(REQUEUE_PAUSE_S)
            raise Reject(rejected.reason, requeue=True) from exc  # type: ignore[attr-defined]
    return {"stored": result.stored, "duplicates": result.duplicates, "dead_lettered": result.dead_lettered}


def _park(task: DatabaseTask, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str) -> dict[str, int]:
    """Publish the same call to ``<queue>.dead``; the original is then acknowledged."""
    queue = get_settings().ingest_queue
    try:
        task.app.send_task(
            INGEST_WRITE_BATCH, args=list(args), kwargs=kwargs, task_id=task.request.id,
            queue=dead_queue(queue),  # type: ignore[arg-type]  # Celery takes a Queue too; the stubs say str
            headers={PARKED_REASON_HEADER: reason[:PARKED_REASON_MAX_CHARS]}, retry=False,
            argsrepr="<parked batch>", kwargsrepr="{}",
        )  # fmt: skip
    except Exception as exc:
        logger.error("cannot park a batch on %s.dead (%s: %s); it goes back to the queue",
                     queue, type(exc).__name__, storable_text(exc, 300))  # fmt: skip
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(str(exc), requeue=True) from exc
    metrics.message_parked()
    logger.error("parked a batch on %s.dead: %s", queue, reason)
    return {"stored": 0, "duplicates": 0, "dead_lettered": 0, "parked": 1}
