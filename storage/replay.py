"""Replaying dead letters after a fix: store what now passes, keep what still fails.

A dead letter holds one event row (from the worker's checks or the database),
a whole message that was not in our format, or a raw broker message (from the
consumer). Each is decoded again and goes through the same writer as live
traffic, in one transaction with the removal of the dead letter: replaying
twice, or replaying an event that is already stored, stores nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from config import Settings
from models import DeadLetter
from schema.event import WIRE_FIELDS, WIRE_VERSION
from schema.message import DecodedBatch, decode_message
from storage import dead_letters
from storage.dead_letters import Rejected
from storage.events import store_batch
from storage.partitions import PartitionPolicy

INGEST_TASK = "ingest.write_batch"


@dataclass
class ReplayResult:
    replayed: int = 0  # dead letters consumed
    stored: int = 0
    duplicates: int = 0
    still_failing: int = 0


def _as_message(payload: Any) -> Any:
    """The ingest message a dead letter's payload stands for."""
    if isinstance(payload, dict) and set(payload) == set(WIRE_FIELDS):
        return {"v": WIRE_VERSION, "fields": list(WIRE_FIELDS), "rows": [[payload[f] for f in WIRE_FIELDS]]}
    if isinstance(payload, dict) and "body" in payload and "content_type" in payload:
        headers = payload.get("headers") or {}
        if headers.get("task") == INGEST_TASK:
            try:
                args, _kwargs, _embed = json.loads(payload["body"])
                return args[0]
            except (ValueError, TypeError, IndexError):
                return payload
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
        decoded: DecodedBatch = decode_message(_as_message(json.loads(letter.payload)))
        written = store_batch(session, decoded.rows, settings, policy=policy)
        failing = [Rejected(payload=p, reason=r, source=letter.source) for p, r in decoded.invalid]
        failing += [Rejected(payload=r.payload, reason=r.reason, source=letter.source) for r in written.rejected]
        fingerprints = {dead_letters.fingerprint(dead_letters.encode_payload(r.payload)) for r in failing}
        if letter.fingerprint not in fingerprints:
            session.execute(delete(DeadLetter).where(DeadLetter.id == letter.id))
            result.replayed += 1
        dead_letters.record(session, failing)  # a payload failing again bumps its attempts
        result.stored += written.stored
        result.duplicates += written.duplicates
        result.still_failing += len(failing)
    return result
