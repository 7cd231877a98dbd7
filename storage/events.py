"""Writing a batch of events: exactly once, and one bad row never sinks the rest.

``store_batch`` runs in the caller's transaction, so the stored rows and the
dead letters of a batch commit together, and the broker message is acknowledged
only after that commit (see tasks.ingest). Each attempt is wrapped in a
SAVEPOINT:

* events outside the accepted window (older than EVENT_MAX_PAST_AGE_DAYS or
  retention, or further in the future than the allowed clock skew; see
  storage.partitions.AcceptWindow) are refused first, with the reason, before
  any SQL;
* events naming a feature or model their tenant has not used before, once
  the tenant has TENANT_MAX_FEATURES (TENANT_MAX_MODELS) of them, are refused
  with the reason (storage.tenant_names; no SQL for names known committed);
* the batch is logged in ``rollup_pending_batches`` and its rows stamped with
  that ``batch_id``, in this same transaction (storage.rollups: the rollups
  see the batch exactly when its rows commit); a batch that stores nothing
  removes its log row;
* the common case is one insert of the whole batch, by the configured writer
  (storage.writers: ``bulk_insert_mappings`` or COPY);
* a unique violation means some events are already stored (a redelivered
  message): those are looked up, dropped, and the rest is inserted again.
  The key is (event_id, tenant_id, timestamp) (models.event): one tenant's
  event ids never suppress another's events;
* a month with no partition (beat has not run, a late event, a clock jump)
  is created by ``ensure_partitions`` in a short transaction of its own, under
  the partition lock, and the rows are inserted again; the hot path pays
  nothing for this, it only reacts to PostgreSQL's error. One call creates at
  most INGEST_MAX_PARTITIONS_PER_BATCH months; rows of further missing months
  are dead-lettered with that reason (``_MissingMonths``);
* any other row-level rejection (a check constraint, a value out of range, a
  month that still cannot be created) splits the batch in halves until the
  offending rows are isolated and dead-lettered with PostgreSQL's message as
  the reason.

Errors that are not about the rows (connection lost, deadlock, the partition
lock never granted) propagate so that the task retries the whole batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from psycopg2 import errors as pg_errors
from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from config import Settings
from models import AnalyticsEvent
from schema.message import plain_payload
from storage.dead_letters import Rejected
from storage.partitions import (
    AcceptWindow,
    Month,
    PartitionPolicy,
    ensure_partitions,
    existing_months,
    is_missing_partition,
)
from storage.rollups import discard_batch, open_batch
from storage.tenant_names import NameCaps, admit_names
from storage.writers import WRITERS, Writer

# A mapping for bulk_insert_mappings, and the raw wire payload to dead-letter it with
# (a dict, or schema.message's WirePayload that builds it only if the row is refused).
Row = tuple[dict[str, Any], Any]
Key = tuple[str, UUID, datetime]  # the primary key: (tenant_id, event_id, timestamp), per tenant


@dataclass
class WriteResult:
    stored: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def _key(mapping: dict[str, Any]) -> Key:
    return mapping["tenant_id"], mapping["event_id"], mapping["timestamp"]


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
    """Keys of ``rows`` already in the table; another tenant's row with the same id is not one.

    Looked up by event id, the primary key's leading column; the tenant and
    timestamp are compared here.
    """
    ids = [row[0]["event_id"] for row in rows]
    found = session.execute(
        select(AnalyticsEvent.tenant_id, AnalyticsEvent.event_id, AnalyticsEvent.timestamp).where(
            AnalyticsEvent.event_id.in_(ids)
        )
    )
    return {(tenant_id, event_id, ts) for tenant_id, event_id, ts in found}


def _inside(window: AcceptWindow, rows: list[Row], rejected: list[Rejected]) -> list[Row]:
    """The rows ``window`` accepts; the others go to ``rejected`` with the reason."""
    kept = []
    for row in rows:
        refusal = window.refusal(row[0]["timestamp"])
        if refusal is None:
            kept.append(row)
        else:
            rejected.append(Rejected(payload=plain_payload(row[1]), reason=refusal))
    return kept


class _MissingMonths:
    """Creates the months one ``store_batch`` call lacks, at most the policy's cap of them.

    A batch spanning many months (an attack, a bug) would otherwise make one
    CREATE/ATTACH per month, and a batch too big to ever succeed is retried
    forever. Beyond ``max_partitions_per_batch`` new months, rows of the other
    missing months are dead-lettered. The months with the most rows are created
    first (the fewest events dead-lettered for the same DDL), ties the earliest
    first, so the choice depends only on the rows.
    """

    def __init__(self, policy: PartitionPolicy) -> None:
        self.policy = policy
        self.done: set[Month] = set()  # created, found, or asked for: not retried by this call
        self.refused: set[Month] = set()  # beyond the cap
        self.created = 0

    def make_room(self, session: Session, chunk: list[Row], rejected: list[Rejected]) -> list[Row] | None:
        """After "no partition": create what the cap allows, dead-letter rows of refused months.

        Returns the rows to insert again, or None when nothing changed (the
        rows are then isolated by bisection, with PostgreSQL's reason).
        """
        counts = Counter(Month.of(mapping["timestamp"]) for mapping, _ in chunk)
        new = set(counts) - self.done - self.refused
        if new:
            existing = existing_months(session.connection())
            missing = sorted(new - existing, key=lambda month: (-counts[month], month))
            room = max(0, self.policy.max_partitions_per_batch - self.created)
            create, refuse = missing[:room], missing[room:]
            if create:
                ensure_partitions(session.get_bind().engine, create, self.policy)
                self.created += len(create)
            self.done |= new - set(refuse)
            self.refused |= set(refuse)
        if not new and not self.refused.intersection(counts):
            return None
        kept = []
        for row in chunk:
            month = Month.of(row[0]["timestamp"])
            if month in self.refused:
                rejected.append(Rejected(payload=plain_payload(row[1]), reason=self._reason(row[0], month)))
            else:
                kept.append(row)
        return kept

    def _reason(self, mapping: dict[str, Any], month: Month) -> str:
        return (
            f"timestamp {mapping['timestamp'].isoformat()} is in month {month}, which has no"
            f" partition, and this batch already creates {self.policy.max_partitions_per_batch}"
            " (INGEST_MAX_PARTITIONS_PER_BATCH); send events of many months in separate batches"
        )


def store_batch(
    session: Session,
    rows: list[Row],
    settings: Settings,
    *,
    policy: PartitionPolicy | None = None,
    writer: Writer | None = None,
    caps: NameCaps | None = None,
) -> WriteResult:
    """Insert ``rows`` in the session's transaction; see the module docstring.

    ``settings`` are the caller's (never read from the environment here);
    ``policy``, ``writer`` and ``caps``, when given, replace the ones built from them.
    """
    policy = policy or PartitionPolicy.from_settings(settings)
    writer = writer or WRITERS[settings.ingest_writer]
    rows, repeats = unique_in_batch(rows)
    result = WriteResult(duplicates=repeats)
    rows = _inside(policy.window(datetime.now(UTC)), rows, result.rejected)
    rows = admit_names(session, rows, caps or NameCaps.from_settings(settings), result.rejected)
    months = _MissingMonths(policy)
    # The rollup log (storage.rollups): one row per batch, committed with its rows.
    batch_id = open_batch(session, [mapping["timestamp"] for mapping, _ in rows]) if rows else None
    for mapping, _ in rows:
        mapping["batch_id"] = batch_id
    pending = [rows] if rows else []
    while pending:
        chunk = pending.pop()
        try:
            with session.begin_nested():
                writer(session, [mapping for mapping, _ in chunk])
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
            elif is_missing_partition(exc):
                kept = months.make_room(session, chunk, result.rejected)
                if kept is not None:
                    if kept:
                        pending.append(kept)
                    continue
            failure: IntegrityError | DataError = exc
        except DataError as exc:
            failure = exc
        if len(chunk) == 1:
            result.rejected.append(Rejected(payload=plain_payload(chunk[0][1]), reason=_reason(failure)))
        else:
            middle = len(chunk) // 2
            pending.extend((chunk[middle:], chunk[:middle]))
    if batch_id is not None and result.stored == 0:
        discard_batch(session, batch_id)
    return result
