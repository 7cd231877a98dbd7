"""The analytics web service (``uvicorn web.app:app``): tenant API, dashboard, /metrics.

Every route that writes needs a tenant's API key (``POST /v1/events``); the
stand-in product app that tracks its own AI calls lives apart (demo/saas.py).
Request bodies are capped while they stream (web.body_limit) and keys are
rate-limited per route family (web.rate_limit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy.exc import OperationalError

from config import get_settings
from monitoring.escape import install_log_escaping
from producer import get_tracker
from web import alerts, budget, cost, dashboard, docs, ingest, metrics, otlp, page, prices, rate_limit, webhooks
from web.body_limit import BodyLimit
from web.db import close_database, open_database, statement_timeout_handler
from web.errors import single_valued_query

SHUTDOWN_FLUSH_TIMEOUT_S = 5.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    install_log_escaping()  # client-chosen names in log arguments reach terminals escaped
    rate_limit.install(app, get_settings())
    open_database(app, get_settings())
    get_tracker().start()  # replays what a crashed predecessor left in the spool
    yield
    get_tracker().flush(SHUTDOWN_FLUSH_TIMEOUT_S)
    close_database(app)


# /docs and /openapi.json are web.docs' (off unless API_DOCS_ENABLED, assets served locally); no /redoc.
app = FastAPI(title="AI feature usage analytics", lifespan=lifespan, dependencies=[Depends(single_valued_query)],
              docs_url=None, redoc_url=None, openapi_url=None,
              exception_handlers={OperationalError: statement_timeout_handler})  # fmt: skip
app.add_middleware(BodyLimit)
app.include_router(ingest.router)
app.include_router(otlp.router)  # rate-limited as ingest by its route (web.otlp)
app.include_router(metrics.router)
app.include_router(dashboard.router, dependencies=[Depends(rate_limit.read_rate_limit)],
                   responses=rate_limit.RATE_LIMITED)  # fmt: skip
for read_router in (cost.router, cost.admin_router, prices.router, webhooks.router, alerts.router, budget.router):
    app.include_router(
        read_router, dependencies=[Depends(rate_limit.read_rate_limit)], responses=rate_limit.RATE_LIMITED
    )
app.include_router(page.router)
app.include_router(docs.router)
page.mount_static(app)


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "producer": asdict(get_tracker().stats())}
