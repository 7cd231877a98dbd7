"""``POST /v1/traces``: OTLP/HTTP trace export, model-call spans stored as usage events.

An OpenTelemetry SDK's OTLP/HTTP exporter points here
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=<web>/v1/traces``,
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer <tenant key>``). Bodies are
``application/x-protobuf`` or ``application/json`` (OTLP's JSON mapping: hex
trace and span ids), gzip-compressed or not. The key is checked and the
request rate-limited before the body is read; the body is bounded by
HTTP_MAX_BODY_BYTES as it arrives and again as it is inflated (a gzip bomb
stops at the limit), and the span count by OTLP_MAX_SPANS before any span is
mapped.

Spans that describe a model call (schema.otlp) go through ``track()``, the
same validation and pipeline as ``POST /v1/events``; other spans are skipped
and counted. The answer is OTLP's: 200 with an ``ExportTraceServiceResponse``
in the request's encoding, whose ``partial_success`` counts the model-call
spans refused by validation and names the first few problems (skipped spans
are not refusals; the message says how many). When the producer's buffer is
full the whole request is answered 503 with Retry-After: exporters retry on
503, and the spans' deterministic event ids make the retry store nothing twice.
Refusals of the request itself (401, 403, 413, 415, 429, 400) carry the
project's ``{"detail": ...}`` JSON.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from google.protobuf import json_format  # type: ignore[import-untyped]  # no types-protobuf in the venv
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from config import Settings, get_settings
from monitoring import metrics
from producer import get_tracker
from schema.otlp import InvalidSpan, SpanMapping, attribute_names, map_span, span_count, spans
from storage.api_keys import Principal
from web.auth import AUTH_RESPONSES, ErrorDetail, tenant_principal
from web.body_limit import BodyTooLarge, read_body
from web.rate_limit import RATE_LIMITED, ingest_rate_limit

router = APIRouter(tags=["ingest"])

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
GZIP = "gzip"
IDENTITY = "identity"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
REPORTED_PROBLEMS = 5  # problems named in partial_success.error_message
RETRY_AFTER_S = 1
# OTLP/JSON writes these byte fields as hex, where protobuf's JSON mapping expects base64.
HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _inflate(raw: bytes, limit: int) -> bytes:
    """A gzip body inflated, never beyond ``limit`` bytes (413 as soon as it would be)."""
    inflater = zlib.decompressobj(GZIP_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise HTTPException(400, f"the body is not valid gzip (Content-Encoding: gzip): {exc}") from None
    if len(body) > limit:
        raise BodyTooLarge(limit)
    if not inflater.eof:
        raise HTTPException(400, "the gzip body is truncated (Content-Encoding: gzip)")
    return body


def _hex_ids_to_base64(span: dict[str, Any], where: str) -> None:
    for field in HEX_ID_FIELDS:
        value = span.get(field)
        if isinstance(value, str) and value:
            try:
                span[field] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            except ValueError:
                raise HTTPException(400, f"{where}.{field} must be hex, got {value[:64]!r}") from None


def _objects(container: Any, key: str) -> list[dict[str, Any]]:
    items = container.get(key) if isinstance(container, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _parse_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: protobuf's JSON mapping but for hex ids; unknown fields ignored, as OTLP asks of receivers."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise HTTPException(400, f"the body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise HTTPException(
            400, f"the body must be a JSON object (ExportTraceServiceRequest), got {type(document).__name__}"
        )
    for r, resource in enumerate(_objects(document, "resourceSpans")):
        for s, scope in enumerate(_objects(resource, "scopeSpans")):
            for n, span in enumerate(_objects(scope, "spans")):
                where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]"
                _hex_ids_to_base64(span, where)
                for k, link in enumerate(_objects(span, "links")):
                    _hex_ids_to_base64(link, f"{where}.links[{k}]")
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, TypeError, ValueError) as exc:
        raise HTTPException(400, f"the body is not an OTLP ExportTraceServiceRequest: {str(exc)[:300]}") from None
    return request


def _parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise HTTPException(400, f"the body is not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    return request


def _mapping(settings: Settings) -> SpanMapping:
    return SpanMapping(
        feature_attributes=attribute_names(settings.otlp_feature_attributes),
        user_attributes=attribute_names(settings.otlp_user_attributes),
        default_user=settings.otlp_default_user,
    )


def _export(raw: bytes, media_type: str, gzipped: bool, tenant_id: str) -> ExportTraceServiceResponse:
    """Decode, count, map and track; the partial-success answer (503 if the buffer refused a span)."""
    settings = get_settings()
    body = _inflate(raw, settings.http_max_body_bytes) if gzipped else raw
    request = _parse_protobuf(body) if media_type == PROTOBUF else _parse_json(body)
    count = span_count(request.resource_spans)
    if count > settings.otlp_max_spans:
        raise HTTPException(413, f"{count} spans in one request; the limit is {settings.otlp_max_spans}"
                                 " (OTLP_MAX_SPANS); export smaller batches")  # fmt: skip
    mapping = _mapping(settings)
    track = get_tracker().track
    accepted = skipped = 0
    problems: list[str] = []
    for resource_values, span in spans(request.resource_spans):
        try:
            event = map_span(span, resource_values, mapping)
            if event is None:
                skipped += 1
                continue
            if not track(tenant_id=tenant_id, **event):
                metrics.otlp_spans(accepted, len(problems), skipped)
                raise HTTPException(503, "the server's event buffer is full; retry the export later",
                                    {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        except (InvalidSpan, ValueError, TypeError) as exc:
            problems.append(f"span {span.span_id.hex()} ({span.name[:64]!r}): {exc}")
        else:
            accepted += 1
    metrics.otlp_spans(accepted, len(problems), skipped)
    response = ExportTraceServiceResponse()
    notes = []
    if problems:
        response.partial_success.rejected_spans = len(problems)
        more = f" (and {len(problems) - REPORTED_PROBLEMS} more)" if len(problems) > REPORTED_PROBLEMS else ""
        notes.append(f"{len(problems)} model-call span(s) rejected: {'; '.join(problems[:REPORTED_PROBLEMS])}{more}")
    if skipped:
        notes.append(f"{skipped} span(s) skipped: not model calls (no GenAI model or token attribute)")
    if notes:
        response.partial_success.error_message = ". ".join(notes)
    return response


# The body is declared to OpenAPI but not to FastAPI, which would read it before the key is checked.
TRACES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            JSON: {"schema": {"type": "object", "description": "OTLP/JSON ExportTraceServiceRequest"
                              " (resourceSpans[].scopeSpans[].spans[], hex traceId/spanId)"}},
        },
    },
}  # fmt: skip
EXPORT_ANSWER = {
    "description": "ExportTraceServiceResponse in the request's encoding; partial_success counts rejected spans",
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        JSON: {"schema": {"type": "object"}},
    },
}


@router.post(
    "/v1/traces",
    response_class=Response,
    responses={
        200: EXPORT_ANSWER,
        400: {"model": ErrorDetail, "description": "The body cannot be decoded (protobuf, OTLP/JSON or gzip)"},
        413: {"model": ErrorDetail, "description": "Too large a body (compressed or inflated) or too many spans"},
        415: {"model": ErrorDetail, "description": "Content-Type or Content-Encoding not supported"},
        503: {"model": ErrorDetail, "description": "The event buffer is full or the rate limiter is unreachable;"
                                                   " retry after Retry-After seconds"},
        **AUTH_RESPONSES,
        **RATE_LIMITED,
    },
    dependencies=[Depends(ingest_rate_limit)],
    openapi_extra=TRACES_BODY,
)  # fmt: skip
async def export_traces(request: Request, who: Principal = Depends(tenant_principal)) -> Response:
    """Authenticated and rate-limited before the body is read; content type checked before it too."""
    media_type = _media_type(request.headers.get("content-type"))
    if media_type not in (PROTOBUF, JSON):
        raise HTTPException(415, f"Content-Type must be {PROTOBUF} or {JSON}, got {media_type or 'none'!r}")
    encoding = (request.headers.get("content-encoding") or IDENTITY).strip().lower()
    if encoding not in (GZIP, IDENTITY):
        raise HTTPException(415, f"Content-Encoding must be {GZIP} or absent, got {encoding!r}")
    raw = await read_body(request, get_settings().http_max_body_bytes)
    assert who.tenant_id is not None  # tenant_principal guarantees it
    answer = await run_in_threadpool(_export, raw, media_type, encoding == GZIP, who.tenant_id)
    if media_type == PROTOBUF:
        return Response(answer.SerializeToString(), media_type=PROTOBUF)
    return Response(json_format.MessageToJson(answer, indent=None), media_type=JSON)
