"""Recording what could not be stored, idempotently.

Everything written here is made storable first: PostgreSQL text refuses NUL
(psycopg2 refuses it in every string parameter) and invalid UTF-8 such as a
lone surrogate, and a reason or source often quotes the very input that was
bad (a content type, a header, a field). The payload is JSON with ASCII escapes;
the reason and the source have their control characters and surrogates
escaped (``\\x00``, ``\\ud800``) and are cut to a bounded length. A dead
letter can therefore not fail because of what the message holds.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models import DeadLetter

SOURCE_WORKER = "worker"  # a row or ingest message, decoded: refused by the checks or the database
SOURCE_QUEUE = "queue"  # a raw broker message the ingest queue would not run
REASON_MAX_CHARS = 2000  # a reason quoting a huge input is cut, and says so
SOURCE_MAX_CHARS = 32  # models.DeadLetter.source
TRUNCATED_MARK = "... [truncated]"
UNENCODABLE_KEY = "unencodable_payload_repr"
# C0 and C1 controls, DEL, and lone surrogates (not encodable as UTF-8)
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def storable_text(value: object, max_chars: int = REASON_MAX_CHARS) -> str:
    """``value`` as text PostgreSQL accepts and a terminal shows safely:
    control characters (but tab and newlines) and surrogates escaped, cut to ``max_chars``."""
    text = _UNSTORABLE.sub(_escape, value if isinstance(value, str) else str(value))
    if len(text) > max_chars:
        text = text[: max(0, max_chars - len(TRUNCATED_MARK))] + TRUNCATED_MARK
    return text


@dataclass(frozen=True)
class Rejected:
    """One payload that will not be stored, and why."""

    payload: Any
    reason: str
    source: str = SOURCE_WORKER


def encode_payload(payload: Any) -> str:
    # ASCII escapes keep NUL and invalid surrogates storable in a text column.
    try:
        return json.dumps(payload, sort_keys=True, ensure_ascii=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        # Keys JSON cannot sort or hold, or nesting too deep: keep a bounded repr.
        return json.dumps({UNENCODABLE_KEY: reprlib.repr(payload)}, ensure_ascii=True)


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
            "source": storable_text(item.source, SOURCE_MAX_CHARS),
            "reason": storable_text(item.reason),
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
