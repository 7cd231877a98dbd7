"""The ingest task: one broker message = one micro-batch = one transaction.

Contract: the message is acknowledged (task returns) only after its rows and
its dead letters committed. Anything that prevents the commit is retried with
backoff and never acknowledged as done: the retry publishes the message again
before the original is acknowledged, so the batch always exists in the broker.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from typing import Any

from config import get_settings
from monitoring import metrics
from schema.message import decode_message
from storage import dead_letters
from storage.dead_letters import Rejected
from storage.events import store_batch
from tasks.app import app
from tasks.base import DatabaseTask

logger = logging.getLogger(__name__)

TASK_NAME = "ingest.write_batch"
BACKOFF_BASE_S = 1.0


def backoff_seconds(retries: int, cap: float) -> float:
    """Exponential backoff with full jitter, so retrying workers spread out."""
    return random.uniform(0, min(cap, BACKOFF_BASE_S * 2**retries))


@app.task(bind=True, base=DatabaseTask, name=TASK_NAME, max_retries=None)
def write_batch(self: DatabaseTask, message: Any) -> dict[str, int]:
    decoded = decode_message(message)
    invalid = [Rejected(payload=payload, reason=reason) for payload, reason in decoded.invalid]
    try:
        with self.session_factory.begin() as session:
            result = store_batch(session, decoded.rows)
            dead_letters.record(session, invalid + result.rejected)
    except Exception as exc:
        # Not about the rows (those were handled above): the database is down,
        # a deadlock, or a bug. Keep the message and try again later.
        countdown = backoff_seconds(self.request.retries, get_settings().ingest_retry_max_s)
        logger.warning(
            "batch of %d events not stored (%s: %s); retry %d in %.1fs",
            len(decoded.rows),
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            self.request.retries + 1,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    oldest = min((mapping["timestamp"] for mapping, _ in decoded.rows), default=None)
    metrics.batch_committed(
        events=len(decoded.rows) + len(invalid),
        stored=result.stored,
        duplicates=result.duplicates,
        dead_lettered=len(invalid) + len(result.rejected),
        oldest_age_s=None if oldest is None else (datetime.now(timezone.utc) - oldest).total_seconds(),
    )
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "dead_lettered": len(invalid) + len(result.rejected),
    }
