"""Dashboard API: per-tenant usage read from the rollups (queries.rollups).

``GET /api/tenants/{tenant_id}/summary|series|feature-series|top-users|error-rates|active-users``
with ``start``/``end`` as ISO 8601 (default: the last 24 hours). Answers
include events committed a moment ago (the rollups' pending tail). Handlers are
plain ``def``: FastAPI runs them in its thread pool, so a query never blocks
the event loop that ``track()``-ing endpoints run on.

Bounds, so that no request can make the process or the database work without
limit: a range of at most MAX_WINDOW inside [EARLIEST, LATEST] (422 naming
``start`` or ``end``); at most API_MAX_POINTS points (rows x series) per answer,
counted from the request before any query runs where the request alone fixes
the count (422 naming the limit and the count), and otherwise read with a
LIMIT one past the cap and refused when the extra row comes; every statement
under API_STATEMENT_TIMEOUT_MS (web.db: 503).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator
from sqlalchemy import Engine

from config import get_settings
from queries import rollups as q
from schema.event import MAX_FEATURE_NAME_LEN, MAX_TENANT_ID_LEN
from web.auth import AUTH_RESPONSES, ErrorDetail, readable_tenant
from web.db import SERVICE_UNAVAILABLE, web_engine
from web.errors import invalid

DEFAULT_WINDOW = timedelta(days=1)
MAX_WINDOW = timedelta(days=400)
MAX_TOP_USERS = 1000
# /feature-series: the features drawn by default (the dashboard page asks for this many) and at most.
DEFAULT_SERIES_FEATURES = 10
MAX_SERIES_FEATURES = 20
# The moments a range may start or end at: a day's margin inside what datetime can hold, so that
# flooring, ceiling and the default window never overflow (year 1 or 9999 was a 500).
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
MAX_POINTS_SETTING = "API_MAX_POINTS"
NUL = "\x00"
WITHOUT_NUL = r"^[^\x00]*$"


def _iso_8601(value: Any) -> Any:
    """ISO 8601 text only, as the schema (``date-time``) says: pydantic alone would also read
    a bare number as Unix seconds (``end=0.5`` was 1970; found by tests/web/test_openapi_contract.py)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601)]

# Every route is scoped to the path's tenant, which the API key must be allowed to read.
router = APIRouter(
    prefix="/api/tenants/{tenant_id}",
    tags=["dashboard"],
    dependencies=[Depends(readable_tenant)],
    responses={
        **AUTH_RESPONSES,
        SERVICE_UNAVAILABLE: {"model": ErrorDetail, "description": "A query took longer than API_STATEMENT_TIMEOUT_MS"},
    },
)


def _utc(name: str, moment: datetime) -> datetime:
    """``moment`` in UTC, if it has an offset and lies in [EARLIEST, LATEST]; else a 422 naming ``name``."""
    if moment.tzinfo is None:
        raise invalid("query", name, "start and end need a UTC offset (e.g. 2026-11-01T00:00:00Z)", moment)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is in year 0 in UTC
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise invalid(
            "query", name,
            f"{name} must lie between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()} (UTC)",
            moment.isoformat(),
        )  # fmt: skip
    return utc


def request_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    given_start = _utc("start", start) if start is not None else None
    end = _utc("end", end) if end is not None else datetime.now(UTC)
    start = given_start if given_start is not None else max(end - DEFAULT_WINDOW, EARLIEST)
    if not start < end or end - start > MAX_WINDOW:
        raise invalid("query", "end", f"need start < end and a range of at most {MAX_WINDOW.days} days", end)
    return start, end


def path_tenant(tenant_id: str) -> str:
    if not 0 < len(tenant_id) <= MAX_TENANT_ID_LEN or NUL in tenant_id:
        message = f"tenant_id must be 1..{MAX_TENANT_ID_LEN} characters, without NUL"
        raise invalid("path", "tenant_id", message, tenant_id)
    return tenant_id


def _count(number: int, unit: str) -> str:
    return f"{number:,} {unit}" if number == 1 else f"{number:,} {unit}s"


def max_points() -> int:
    return get_settings().api_max_points


def within_points(name: str, value: Any, rows: int, row_unit: str, series: int, series_unit: str,
                   advice: str) -> None:  # fmt: skip
    """Refuse (422 naming ``name``) a request whose answer would hold more than API_MAX_POINTS points."""
    points, limit = rows * series, max_points()
    if points > limit:
        raise invalid(
            "query", name,
            f"would return {_count(rows, row_unit)} x {_count(series, series_unit)} = {points:,} points; "
            f"the limit is {MAX_POINTS_SETTING} = {limit:,}; {advice}", value,
        )  # fmt: skip


def too_many_rows(name: str, value: Any, what: str, advice: str) -> Exception:
    """The 422 for an answer found, while reading it, to hold more than API_MAX_POINTS points."""
    limit = max_points()
    return invalid(
        "query", name,
        f"would return more than {limit:,} points ({what}); the limit is {MAX_POINTS_SETTING} = {limit:,}; {advice}",
        value,
    )  # fmt: skip


