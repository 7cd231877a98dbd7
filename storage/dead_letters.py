"""Recording what could not be stored, idempotently."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models import DeadLetter

SOURCE_WORKER = "worker"


@dataclass(frozen=True)
class Rejected:
    """One payload that will not be stored, and why."""

    payload: Any
    reason: str
    source: str = SOURCE_WORKER


def encode_payload(payload: Any) -> str:
    # ASCII escapes keep NUL and invalid surrogates storable in a text column.
    return json.dumps(payload, sort_keys=True, ensure_ascii=True, default=repr)


def fingerprint(encoded_payload: str) -> str:
    return hashlib.sha256(encoded_payload.encode()).hexdigest()


def record(session: Session, rejected: list[Rejected]) -> None:
    """Upsert dead letters; a payload seen again bumps attempts and last_seen."""
    if not rejected:
        return
    rows: dict[str, dict[str, Any]] = {}
    for item in rejected:
        payload = encode_payload(item.payload)
        key = fingerprint(payload)
        rows[key] = {
            "fingerprint": key,
            "source": item.source,
            "reason": item.reason,
            "payload": payload,
        }
    stmt = insert(DeadLetter).values(list(rows.values()))
    stmt = stmt.on_conflict_do_update(
        index_elements=[DeadLetter.fingerprint],
        set_={
            "attempts": DeadLetter.attempts + 1,
            "last_seen": func.now(),
            "reason": stmt.excluded.reason,
        },
    )
    session.execute(stmt)
