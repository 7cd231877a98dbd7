"""Step 3 of the aggregator: write a flush in one transaction, off the broker thread.

``TransactionWriter.write`` stores the rows of all the flushed messages and
their dead letters in ONE transaction, by the ingest unit of work the Celery
task uses too (``storage.flush.commit_flush``: ``storage.events.store_batch``'s
dedupe, partitions on demand, bisection of bad rows, one rollup batch; the
metrics counted once it committed). Any error that is not about the rows
(database down, deadlock, bug) is retried with exponential backoff and jitter
(``INGEST_RETRY_MAX_S``), forever, while the messages stay unacknowledged. An
error caused by what a message holds (tasks.failures) is tried
``POISON_ATTEMPTS`` times, then the flush is written message by message, and
a message that still fails alone is handed back to be parked, so one poisoned
message never holds up the others. ``WriterThread`` runs those writes one at a
time in a thread of its own, so that the consumer keeps draining the broker
connection (heartbeats) while the database works or waits.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from schema import reasons
from storage.flush import Flush, FlushResult, commit_flush, failure_detail
from tasks.aggregate.received import Received
from tasks.failures import POISON_ATTEMPTS, caused_by_message
from tasks.ingest import backoff_seconds

logger = logging.getLogger(__name__)


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