def series_advice(granularity: q.Granularity) -> str:
    return "narrow the range or use granularity=day" if granularity == "hour" else "narrow the range"


def _figures(item: q.Figures) -> dict[str, Any]:
    return {**asdict(item), "error_rate": item.error_rate}


# PostgreSQL text cannot hold NUL (psycopg2 refuses it in any parameter: a 500 before this pattern).
FeatureParam = Query(None, max_length=MAX_FEATURE_NAME_LEN, pattern=WITHOUT_NUL)
ReadEngine = Annotated[Engine, Depends(web_engine)]


@router.get("/summary")
def summary(
    tenant_id: str, db: ReadEngine, start: IsoDateTime | None = None, end: IsoDateTime | None = None
) -> dict[str, Any]:
    start, end = request_range(start, end)
    try:
        with q.snapshot(db) as conn:
            rows = q.feature_summary(conn, path_tenant(tenant_id), start, end, max_rows=max_points())
    except q.TooManyRows:
        raise too_many_rows("end", end.isoformat(), "one per feature", "narrow the range") from None
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "features": [_figures(r) for r in rows]}


@router.get("/series")
def series(
    tenant_id: str,
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    granularity: q.Granularity = "hour",
    feature: str | None = FeatureParam,
) -> dict[str, Any]:
    """All features together (or ``feature`` alone): one point per hour or day with events."""
    start, end = request_range(start, end)
    buckets = q.bucket_count(start, end, granularity)
    within_points("end", end.isoformat(), buckets, granularity, 1, "series", series_advice(granularity))
    with q.snapshot(db) as conn:
        points = q.time_series(conn, path_tenant(tenant_id), start, end, granularity, feature)
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "granularity": granularity, "points": [_figures(p) for p in points]}


@router.get("/feature-series")
def feature_series(
    tenant_id: str,
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    granularity: q.Granularity = "hour",
    top: int = Query(DEFAULT_SERIES_FEATURES, ge=1, le=MAX_SERIES_FEATURES),
) -> dict[str, Any]:
    """The series of each of the ``top`` features with the most calls in the range, in one answer
    (what the dashboard page charts); ``features_with_calls`` says how many there were in all."""
    start, end = request_range(start, end)
    buckets = q.bucket_count(start, end, granularity)
    advice = series_advice(granularity) + " or ask for fewer (top)"
    within_points("top", top, buckets, granularity, top, "feature", advice)
    tenant = path_tenant(tenant_id)
    with q.snapshot(db) as conn:
        ranked = q.top_features(conn, tenant, start, end, top)
        by_feature = q.feature_series(conn, tenant, start, end, granularity, ranked.names)
    h0, h1 = q.hour_span(start, end)
    return {
        "start": h0, "end": h1, "granularity": granularity, "features_with_calls": ranked.total,
        "features": [
            {"feature_name": name, "points": [_figures(p) for p in points]} for name, points in by_feature.items()
        ],
    }  # fmt: skip


@router.get("/top-users")
def top_users(
    tenant_id: str,
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    limit: int = Query(q.DEFAULT_TOP_USERS, ge=1, le=MAX_TOP_USERS),
    feature: str | None = FeatureParam,
) -> dict[str, Any]:
    start, end = request_range(start, end)
    within_points("limit", limit, limit, "user", 1, "series", "ask for fewer users (limit)")
    with q.snapshot(db) as conn:
        users = q.top_users(conn, path_tenant(tenant_id), start, end, limit, feature)
    d0, d1 = q.day_span(start, end)
    return {"start": d0, "end": d1, "users": [asdict(u) for u in users]}


@router.get("/error-rates")
def error_rates(
    tenant_id: str, db: ReadEngine, start: IsoDateTime | None = None, end: IsoDateTime | None = None
) -> dict[str, Any]:
    start, end = request_range(start, end)
    try:
        with q.snapshot(db) as conn:
            rates = q.error_rate_by_feature(conn, path_tenant(tenant_id), start, end, max_rows=max_points())
    except q.TooManyRows:
        raise too_many_rows("end", end.isoformat(), "one per feature", "narrow the range") from None
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "features": [{**asdict(r), "error_rate": r.error_rate} for r in rates]}


@router.get("/active-users")
def active_users(
    tenant_id: str,
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    feature: str | None = FeatureParam,
) -> dict[str, Any]:
    """One row per UTC day and feature: ``feature`` given, the day count fixes the size; without
    it the features are only known while reading, so the answer is read up to API_MAX_POINTS."""
    start, end = request_range(start, end)
    within_points("end", end.isoformat(), q.day_count(start, end), "day", 1, "feature", "narrow the range")
    try:
        with q.snapshot(db) as conn:
            rows = q.active_users(conn, path_tenant(tenant_id), start, end, feature, max_rows=max_points())
    except q.TooManyRows:
        raise too_many_rows("feature", feature, "days x features", "pass feature= or narrow the range") from None
    d0, d1 = q.day_span(start, end)
    return {"start": d0, "end": d1, "days": [asdict(r) for r in rows]}
