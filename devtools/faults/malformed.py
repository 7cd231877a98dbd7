"""A catalogue of bad input, as it reaches the worker: rows, messages and raw bodies.

Shared by tests/test_bad_input.py and the ``bad_input`` scenario of the fault
suite. Every bad item carries ``marker`` (in ``tenant_id`` or ``user_id``) so
that its dead letter can be found, and differs from every other item, so that
each one makes a dead letter of its own (identical payloads share one).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schema import reasons
from schema.event import (
    MAX_FEATURE_NAME_LEN,
    MAX_MODEL_LEN,
    MAX_TENANT_ID_LEN,
    MAX_USER_ID_LEN,
    WIRE_FIELDS,
    WIRE_VERSION,
)

TEN_YEARS_US = 10 * 365 * 86_400 * 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def event(tenant: str, user: str, **overrides: Any) -> dict[str, Any]:
    """A valid wire event as a dict (``row`` turns it into the positional list)."""
    values = {
        "event_id": uuid.uuid4().hex,
        "tenant_id": tenant,
        "feature_name": "summarization",
        "user_id": user,
        "model": "gpt-4o-mini",
        "input_tokens": 120,
        "output_tokens": 30,
        "tokens_used": None,
        "latency_ms": 850,
        "status": "success",
        "error_type": None,
        "timestamp_us": now_us(),
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "provider": None,
        "time_to_first_token_ms": None,
    }
    values.update(overrides)
    return values


def row(values: dict[str, Any]) -> list[Any]:
    return [values[name] for name in WIRE_FIELDS]


def message(rows: list[Any], *, fields: list[str] | None = None, version: Any = WIRE_VERSION) -> dict[str, Any]:
    return {"v": version, "fields": list(WIRE_FIELDS) if fields is None else fields, "rows": rows}


@dataclass(frozen=True)
class BadRow:
    """One row the worker must dead-letter; ``reason`` is part of the expected reason."""

    name: str
    make: Callable[[str, str], Any]  # (tenant, user) -> the wire row
    reason: str


def _with(**overrides: Any) -> Callable[[str, str], list[Any]]:
    return lambda tenant, user: row(event(tenant, user, **overrides))


BAD_ROWS: list[BadRow] = [
    BadRow("missing field", lambda t, u: row(event(t, u))[:-1], f"row must be a list of {len(WIRE_FIELDS)} values"),
    BadRow(
        "extra field", lambda t, u: [*row(event(t, u)), "surplus"], f"row must be a list of {len(WIRE_FIELDS)} values"
    ),
    BadRow("row as an object", lambda t, u: event(t, u), "row must be a list"),
    BadRow("event_id not a UUID", _with(event_id="not-a-uuid"), "event_id"),
    BadRow("event_id null", _with(event_id=None), "event_id"),
    BadRow("tokens as a string", _with(input_tokens="120"), "input_tokens must be an integer"),
    BadRow("tokens as a float", _with(output_tokens=2.5), "output_tokens must be an integer"),
    BadRow("tokens as a boolean", _with(input_tokens=True), "input_tokens must be an integer"),
    BadRow("negative tokens", _with(output_tokens=-1), "output_tokens must not be negative"),
    BadRow("huge tokens", _with(input_tokens=10**30), "input_tokens is"),
    BadRow("tokens_used below the sum", _with(tokens_used=1), "tokens_used"),
    BadRow("negative latency", _with(latency_ms=-5), "latency_ms must not be negative"),
    BadRow("huge latency", _with(latency_ms=10**20), "latency_ms is"),
    BadRow("NaN latency", _with(latency_ms=math.nan), "latency_ms must be a finite number"),
    BadRow("infinite latency", _with(latency_ms=math.inf), "latency_ms must be a finite number"),
    BadRow("latency as a string", _with(latency_ms="850"), "latency_ms must be a number"),
    BadRow("negative time to first token", _with(time_to_first_token_ms=-1), "time_to_first_token_ms must not be"),
    BadRow(
        "time to first token over latency",
        _with(latency_ms=850, time_to_first_token_ms=851),
        "time_to_first_token_ms (851) is more than latency_ms",
    ),
    BadRow("tenant over-long", lambda t, u: row(event(t + "x" * MAX_TENANT_ID_LEN, u)), "tenant_id is"),
    BadRow("tenant empty", lambda t, u: row(event("", u)), "tenant_id must not be empty"),
    BadRow("tenant as a number", lambda t, u: row(event(12345, u)), "tenant_id must be a string"),
    BadRow("feature over-long", _with(feature_name="f" * (MAX_FEATURE_NAME_LEN + 1)), "feature_name is"),
    BadRow("user over-long", lambda t, u: row(event(t, u + "u" * MAX_USER_ID_LEN)), "user_id is"),
    BadRow("model over-long", _with(model="m" * (MAX_MODEL_LEN + 1)), "model is"),
    BadRow("NUL byte", lambda t, u: row(event(t, u + "\x00nul")), "user_id contains a NUL"),
    BadRow("invalid UTF-8 (lone surrogate)", _with(model="gpt-\udcff"), "model is not valid Unicode"),
    BadRow(
        "naive timestamp (ISO string)", _with(timestamp_us="2026-01-01T12:00:00"), "timestamp_us must be an integer"
    ),
    BadRow("timestamp as a float", _with(timestamp_us=1.7e15), "timestamp_us must be an integer"),
    BadRow("timestamp out of range", _with(timestamp_us=10**20), "timestamp_us"),
    BadRow(
        "far-future timestamp",
        lambda t, u: row(event(t, u, timestamp_us=now_us() + TEN_YEARS_US)),
        "too far in the future",
    ),
    BadRow("unknown status", _with(status="ok"), "status must be one of"),
    BadRow("status null", _with(status=None), "status must be one of"),
]


@dataclass(frozen=True)
class BadMessage:
    """A task message whose argument is not an ingest batch at all: one dead letter."""

    name: str
    make: Callable[[str], Any]  # marker -> the task argument
    reason: str


BAD_MESSAGES: list[BadMessage] = [
    BadMessage(
        "other version",
        lambda m: message([row(event(m, "u"))], version=WIRE_VERSION + 1),
        reasons.NOT_AN_INGEST_MESSAGE,
    ),
    BadMessage(
        "version as a string", lambda m: message([row(event(m, "u"))], version="1"), reasons.NOT_AN_INGEST_MESSAGE
    ),
    BadMessage(
        "a field missing",
        lambda m: message([row(event(m, "u"))[:-1]], fields=list(WIRE_FIELDS[:-1])),
        reasons.MISSING_ROWS_AND_FIELDS,
    ),
    BadMessage(
        "an extra field",
        lambda m: message([[*row(event(m, "u")), 1]], fields=[*WIRE_FIELDS, "cost"]),
        reasons.MISSING_ROWS_AND_FIELDS,
    ),
    BadMessage(
        "rows not a list", lambda m: {"v": 1, "fields": list(WIRE_FIELDS), "rows": m}, reasons.MISSING_ROWS_AND_FIELDS
    ),
    BadMessage("a bare string", lambda m: f"hello {m}", reasons.NOT_AN_INGEST_MESSAGE),
    BadMessage("a list", lambda m: [m, 1, 2], reasons.NOT_AN_INGEST_MESSAGE),
]


@dataclass(frozen=True)
class RawBody:
    """Bytes put straight on the queue, not made by Celery; the consumer dead-letters them."""

    name: str
    body: Callable[[str], bytes]
    content_type: str
    content_encoding: str
    reason: str
    task_headers: Callable[[], dict[str, Any]] = dict

    def headers(self, marker: str) -> dict[str, Any]:
        # The marker in a header too: a body that is not UTF-8 is dead-lettered in base64.
        return {**self.task_headers(), "x-marker": marker}


def _task_headers(task: str) -> Callable[[], dict[str, Any]]:
    return lambda: {"task": task, "id": str(uuid.uuid4()), "lang": "py", "argsrepr": "", "kwargsrepr": ""}


RAW_BODIES: list[RawBody] = [
    RawBody("not JSON", lambda m: f"{{broken json {m}".encode(), "application/json", "utf-8", reasons.COULD_NOT_DECODE),
    RawBody(
        "invalid UTF-8 bytes",
        lambda m: b"\xff\xfe\x00" + m.encode() + b"\xc3\x28",
        "application/json",
        "utf-8",
        reasons.COULD_NOT_DECODE,
    ),
    RawBody("plain text", lambda m: f"hello {m}".encode(), "text/plain", "utf-8", reasons.COULD_NOT_DECODE),
    RawBody(
        "pickle",
        lambda m: f"pickle? {m}".encode(),
        "application/x-python-serialize",
        "binary",
        reasons.COULD_NOT_DECODE,
    ),
    RawBody(
        "JSON, not a task",
        lambda m: json.dumps({"hello": m}).encode(),
        "application/json",
        "utf-8",
        reasons.NOT_A_TASK_MESSAGE,
    ),
    RawBody(
        "unknown task",
        lambda m: json.dumps([[m], {}, {}]).encode(),
        "application/json",
        "utf-8",
        reasons.UNKNOWN_TASK,
        _task_headers("somebody.elses_task"),
    ),
]
