"""FastAPI app (``uvicorn web.app:app``): AI features that record usage events.

Each request calls the stand-in AI function and records one event with
``track()``, which only appends to an in-process buffer: the request never
waits on the broker or the database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from config import get_settings
from producer import get_tracker
from schema.event import MAX_TENANT_ID_LEN, MAX_USER_ID_LEN
from web import dashboard, docs, ingest, metrics, page
from web.auth import BODY_UNREADABLE
from web.db import close_database, open_database, statement_timeout_handler
from web.errors import single_valued_query
from web.ai import FEATURES, AICallFailed, call_feature

SHUTDOWN_FLUSH_TIMEOUT_S = 5.0


class FeatureRequest(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=MAX_TENANT_ID_LEN)
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LEN)
    input: str = Field("", max_length=100_000)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    open_database(app)
    get_tracker().start()  # replays what a crashed predecessor left in the spool
    yield
    get_tracker().flush(SHUTDOWN_FLUSH_TIMEOUT_S)
    close_database(app)


# /docs and /openapi.json are web.docs' (off unless API_DOCS_ENABLED, assets served locally); no /redoc.
app = FastAPI(title="AI feature usage analytics", lifespan=lifespan, dependencies=[Depends(single_valued_query)],
              docs_url=None, redoc_url=None, openapi_url=None,
              exception_handlers={OperationalError: statement_timeout_handler})  # fmt: skip
app.include_router(ingest.router)
app.include_router(metrics.router)
app.include_router(dashboard.router)
app.include_router(page.router)
app.include_router(docs.router)
page.mount_static(app)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "producer": asdict(get_tracker().stats())}


@app.post(
    "/api/ai-feature/{feature_name}",
    responses={404: {"description": "Unknown feature"},
               502: {"description": "The AI provider failed (tracked as an error)"}, **BODY_UNREADABLE},  # fmt: skip
)
async def ai_feature(feature_name: str, request: FeatureRequest) -> dict[str, Any]:
    if feature_name not in FEATURES:
        raise HTTPException(404, f"unknown feature {feature_name!r}; known: {', '.join(FEATURES)}")
    started = time.perf_counter()
    try:
        result = await call_feature(feature_name, request.input, get_settings().demo_error_rate)
    except AICallFailed as failure:
        get_tracker().track(
            tenant_id=request.tenant_id, feature_name=feature_name, user_id=request.user_id,
            latency_ms=(time.perf_counter() - started) * 1000,
            status="error", error_type=failure.error_type,
        )
        raise HTTPException(502, f"AI provider failed: {failure.error_type}") from None
    get_tracker().track(
        tenant_id=request.tenant_id, feature_name=feature_name, user_id=request.user_id,
        model=result.model, input_tokens=result.input_tokens, output_tokens=result.output_tokens,
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return {
        "feature": feature_name,
        "result": result.text,
        "usage": {"model": result.model, "input_tokens": result.input_tokens,
                  "output_tokens": result.output_tokens},
    }
