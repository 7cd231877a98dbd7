"""The stand-in SaaS product (``uvicorn demo.saas:app``): AI features that record usage events.

A demo of the producer, not part of the analytics service: it runs as its own
process (the Procfile's ``saas``, on SAAS_PORT) and holds no database
connection and no API key. Each request calls the stand-in AI function and
records one event with ``track()``, which only appends to an in-process
buffer: the request never waits on the broker or the database. It trusts the
``tenant_id`` and ``user_id`` of the body as a product trusts its own session,
which is why it must never be served by the analytics web process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from config import get_settings
from demo.ai import FEATURES, AICallFailed, call_feature
from producer import get_tracker
from schema.event import MAX_TENANT_ID_LEN, MAX_USER_ID_LEN

SHUTDOWN_FLUSH_TIMEOUT_S = 5.0
MAX_INPUT_CHARS = 100_000


class FeatureRequest(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=MAX_TENANT_ID_LEN)
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LEN)
    input: str = Field("", max_length=MAX_INPUT_CHARS)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    get_tracker().start()  # replays what a crashed predecessor left in the spool
    yield
    get_tracker().flush(SHUTDOWN_FLUSH_TIMEOUT_S)


app = FastAPI(title="Stand-in SaaS app (demo of the producer)", lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "producer": asdict(get_tracker().stats())}


@app.post(
    "/api/ai-feature/{feature_name}",
    responses={
        404: {"description": "Unknown feature"},
        502: {"description": "The AI provider failed (tracked as an error)"},
    },
)
async def ai_feature(feature_name: str, request: FeatureRequest) -> dict[str, Any]:
    if feature_name not in FEATURES:
        raise HTTPException(404, f"unknown feature {feature_name!r}; known: {', '.join(FEATURES)}")
    started = time.perf_counter()
    try:
        result = await call_feature(feature_name, request.input, get_settings().demo_error_rate)
    except AICallFailed as failure:
        get_tracker().track(
            tenant_id=request.tenant_id,
            feature_name=feature_name,
            user_id=request.user_id,
            latency_ms=(time.perf_counter() - started) * 1000,
            status="error",
            error_type=failure.error_type,
        )
        raise HTTPException(502, f"AI provider failed: {failure.error_type}") from None
    get_tracker().track(
        tenant_id=request.tenant_id,
        feature_name=feature_name,
        user_id=request.user_id,
        model=result.model,
        provider=result.provider,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        cache_read_tokens=result.cache_read_tokens,
        reasoning_tokens=result.reasoning_tokens,
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return {
        "feature": feature_name,
        "result": result.text,
        "usage": {"model": result.model, "input_tokens": result.input_tokens, "output_tokens": result.output_tokens},
    }
