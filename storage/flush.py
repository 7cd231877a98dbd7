"""The ingest unit of work: one transaction for the rows and the dead letters, then the metrics.

Every writer of ingested events goes through here: the Celery task
(tasks.ingest), the worker's consumer refusing a raw message (tasks.consumer),
the aggregator (tasks.aggregator), the replay of dead letters (storage.replay)
and the tests. The contract:

* the valid rows (``storage.events.store_batch``: dedupe, partitions, bad rows
  isolated) and the dead letters (the payloads refused before storage, and the
  rows storage refused) are written in ONE transaction: both commit or neither;
* ``commit_flush`` returns only after that commit, so its caller acknowledges
  the broker messages only then; any error propagates (the caller retries or
  parks, see tasks.failures) and nothing is counted;
* the ingest metrics are counted once per committed transaction, here, after
  the commit. ``write_flush`` is the same work inside the caller's transaction
  (replay), which neither commits nor counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from config import Settings
from models.rollup import NO_PROVIDER
from monitoring import metrics
from pricing.rates import KNOWN, ensure_priced
from schema.message import DecodedBatch
from storage import dead_letters
from storage.dead_letters import SOURCE_WORKER, Rejected, storable_text
from storage.events import Row, store_batch
from storage.partitions import PartitionPolicy

logger = logging.getLogger(__name__)

FAILURE_DETAIL_MAX_CHARS = 300  # of an error's first line, in a log line or a parked message's reason


@dataclass
class Flush:
    """What one transaction writes: decoded rows, and payloads refused before storage.

    ``source`` is what a row refused by storage is recorded with (replay keeps
    the dead letter's own); ``refused`` carry their own.
    """

    rows: list[Row] = field(default_factory=list)
    refused: list[Rejected] = field(default_factory=list)
    source: str = SOURCE_WORKER

    @classmethod
    def decoded(cls, batch: DecodedBatch, source: str = SOURCE_WORKER) -> Flush:
        """A decoded ingest message: its valid rows, and its invalid ones refused with their reasons."""
        refused = [Rejected(payload=payload, reason=reason, source=source) for payload, reason in batch.invalid]
        return cls(rows=batch.rows, refused=refused, source=source)

    @classmethod
    def refused_whole(cls, payload: Any, reason: str, source: str) -> Flush:
        """A message refused as a whole: one dead letter, no rows."""
        return cls(refused=[Rejected(payload=payload, reason=reason, source=source)])

    @classmethod
    def join(cls, flushes: Iterable[Flush]) -> Flush:
        """Several messages' flushes as one transaction (the aggregator); same source."""
        joined = cls()
        for part in flushes:
            joined.rows.extend(part.rows)
            joined.refused.extend(part.refused)
        return joined

    @property
    def events(self) -> int:
        return len(self.rows) + len(self.refused)


@dataclass(frozen=True)
class FlushResult:
    events: int  # rows + payloads refused before storage
    stored: int
    duplicates: int  # already stored (a redelivery) or repeated in the flush: dropped
    refused: list[Rejected]  # dead letters refused before storage
    rejected: list[Rejected]  # dead letters refused by storage (window, names, the database)
    oldest: datetime | None  # the oldest valid event's timestamp

    @property
    def dead_letters(self) -> list[Rejected]:
        """Every dead letter the transaction recorded."""
        return self.refused + self.rejected

    @property
    def dead_lettered(self) -> int:
        return len(self.refused) + len(self.rejected)

    def lag_s(self, now: datetime) -> float | None:
        """Age of the oldest valid event at ``now``: how far storage runs behind track()."""
        return None if self.oldest is None else (now - self.oldest).total_seconds()


def write_flush(
    session: Session, flush: Flush, settings: Settings, *, policy: PartitionPolicy | None = None
) -> FlushResult:
    """Store the rows and record every dead letter in the session's transaction.

    Neither commits nor counts (the caller's transaction may still roll back).
    ``policy`` replaces the settings' partition policy (a replay after a fix).
    """
    oldest = min((mapping["timestamp"] for mapping, _ in flush.rows), default=None)
    written = store_batch(session, flush.rows, settings, policy=policy)
    rejected = written.rejected
    if flush.source != SOURCE_WORKER:
        rejected = [replace(item, source=flush.source) for item in rejected]
    dead_letters.record(session, flush.refused + rejected)
    return FlushResult(
        events=flush.events, stored=written.stored, duplicates=written.duplicates,
        refused=flush.refused, rejected=rejected, oldest=oldest,
    )  # fmt: skip


def commit_flush(
    session_factory: sessionmaker[Session],
    flush: Flush,
    settings: Settings,
    *,
    policy: PartitionPolicy | None = None,
    messages: int | None = None,
) -> FlushResult:
    """``write_flush`` in a transaction of its own; returns after the commit, then counts it.

    ``messages``: the broker messages the transaction holds, counted only by a
    consumer that combines them (the aggregator).
    """
    with session_factory.begin() as session:
        result = write_flush(session, flush, settings, policy=policy)
    _count_committed(result, messages)
    _price_new_pairs(session_factory, flush.rows)
    return result


def _price_new_pairs(session_factory: sessionmaker[Session], rows: list[Row]) -> None:
    """Materialize the rates of (model, provider) pairs this process has not seen, after the batch is durable.

    So a model's first events are priced while they are still in the rollups'
    pending tail. Nothing about prices may fail a stored batch: an error here
    is logged and the next rollup run, which registers its pairs too, retries.
    A no-op (a set difference) once the process knows every pair of the batch.
    """
    pairs = {(m["model"], m.get("provider") or NO_PROVIDER) for m, _ in rows if m["model"]}
    if not KNOWN.unknown(pairs):
        return
    try:
        with session_factory.begin() as session:
            ensure_priced(session, pairs)
    except SQLAlchemyError:
        logger.warning("could not materialize the rates of %d new model/provider pairs; the rollup run will",
                       len(pairs), exc_info=True)  # fmt: skip


def _count_committed(result: FlushResult, messages: int | None) -> None:
    metrics.batch_committed(
        events=result.events,
        stored=result.stored,
        duplicates=result.duplicates,
        dead_lettered=result.dead_lettered,
        oldest_age_s=result.lag_s(datetime.now(UTC)),
    )
    if messages is not None:
        metrics.transaction_messages(messages)


def failure_detail(error: BaseException) -> str:
    """An error that failed a flush, in one storable line: its type and its first line."""
    text = str(error)
    first_line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {storable_text(first_line, FAILURE_DETAIL_MAX_CHARS)}"
