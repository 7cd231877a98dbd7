"""``POST /v1/events``: HTTP ingest for apps that are not written in Python.

A batch of events, answered per event: accepted ones are in the same
pipeline as ``track()`` (published within one flush interval, spooled to disk
while the broker is down); rejected ones come back with the reason, and never
sink their batch-mates. The tenant is the API key's; an event naming a tenant
is refused. Events without an ``event_id`` or ``timestamp`` get them here and
both are returned: the idempotency key is the pair, so a client retrying with
the returned ``event_id`` and ``timestamp`` stores nothing twice.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.constants import REF_PREFIX
from pydantic import BaseModel, Field

from config import get_settings
from producer import get_tracker
from producer.ids import uuid7_hex_batch
from schema.event import timestamp_to_us
from storage.api_keys import Principal
from web.auth import AUTH_RESPONSES, BODY_UNREADABLE, ErrorDetail, tenant_principal
from web.body_limit import read_json
from web.errors import invalid
from web.metrics import HTTP_EVENTS
from web.rate_limit import RATE_LIMITED, ingest_rate_limit

router = APIRouter(tags=["ingest"])

EVENT_FIELDS = frozenset({
    "event_id", "feature_name", "user_id", "model", "input_tokens", "output_tokens",
    "tokens_used", "latency_ms", "status", "error_type", "timestamp",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "provider", "time_to_first_token_ms",
})  # fmt: skip
REQUIRED_FIELDS = ("feature_name", "user_id")
HTTP_MULTI_STATUS = 207


class EventBatch(BaseModel):
    events: list[dict[str, Any]] = Field(
        description="Usage events: feature_name, user_id (required); input_tokens, output_tokens,"
        " tokens_used, latency_ms, status ('success'|'error'), model, error_type, timestamp"
        " (ISO 8601 with offset), event_id (UUID) (optional); cache_read_tokens, cache_write_tokens,"
        " reasoning_tokens (optional, default 0) and provider (optional, e.g. 'openai', 'anthropic'),"
        " counted as OpenTelemetry GenAI does: input_tokens includes cache reads and cache writes,"
        " output_tokens includes reasoning tokens; time_to_first_token_ms (optional, a number of ms, rounded"
        " like latency_ms and at most latency_ms; omit it or send null for a call that did not stream)."
        " No tenant_id: it is the key's.",
        # Published in the schema; enforced by the handler, which names the problem in its own words.
        json_schema_extra={"minItems": 1},
    )


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected"]
    event_id: str | None = None
    timestamp: datetime | None = None
    error: str | None = None


class IngestResult(BaseModel):
    accepted: int
    rejected: int
    results: list[EventResult]


def _utf8(text: str) -> str:
    """``text`` as a JSON answer can carry it: a lone surrogate from the request (JSON's ``\\ud800``)
    cannot be encoded as UTF-8 and made the whole answer a 500; it is written as its escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _track(tenant_id: str, event: dict[str, Any], event_id: str) -> tuple[str, datetime]:
    """Validate and buffer one event; its (event_id, timestamp), or ValueError/TypeError naming the field."""
    if "tenant_id" in event:
        raise ValueError("tenant_id comes from the API key; remove it from the event")
    unknown = sorted(set(event) - EVENT_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    missing = [name for name in REQUIRED_FIELDS if name not in event]
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    fields = dict(event)
    if isinstance(fields.get("timestamp"), str):
        try:
            fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
        except ValueError:
            raise ValueError(f"timestamp must be ISO 8601, got {event['timestamp']!r}") from None
        timestamp_to_us(fields["timestamp"])  # naive timestamps are refused by name
    fields.setdefault("timestamp", datetime.now(UTC))
    fields["event_id"] = fields.get("event_id") or event_id
    if not get_tracker().track(tenant_id=tenant_id, **fields):
        raise ValueError("the server's buffer is full; retry this event later")
    return str(fields["event_id"]), fields["timestamp"]


# The body is declared to OpenAPI but not to FastAPI, which would read and parse it before
# the key is checked: the handler reads it (bounded) after authentication and rate limiting.
EVENT_BATCH_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": EventBatch.model_json_schema()}}},
}
VALIDATION_ERROR = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": f"{REF_PREFIX}HTTPValidationError"}}},
}


@router.post(
    "/v1/events",
    status_code=202,
    response_model=IngestResult,
    responses={
        207: {"model": IngestResult, "description": "Some events rejected; see results"},
        413: {"model": ErrorDetail, "description": "Too many events or too large a body"},
        422: VALIDATION_ERROR,
        **AUTH_RESPONSES,
        **BODY_UNREADABLE,
        **RATE_LIMITED,
    },
    dependencies=[Depends(ingest_rate_limit)],
    openapi_extra=EVENT_BATCH_BODY,
)
async def ingest_events(request: Request, response: Response,
                        who: Principal = Depends(tenant_principal)) -> IngestResult:  # fmt: skip
    """Authenticated and rate-limited before a byte of the body is read; then the body, bounded."""
    batch = await read_json(request, EventBatch)
    return await run_in_threadpool(_ingest, batch, response, who)


def _ingest(batch: EventBatch, response: Response, who: Principal) -> IngestResult:
    limit = get_settings().http_max_batch_events
    if not batch.events:
        raise invalid("body", "events", "events must hold at least one event", batch.events)
    if len(batch.events) > limit:
        raise HTTPException(413, f"{len(batch.events)} events in one batch; the limit is {limit}")
    assert who.tenant_id is not None  # tenant_principal guarantees it
    fresh_ids = uuid7_hex_batch([time.time_ns() // 1000] * len(batch.events))
    results = []
    for index, (event, fresh_id) in enumerate(zip(batch.events, fresh_ids, strict=True)):
        try:
            event_id, timestamp = _track(who.tenant_id, event, fresh_id)
        except (ValueError, TypeError) as exc:
            # Echoed only if it is a string (a number here made the batch a 500), and as UTF-8 can carry it.
            echoed = event.get("event_id")
            results.append(EventResult(index=index, status="rejected", event_id=_utf8(echoed) if isinstance(echoed, str) else None,
                                       error=_utf8(str(exc))))  # fmt: skip
        else:
            results.append(EventResult(index=index, status="accepted", event_id=event_id, timestamp=timestamp))
    accepted = sum(r.status == "accepted" for r in results)
    HTTP_EVENTS.labels("accepted").inc(accepted)
    HTTP_EVENTS.labels("rejected").inc(len(results) - accepted)
    if accepted < len(results):
        response.status_code = HTTP_MULTI_STATUS
    return IngestResult(accepted=accepted, rejected=len(results) - accepted, results=results)
