"""Decoding one ingest message (see schema.event for the format)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schema import reasons
from schema.event import FIELDS_BY_VERSION, InvalidEvent, wire_row_parser


class WirePayload(Mapping[str, Any]):
    """The raw payload of a valid row, ``{field: value}`` of its wire row, built on demand.

    A valid row needs it only if it is dead-lettered later (outside the accepted
    window, or refused by the database), so decoding keeps the row and its
    message's field names and builds the dict only then: ``plain_payload``
    gives exactly the ``dict(zip(fields, row))`` an invalid row is recorded with.
    """

    __slots__ = ("_fields", "_row")

    def __init__(self, fields: list[str], row: list[Any]) -> None:
        self._fields = fields
        self._row = row

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self._row, strict=False))

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return repr(self.as_dict())


def plain_payload(payload: Any) -> Any:
    """What a dead letter records for a row's payload: a WirePayload becomes its dict."""
    return payload.as_dict() if type(payload) is WirePayload else payload


@dataclass
class DecodedBatch:
    # (column mapping, raw payload) per valid event; the payload is a WirePayload
    # (a read-only mapping: pass it through plain_payload before recording it)
    rows: list[tuple[dict[str, Any], Any]] = field(default_factory=list)
    # (raw payload, reason) per event or message that breaks the contract
    invalid: list[tuple[Any, str]] = field(default_factory=list)


ROWS_KEPT_OF_OVERSIZED = 100  # rows an over-long message's dead letter keeps


def oversized_payload(message: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """What the dead letter of a message with too many rows keeps: its head, not its all."""
    return {"v": message.get("v"), "fields": message.get("fields"), "rows_total": len(rows),
            "rows_head": rows[:ROWS_KEPT_OF_OVERSIZED]}  # fmt: skip


def decode_message(message: object, max_rows: int | None = None) -> DecodedBatch:
    """Split a message into valid rows and invalid payloads with their reasons.

    A message that is not in our format at all becomes one invalid payload, so
    that it is dead-lettered as a whole instead of crashing the worker; so does
    one with more than ``max_rows`` rows (INGEST_MAX_ROWS_PER_MESSAGE), checked
    before any row is parsed, its dead letter keeping only its first rows.
    Every version in FIELDS_BY_VERSION is accepted, with exactly its fields.
    """
    batch = DecodedBatch()
    version = message.get("v") if isinstance(message, dict) else None
    # type() rather than a lookup: True == 1 and 1.0 == 1 would pass as version 1.
    expected = FIELDS_BY_VERSION.get(version) if type(version) is int else None
    if expected is None:
        batch.invalid.append((message, reasons.not_an_ingest_message(tuple(FIELDS_BY_VERSION))))
        return batch
    assert isinstance(message, dict)
    fields, rows = message.get("fields"), message.get("rows")
    if (
        not isinstance(rows, list)
        or not isinstance(fields, list)
        or not all(isinstance(name, str) for name in fields)
        or sorted(fields) != sorted(expected)
    ):
        batch.invalid.append((message, reasons.missing_rows_and_fields(expected)))
        return batch
    if max_rows is not None and len(rows) > max_rows:
        reason = reasons.too_many_rows(len(rows), max_rows, ROWS_KEPT_OF_OVERSIZED)
        batch.invalid.append((oversized_payload(message, rows), reason))
        return batch
    parse = wire_row_parser(fields)
    valid = batch.rows.append
    for row in rows:
        try:
            valid((parse(row), WirePayload(fields, row)))
        except InvalidEvent as exc:
            batch.invalid.append((dict(zip(fields, row, strict=False)) if isinstance(row, list) else row, str(exc)))
    return batch
