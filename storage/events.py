"""Writing a batch of events: exactly once, and one bad row never sinks the rest.

``store_batch`` runs in the caller's transaction, so the stored rows and the
dead letters of a batch commit together, and the broker message is acknowledged
only after that commit (see tasks.ingest). Each attempt is wrapped in a
SAVEPOINT:

* the common case is one ``bulk_insert_mappings`` of the whole batch;
* a unique violation means some events are already stored (a redelivered
  message): those are looked up, dropped, and the rest is inserted again;
* any other row-level rejection (a check constraint, a month with no partition,
  a value out of range) splits the batch in halves until the offending rows are
  isolated and dead-lettered with PostgreSQL's message as the reason.

Errors that are not about the rows (connection lost, deadlock) propagate so
that the task retries the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg2 import errors as pg_errors
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from models import AnalyticsEvent
from storage.dead_letters import Rejected

# A mapping for bulk_insert_mappings, and the raw wire payload to dead-letter it with.
Row = tuple[dict[str, Any], Any]
Key = tuple[UUID, datetime]


@dataclass
class WriteResult:
    stored: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def _key(mapping: dict[str, Any]) -> Key:
    return mapping["event_id"], mapping["timestamp"]


def _reason(exc: IntegrityError | DataError) -> str:
    orig = exc.orig
    message = str(orig).strip().splitlines()[0] if orig is not None else str(exc)
    code = getattr(orig, "pgcode", None)
    return f"database rejected the row ({code}): {message}" if code else message


def unique_in_batch(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """Drop repeats of an idempotency key inside one batch; keeps the first."""
    seen: dict[Key, Row] = {}
    total = 0
    for row in rows:
        total += 1
        seen.setdefault(_key(row[0]), row)
    return list(seen.values()), total - len(seen)


def _already_stored(session: Session, rows: list[Row]) -> set[Key]:
    ids = [row[0]["event_id"] for row in rows]
    found = session.execute(
        select(AnalyticsEvent.event_id, AnalyticsEvent.timestamp).where(
            AnalyticsEvent.event_id.in_(ids)
        )
    )
    return {(event_id, ts) for event_id, ts in found}


def store_batch(session: Session, rows: list[Row]) -> WriteResult:
    rows, repeats = unique_in_batch(rows)
    result = WriteResult(duplicates=repeats)
    pending = [rows] if rows else []
    while pending:
        chunk = pending.pop()
        try:
            with session.begin_nested():
                session.bulk_insert_mappings(
                    AnalyticsEvent, [mapping for mapping, _ in chunk], render_nulls=True
                )
            result.stored += len(chunk)
            continue
        except IntegrityError as exc:
            if isinstance(exc.orig, pg_errors.UniqueViolation):
                stored = _already_stored(session, chunk)
                fresh = [row for row in chunk if _key(row[0]) not in stored]
                if len(fresh) < len(chunk):
                    result.duplicates += len(chunk) - len(fresh)
                    if fresh:
                        pending.append(fresh)
                    continue
            failure: IntegrityError | DataError = exc
        except DataError as exc:
            failure = exc
        if len(chunk) == 1:
            result.rejected.append(Rejected(payload=chunk[0][1], reason=_reason(failure)))
        else:
            middle = len(chunk) // 2
            pending.extend((chunk[middle:], chunk[:middle]))
    return result
