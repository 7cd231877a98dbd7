"""Replaying dead letters after a fix: store what now passes, keep what still fails.

A dead letter holds one event row (from the worker's checks or the database),
a whole message that was not in our format, or a raw broker message (from the
consumer: an ``ingest.write_batch`` task message of Celery's protocol 2 or 1,
read by schema.task_message as the worker reads it). Each is decoded again and
goes through the same unit of work as live traffic (storage.flush), in the
caller's transaction with the removal of the dead letter: replaying twice, or
replaying an event that is already stored, stores nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from config import Settings
from models import DeadLetter
from schema.event import FIELDS_BY_VERSION
from schema.message import decode_message
from schema.task_message import ingest_batch
from storage import dead_letters
from storage.flush import Flush, write_flush
from storage.partitions import PartitionPolicy

RAW_KEYS = {"body", "content_type"}  # a raw broker message's dead letter (tasks.admission.raw_payload)


@dataclass
class ReplayResult:
    replayed: int = 0  # dead letters consumed
    stored: int = 0
    duplicates: int = 0
    still_failing: int = 0


def _as_message(payload: Any) -> Any:
    """The ingest message a dead letter's payload stands for (the payload itself if none).

    An event row is replayed in the wire version whose fields it has: a row
    dead-lettered from a version-1 message goes back as version 1.
    """
    if isinstance(payload, dict):
        for version, fields in FIELDS_BY_VERSION.items():
            if set(payload) == set(fields):
                return {"v": version, "fields": list(fields), "rows": [[payload[f] for f in fields]]}
    if isinstance(payload, dict) and set(payload) >= RAW_KEYS:
        try:
            body = json.loads(payload["body"])
        except (ValueError, TypeError):
            return payload
        batch, refused = ingest_batch(payload.get("headers") or {}, body)
        return payload if refused is not None else batch
    return payload


def replay(
    session: Session, ids: list[int] | None, settings: Settings, *, policy: PartitionPolicy | None = None
) -> ReplayResult:
    """Replay the given dead letters (all when ``ids`` is None) in the session's transaction, with ``settings``."""
    query = select(DeadLetter).order_by(DeadLetter.id).with_for_update(skip_locked=True)
    if ids is not None:
        query = query.where(DeadLetter.id.in_(ids))
    result = ReplayResult()
    for letter in session.scalars(query):
        flush = Flush.decoded(decode_message(_as_message(json.loads(letter.payload))), source=letter.source)
        # Records what fails again: a payload failing again bumps its attempts.
        written = write_flush(session, flush, settings, policy=policy)
        failing = {dead_letters.fingerprint(dead_letters.encode_payload(r.payload)) for r in written.dead_letters}
        if letter.fingerprint not in failing:
            session.execute(delete(DeadLetter).where(DeadLetter.id == letter.id))
            result.replayed += 1
        result.stored += written.stored
        result.duplicates += written.duplicates
        result.still_failing += written.dead_lettered
    return result
