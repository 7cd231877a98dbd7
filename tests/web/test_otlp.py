"""POST /v1/traces end to end: the OpenTelemetry SDK's own OTLP/HTTP exporter sends GenAI spans to a real
uvicorn, a real worker stores them, and every stored event is compared with the span it came from.

Spans with current GenAI names, older ones and OpenInference names are stored; an error span keeps
its exception's type; a span that is no model call is skipped; invalid model-call spans are counted
in the partial-success answer while their batch-mates land; a retried export stores nothing twice.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from kombu import Connection
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from devtools.otlp import otlp_json, otlp_json_document
from devtools.processes import wait_for
from devtools.web import Server, uvicorn_server
from devtools.workers import celery_worker
from storage.api_keys import create_key

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
FLUSH_INTERVAL_MS = "50"
MAX_SPANS = 40
BODY_LIMIT = 200_000
STORE_TIMEOUT_S = 30
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
COLUMNS = ("feature_name", "user_id", "model", "provider", "input_tokens", "output_tokens", "tokens_used",
           "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "latency_ms", "status", "error_type",
           "time_to_first_token_ms")  # fmt: skip


@dataclass(frozen=True)
class Sent:
    """A span sent, and the event it must become (None: skipped or rejected)."""

    name: str
    attributes: dict[str, Any]
    latency_ms: int
    expected: dict[str, Any] | None
    error: bool = False


def _event(feature: str, user: str, model: str | None, provider: str | None, tokens: tuple[int, ...],
           latency_ms: int, status: str = "success", error_type: str | None = None,
           ttft_ms: int | None = None) -> dict[str, Any]:  # fmt: skip
    inp, out, used, cache_read, cache_write, reasoning = tokens
    return {"feature_name": feature, "user_id": user, "model": model, "provider": provider, "input_tokens": inp,
            "output_tokens": out, "tokens_used": used, "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write, "reasoning_tokens": reasoning, "latency_ms": latency_ms,
            "status": status, "error_type": error_type, "time_to_first_token_ms": ttft_ms}  # fmt: skip


RESOURCE_USER = "resource-user"
SPANS = (
    Sent("chat gpt-4o", {
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200, "gen_ai.usage.cache_read.input_tokens": 600,
        "gen_ai.usage.cache_creation.input_tokens": 100, "gen_ai.usage.reasoning.output_tokens": 50,
        "gen_ai.response.time_to_first_chunk": 0.3, "app.feature": "summarization", "user.id": "u1"}, 812,
        _event("summarization", "u1", "gpt-4o-2024-08-06", "openai", (1000, 200, 1200, 600, 100, 50), 812,
               ttft_ms=300)),
    # Older names; Anthropic's raw usage (input excludes the cache); the user from the resource.
    Sent("chat claude", {
        "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-3-5-haiku",
        "gen_ai.usage.prompt_tokens": 40, "gen_ai.usage.completion_tokens": 10,
        "gen_ai.usage.cache_read_input_tokens": 1000, "gen_ai.usage.cache_creation_input_tokens": 200,
        "gen_ai.agent.name": "support-agent"}, 95,
        _event("support-agent", RESOURCE_USER, "claude-3-5-haiku", "anthropic", (1240, 10, 1250, 1000, 200, 0), 95)),
    # OpenInference; no feature attribute: the span's name.
    Sent("ChatCompletion", {
        "llm.model_name": "gemini-1.5-pro", "llm.provider": "google", "llm.token_count.prompt": 800,
        "llm.token_count.completion": 90, "llm.token_count.total": 900,
        "llm.token_count.prompt_details.cache_read": 300, "llm.token_count.completion_details.reasoning": 40,
        "user.id": "u3"}, 2047,
        _event("ChatCompletion", "u3", "gemini-1.5-pro", "google", (800, 90, 900, 300, 0, 40), 2047)),
    Sent("chat gpt-4o-mini", {"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 10,
                              "app.feature": "search", "user.id": "u4"}, 30001,
         _event("search", "u4", "gpt-4o-mini", None, (10, 0, 10, 0, 0, 0), 30001, "error", "TimeoutError"),
         error=True),
    Sent("GET /health", {"http.request.method": "GET", "user.id": "u5"}, 3, None),
    Sent("chat bad-reasoning", {"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 5,
                                "gen_ai.usage.reasoning.output_tokens": 6}, 10, None),
    Sent("chat bad-negative", {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": -3}, 10, None),
    Sent("chat bad-type", {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": "many"}, 10, None),
    Sent("chat bad-ttft", {"gen_ai.request.model": "m", "gen_ai.response.time_to_first_chunk": 5.0}, 10, None),
)  # fmt: skip
STORED = [s for s in SPANS if s.expected is not None]
REJECTED = 4
SKIPPED = 1


def make_spans(sent: tuple[Sent, ...] | list[Sent]) -> list[ReadableSpan]:
    """The SDK's own spans, timed as ``sent`` says, ended a minute ago."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-test", "enduser.id": RESOURCE_USER}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.web.test_otlp")
    end_ns = time.time_ns() - 60 * 1_000_000_000
    for item in sent:
        span = tracer.start_span(item.name, start_time=end_ns - item.latency_ms * 1_000_000,
                                 attributes=item.attributes)  # fmt: skip
        if item.error:
            span.record_exception(TimeoutError("the model did not answer"))
            span.set_status(StatusCode.ERROR, "deadline exceeded")
        span.end(end_time=end_ns)
    provider.shutdown()
    return list(memory.get_finished_spans())


