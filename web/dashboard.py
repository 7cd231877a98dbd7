"""Dashboard API: per-tenant usage read from the rollups (queries.rollups).

``GET /api/tenants/{tenant_id}/summary|series|top-users|error-rates|active-users``
with ``start``/``end`` as ISO 8601 (default: the last 24 hours). Answers
include events committed a moment ago (the rollups' pending tail). Handlers are
plain ``def``: FastAPI runs them in its thread pool, so a query never blocks
the event loop that ``track()``-ing endpoints run on.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator
from sqlalchemy import Engine

from config import get_settings
from queries import rollups as q
from schema.event import MAX_FEATURE_NAME_LEN, MAX_TENANT_ID_LEN
from storage.db import make_engine
from web.auth import AUTH_RESPONSES, readable_tenant
from web.errors import invalid

DEFAULT_WINDOW = timedelta(days=1)
MAX_WINDOW = timedelta(days=400)
MAX_TOP_USERS = 1000


def _iso_8601(value: Any) -> Any:
    """ISO 8601 text only, as the schema (``date-time``) says: pydantic alone would also read
    a bare number as Unix seconds (``end=0.5`` was 1970; found by tests/test_openapi_contract.py)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601)]

# Every route is scoped to the path's tenant, which the API key must be allowed to read.
router = APIRouter(
    prefix="/api/tenants/{tenant_id}", tags=["dashboard"], dependencies=[Depends(readable_tenant)],
    responses=AUTH_RESPONSES,
)


@lru_cache(maxsize=1)
def engine() -> Engine:
    """One pool per web process, made on first use (after uvicorn forked its workers)."""
    return make_engine(get_settings())


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(timezone.utc)
    start = start or end - DEFAULT_WINDOW
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise invalid("query", name, "start and end need a UTC offset (e.g. 2026-11-01T00:00:00Z)", moment)
    if not start < end or end - start > MAX_WINDOW:
        raise invalid("query", "end", f"need start < end and a range of at most {MAX_WINDOW.days} days", end)
    return start, end


def _tenant(tenant_id: str) -> str:
    if not 0 < len(tenant_id) <= MAX_TENANT_ID_LEN:
        raise invalid("path", "tenant_id", f"tenant_id must be 1..{MAX_TENANT_ID_LEN} characters", tenant_id)
    return tenant_id


def _figures(item: q.Figures) -> dict[str, Any]:
    return {**asdict(item), "error_rate": item.error_rate}


FeatureParam = Query(None, max_length=MAX_FEATURE_NAME_LEN)


@router.get("/summary")
def summary(tenant_id: str, start: IsoDateTime | None = None, end: IsoDateTime | None = None) -> dict[str, Any]:
    start, end = _range(start, end)
    with q.snapshot(engine()) as conn:
        rows = q.feature_summary(conn, _tenant(tenant_id), start, end)
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "features": [_figures(r) for r in rows]}


@router.get("/series")
def series(
    tenant_id: str, start: IsoDateTime | None = None, end: IsoDateTime | None = None,
    granularity: q.Granularity = "hour", feature: str | None = FeatureParam,
) -> dict[str, Any]:
    start, end = _range(start, end)
    with q.snapshot(engine()) as conn:
        points = q.time_series(conn, _tenant(tenant_id), start, end, granularity, feature)
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "granularity": granularity, "points": [_figures(p) for p in points]}


@router.get("/top-users")
def top_users(
    tenant_id: str, start: IsoDateTime | None = None, end: IsoDateTime | None = None,
    limit: int = Query(q.DEFAULT_TOP_USERS, ge=1, le=MAX_TOP_USERS), feature: str | None = FeatureParam,
) -> dict[str, Any]:
    start, end = _range(start, end)
    with q.snapshot(engine()) as conn:
        users = q.top_users(conn, _tenant(tenant_id), start, end, limit, feature)
    d0, d1 = q.day_span(start, end)
    return {"start": d0, "end": d1, "users": [asdict(u) for u in users]}


@router.get("/error-rates")
def error_rates(tenant_id: str, start: IsoDateTime | None = None, end: IsoDateTime | None = None) -> dict[str, Any]:
    start, end = _range(start, end)
    with q.snapshot(engine()) as conn:
        rates = q.error_rate_by_feature(conn, _tenant(tenant_id), start, end)
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "features": [{**asdict(r), "error_rate": r.error_rate} for r in rates]}


@router.get("/active-users")
def active_users(
    tenant_id: str, start: IsoDateTime | None = None, end: IsoDateTime | None = None,
    feature: str | None = FeatureParam,
) -> dict[str, Any]:
    start, end = _range(start, end)
    with q.snapshot(engine()) as conn:
        rows = q.active_users(conn, _tenant(tenant_id), start, end, feature)
    d0, d1 = q.day_span(start, end)
    return {"start": d0, "end": d1, "days": [asdict(r) for r in rows]}
