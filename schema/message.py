"""Decoding one ingest message (see schema.event for the format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schema.event import WIRE_FIELDS, WIRE_VERSION, InvalidEvent, parse_wire_row


@dataclass
class DecodedBatch:
    # (column mapping, raw payload) per valid event
    rows: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    # (raw payload, reason) per event or message that breaks the contract
    invalid: list[tuple[Any, str]] = field(default_factory=list)


def decode_message(message: object) -> DecodedBatch:
    """Split a message into valid rows and invalid payloads with their reasons.

    A message that is not in our format at all becomes one invalid payload, so
    that it is dead-lettered as a whole instead of crashing the worker.
    """
    batch = DecodedBatch()
    if not isinstance(message, dict) or message.get("v") != WIRE_VERSION:
        batch.invalid.append((message, f"not an ingest message of version {WIRE_VERSION}"))
        return batch
    fields, rows = message.get("fields"), message.get("rows")
    if (
        not isinstance(rows, list)
        or not isinstance(fields, list)
        or not all(isinstance(name, str) for name in fields)
        or sorted(fields) != sorted(WIRE_FIELDS)
    ):
        batch.invalid.append((message, f"message must carry 'rows' and 'fields' = {list(WIRE_FIELDS)}"))
        return batch
    for row in rows:
        payload = dict(zip(fields, row)) if isinstance(row, list) else row
        try:
            batch.rows.append((parse_wire_row(fields, row), payload))
        except InvalidEvent as exc:
            batch.invalid.append((payload, str(exc)))
    return batch