def stored(engine: Engine, tenant: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT event_id, timestamp, {', '.join(COLUMNS)} FROM analytics_events"
                                 " WHERE tenant_id = :t"), {"t": tenant}).mappings().all()  # fmt: skip
    return [dict(row) for row in rows]


def check_stored(engine: Engine, tenant: str, spans: list[ReadableSpan], sent: list[Sent]) -> None:
    """Every expected event stored once, field by field, with the span's start as its timestamp."""
    rows = wait_for(lambda: len(r := stored(engine, tenant)) >= len(sent) and r, STORE_TIMEOUT_S,
                    lambda: f"stored {stored(engine, tenant)}")  # fmt: skip
    by_feature_user = {(row["feature_name"], row["user_id"]): row for row in rows}
    assert len(rows) == len(by_feature_user) == len(sent), rows
    starts = {span.name: span.start_time for span in spans}
    for item in sent:
        assert item.expected is not None
        row = by_feature_user[(item.expected["feature_name"], item.expected["user_id"])]
        assert {column: row[column] for column in COLUMNS} == item.expected
        start_ns = starts[item.name]
        assert start_ns is not None
        assert int(row["timestamp"].timestamp()) * 1_000_000 + row["timestamp"].microsecond == start_ns // 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Server]:
    """A running uvicorn (OTLP_MAX_SPANS and HTTP_MAX_BODY_BYTES lowered) with a worker behind it."""
    log_dir = tmp_path_factory.mktemp("otlp")
    queue = f"ingest-otlp-{uuid.uuid4().hex[:8]}"
    env = {"INGEST_QUEUE": queue, "CELERY_BROKER_URL": RABBITMQ, "PRODUCER_SPOOL_DIR": str(log_dir / "spool"),
           "PRODUCER_FLUSH_INTERVAL_MS": FLUSH_INTERVAL_MS, "OTLP_MAX_SPANS": str(MAX_SPANS),
           "HTTP_MAX_BODY_BYTES": str(BODY_LIMIT)}  # fmt: skip
    try:
        with celery_worker(RABBITMQ, queue, log_dir=log_dir, stop_timeout=2), uvicorn_server(log_dir, env) as server:
            yield server
    finally:
        with Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)


@pytest.fixture
def key(engine: Engine, tenant: str) -> str:
    with Session(engine) as session, session.begin():
        _, secret = create_key(session, name="otlp test", tenant_id=tenant)
    return secret


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _check_partial_success(rejected: int, message: str) -> None:
    assert rejected == REJECTED, message
    assert "reasoning_tokens (6) is more than output_tokens (5)" in message
    assert "input_tokens must not be negative" in message
    assert "gen_ai.usage.input_tokens must be an integer, got str 'many'" in message
    assert "time_to_first_token_ms (5000) is more than latency_ms (10)" in message
    assert f"{SKIPPED} span(s) skipped" in message


