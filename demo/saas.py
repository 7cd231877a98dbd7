"""The stand-in SaaS product (``uvicorn demo.saas:app``): AI features that record usage events.

A demo of the producer, not part of the analytics service: it runs as its own
process (the Procfile's ``saas``, on SAAS_PORT) and holds no database
connection. Each request calls the AI provider through the real ``openai``
client - the fake provider of demo.provider at OPENAI_BASE_URL, or, when that
is unset (tests), the same fake served in process - and records the call:

- most features with ``producer.track_ai_call`` (``track()`` appends to an
  in-process buffer: the request never waits on the broker or the database);
  STREAMED_FEATURES read the answer as a stream, recorded with its time to
  first token;
- OTLP_FEATURE as an OpenTelemetry span with the GenAI attributes, exported by
  the OpenTelemetry SDK to the analytics service's ``POST /v1/traces`` as
  the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / _HEADERS (a tenant key)
  name it; without them that feature answers 503. Its events belong to the
  key's tenant.

Each answer carries the ``event_id`` of the event recorded, so that the demo
runner reconciles them. The app trusts the ``tenant_id`` and ``user_id`` of
the body as a product trusts its own session, which is why it must never be
served by the analytics web process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import httpx2
import openai
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from pydantic import BaseModel, Field

from demo import provider
from demo.ai import FEATURES, OTLP_FEATURE, STREAMED_FEATURES, model_for
from producer import Usage, get_tracker, track_ai_call, usage_of
from schema.event import MAX_TENANT_ID_LEN, MAX_USER_ID_LEN
from schema.otlp import event_id as span_event_id

SHUTDOWN_FLUSH_TIMEOUT_S = 5.0
MAX_INPUT_CHARS = 100_000
PROVIDER_URL_VARIABLE = "OPENAI_BASE_URL"  # the openai client's own variable
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
IN_PROCESS_PROVIDER_URL = "http://provider.in-process/v1"
DEMO_PROVIDER_KEY = "demo-provider-key"  # the fake provider checks no key; the client requires one
SERVICE_NAME = "demo-saas"


class FeatureRequest(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=MAX_TENANT_ID_LEN)
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LEN)
    input: str = Field("", max_length=MAX_INPUT_CHARS)


def provider_client() -> openai.AsyncOpenAI:
    base_url = os.environ.get(PROVIDER_URL_VARIABLE)
    http_client = None if base_url else httpx2.AsyncClient(transport=httpx2.ASGITransport(app=provider.app))
    return openai.AsyncOpenAI(
        api_key=os.environ.get("OPENAI_API_KEY", DEMO_PROVIDER_KEY),
        base_url=base_url or IN_PROCESS_PROVIDER_URL,
        http_client=http_client,
        max_retries=0,  # each call is one event; a retried call would be several
    )


def span_exporting_tracer() -> tuple[TracerProvider, Tracer] | None:
    """A tracer whose spans the OTLP/HTTP exporter sends where the standard variables say; None if unset."""
    if not any(os.environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    tracer_provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return tracer_provider, tracer_provider.get_tracer(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    get_tracker().start()  # replays what a crashed predecessor left in the spool
    app.state.client = provider_client()
    tracing = span_exporting_tracer()
    app.state.tracer = tracing[1] if tracing else None
    yield
    get_tracker().flush(SHUTDOWN_FLUSH_TIMEOUT_S)
    if tracing:
        tracing[0].shutdown()  # exports the spans still batched
    await app.state.client.close()


app = FastAPI(title="Stand-in SaaS app (demo of the producer)", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "producer": asdict(get_tracker().stats())}


@app.post(
    "/api/ai-feature/{feature_name}",
    responses={
        404: {"description": "Unknown feature"},
        502: {"description": "The AI provider failed (tracked as an error)"},
        503: {"description": "The feature exported through OpenTelemetry has no OTLP endpoint configured"},
    },
)
async def ai_feature(feature_name: str, request: FeatureRequest, http: Request) -> Any:
    if feature_name not in FEATURES:
        raise HTTPException(404, f"unknown feature {feature_name!r}; known: {', '.join(FEATURES)}")
    client: openai.AsyncOpenAI = http.app.state.client
    model = model_for(feature_name)
    messages: list[Any] = [{"role": "user", "content": request.input or feature_name}]
    if feature_name == OTLP_FEATURE:
        tracer: Tracer | None = http.app.state.tracer
        if tracer is None:
            raise HTTPException(
                503, f"{feature_name} is exported through OpenTelemetry: set {OTLP_ENDPOINT_VARIABLES[0]}"
            )
        return await traced_call(tracer, client, feature_name, model, messages, request)
    call = track_ai_call(tenant_id=request.tenant_id, feature_name=feature_name, user_id=request.user_id, model=model)
    usage = None
    try:
        async with call:
            if feature_name in STREAMED_FEATURES:
                stream = await client.chat.completions.create(
                    model=model, messages=messages, stream=True, stream_options={"include_usage": True}
                )
                pieces = [choice.delta.content or "" async for chunk in call.stream(stream) for choice in chunk.choices]
                text = "".join(pieces)
            else:
                response = call.record(await client.chat.completions.create(model=model, messages=messages))
                text, usage = response.choices[0].message.content or "", usage_of(response)
    except openai.APIError as failure:
        return failed(type(failure).__name__, call.event_id.hex if call.event_id else None)
    return answer(feature_name, text, call.event_id.hex if call.event_id else None, usage)


def failed(error_type: str, event_id: str | None) -> JSONResponse:
    """502, tracked as an error: the event's id all the same."""
    return JSONResponse({"detail": f"AI provider failed: {error_type}", "event_id": event_id}, 502)


def answer(feature: str, text: str, event_id: str | None, usage: Usage | None) -> dict[str, Any]:
    return {"feature": feature, "result": text, "event_id": event_id, "usage": asdict(usage) if usage else None}


async def traced_call(
    tracer: Tracer, client: openai.AsyncOpenAI, feature: str, model: str, messages: list[Any], request: FeatureRequest
) -> Any:
    """The call as one GenAI span (OpenTelemetry GenAI conventions); the analytics service maps it to an event."""
    with tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, record_exception=False,
                                      set_status_on_exception=False) as span:  # fmt: skip
        span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                             "gen_ai.request.model": model, "app.feature": feature, "user.id": request.user_id})  # fmt: skip
        context = span.get_span_context()
        event_id = span_event_id(context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big"))
        try:
            response = await client.chat.completions.create(model=model, messages=messages)
        except openai.APIError as failure:
            span.set_attribute("error.type", type(failure).__name__)
            span.set_status(Status(StatusCode.ERROR, str(failure)))
            return failed(type(failure).__name__, event_id)
        usage = usage_of(response)
        if usage is not None:
            span.set_attributes({
                "gen_ai.response.model": usage.model or model,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.cache_read_tokens,
                "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
            })  # fmt: skip
    return answer(feature, response.choices[0].message.content or "", event_id, usage)