def test_the_sdk_exporter_stores_genai_spans_and_its_retry_stores_nothing_twice(
    served: Server, engine: Engine, tenant: str, key: str
) -> None:
    spans = make_spans(SPANS)
    exporter = OTLPSpanExporter(endpoint=f"{served.url}/v1/traces", headers=_auth(key), compression=Compression.Gzip)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    # The same batch again, as an exporter's retry sends it; this answer is read for its partial success.
    body = encode_spans(spans).SerializeToString()
    response = httpx.post(f"{served.url}/v1/traces", content=body, headers={**PROTOBUF, **_auth(key)}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(response.content)
    _check_partial_success(answer.partial_success.rejected_spans, answer.partial_success.error_message)
    # One more span after the retry: once it is stored, the worker has taken the retry too (one queue, in order).
    sentinel = Sent("chat sentinel", {"gen_ai.request.model": "m", "app.feature": "sentinel", "user.id": "s"}, 1,
                    _event("sentinel", "s", "m", None, (0, 0, 0, 0, 0, 0), 1))  # fmt: skip
    sentinel_spans = make_spans([sentinel])
    assert exporter.export(sentinel_spans) == SpanExportResult.SUCCESS
    exporter.shutdown()
    check_stored(engine, tenant, spans + sentinel_spans, [*STORED, sentinel])
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    for result in ("accepted", "rejected", "skipped"):
        assert f'analytics_otlp_spans_total{{result="{result}"}}' in metrics


def test_otlp_json_with_hex_ids_gzipped_or_not(served: Server, engine: Engine, tenant: str, key: str) -> None:
    spans = make_spans(SPANS)
    body = otlp_json(encode_spans(spans))
    for extra in ({}, {"Content-Encoding": "gzip"}):
        content = gzip.compress(body) if extra else body
        response = httpx.post(f"{served.url}/v1/traces", content=content, headers={**JSON, **extra, **_auth(key)},
                              timeout=10)  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        partial = response.json()["partialSuccess"]
        _check_partial_success(int(partial["rejectedSpans"]), partial["errorMessage"])
    check_stored(engine, tenant, spans, STORED)
    # The event ids are the protobuf path's: the same span sent as protobuf is a duplicate.
    protobuf = httpx.post(f"{served.url}/v1/traces", content=encode_spans(spans).SerializeToString(),
                          headers={**PROTOBUF, **_auth(key)}, timeout=10)  # fmt: skip
    assert protobuf.status_code == 200
    time.sleep(1)  # a few flush intervals: any row it added would be there by now
    assert len(stored(engine, tenant)) == len(STORED)


def test_a_request_that_cannot_be_taken_is_refused_with_a_clear_answer(served: Server, key: str) -> None:
    url = f"{served.url}/v1/traces"
    one = encode_spans(make_spans(SPANS[:1]))

    def post(content: bytes, headers: dict[str, str], auth: bool = True) -> httpx.Response:
        return httpx.post(url, content=content, headers={**headers, **(_auth(key) if auth else {})}, timeout=10)

    assert post(one.SerializeToString(), PROTOBUF, auth=False).status_code == 401
    refused = post(b"{}", {"Content-Type": "text/plain"})
    assert refused.status_code == 415 and "application/x-protobuf" in refused.json()["detail"]
    refused = post(one.SerializeToString(), {**PROTOBUF, "Content-Encoding": "br"})
    assert refused.status_code == 415 and "Content-Encoding" in refused.json()["detail"]
    refused = post(b"\xff\xff\xff not protobuf", PROTOBUF)
    assert refused.status_code == 400 and "protobuf" in refused.json()["detail"]
    refused = post(b"{not json", JSON)
    assert refused.status_code == 400 and "not JSON" in refused.json()["detail"]
    document = otlp_json_document(one)
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "not-hex"
    refused = post(json.dumps(document).encode(), JSON)
    assert refused.status_code == 400 and "spans[0].traceId must be hex" in refused.json()["detail"]
    refused = post(b'"AAA"', JSON)
    assert refused.status_code == 400 and "JSON object" in refused.json()["detail"]
    refused = post(json.dumps({"resourceSpans": 7}).encode(), JSON)
    assert refused.status_code == 400 and "ExportTraceServiceRequest" in refused.json()["detail"]
    refused = post(b"\x1f\x8b not gzip", {**PROTOBUF, "Content-Encoding": "gzip"})
    assert refused.status_code == 400 and "gzip" in refused.json()["detail"]
    # A gzip bomb: small on the wire, refused once inflating passes the body limit.
    bomb = gzip.compress(b"\0" * (BODY_LIMIT * 50))
    assert len(bomb) < BODY_LIMIT
    refused = post(bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert refused.status_code == 413 and "HTTP_MAX_BODY_BYTES" in refused.json()["detail"]
    many = encode_spans(make_spans([SPANS[4]] * (MAX_SPANS + 1)))
    refused = post(many.SerializeToString(), PROTOBUF)
    assert refused.status_code == 413 and f"{MAX_SPANS + 1} spans" in refused.json()["detail"]
    assert "OTLP_MAX_SPANS" in refused.json()["detail"]
    empty = post(b"", PROTOBUF)
    assert empty.status_code == 200 and ExportTraceServiceResponse.FromString(empty.content).ByteSize() == 0
    assert post(b"{}", JSON).json() == {}
