"""Cost API: a tenant's spend in USD, priced at query time (queries.cost).

``GET /api/tenants/{tenant_id}/cost?group_by=total|feature|model|hour|day|user`` with the
dashboard's ``start``/``end`` rules and bounds (web.dashboard), optionally one
``feature`` or ``model``, and ``compare=true`` for the same figures over the
period of the same length just before. Admin keys also get
``GET /api/admin/cost/tenants``, the tenants ranked by cost.

Amounts are decimal strings (exact; JSON numbers would be floats). A group
whose calls include models nothing prices says so beside its cost
(``unpriced_calls``, ``unpriced_tokens``, ``unpriced_models``): never $0.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Engine

from queries import cost as c
from queries import rollups as q
from schema.event import MAX_MODEL_LEN
from web.auth import AUTH_RESPONSES, ErrorDetail, admin_principal, readable_tenant
from web.dashboard import (
    WITHOUT_NUL,
    FeatureParam,
    IsoDateTime,
    ReadEngine,
    max_points,
    path_tenant,
    request_range,
    series_advice,
    too_many_rows,
    within_points,
)
from web.db import SERVICE_UNAVAILABLE

CURRENCY = "USD"
RATIO_PLACES = Decimal("1e-12")  # cost per call / per 1K tokens are ratios: shown to a millionth of a micro-dollar
DEFAULT_TOP = 10
MAX_TOP = 1000
UNPRICED_ADVICE = (
    "some calls use models that neither the price catalog nor an override prices; their cost is not included."
    " Set a price with `analytics prices set MODEL ...` or POST /api/admin/prices/overrides (it applies to past figures too)."
)
ModelParam = Query(None, max_length=MAX_MODEL_LEN, pattern=WITHOUT_NUL)
RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    SERVICE_UNAVAILABLE: {"model": ErrorDetail, "description": "A query took longer than API_STATEMENT_TIMEOUT_MS"},
}
router = APIRouter(prefix="/api/tenants/{tenant_id}", tags=["cost"], dependencies=[Depends(readable_tenant)],
                   responses=RESPONSES)  # fmt: skip
admin_router = APIRouter(prefix="/api/admin/cost", tags=["cost"], dependencies=[Depends(admin_principal)],
                         responses=RESPONSES)  # fmt: skip


def money(amount: Decimal | None) -> str | None:
    """An exact amount as plain decimal text (never exponent notation), or None."""
    return None if amount is None else format(amount, "f")


def ratio(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount.quantize(RATIO_PLACES), "f")


def figures(row: c.CostFigures) -> dict[str, Any]:
    return {
        "calls": row.calls,
        "tokens_used": row.tokens_used,
        "cost_usd": money(row.cost_usd),
        "cost_per_call_usd": ratio(row.cost_per_call_usd),
        "cost_per_1k_tokens_usd": ratio(row.cost_per_1k_tokens_usd),
        "priced_calls": row.priced_calls,
        "unpriced_calls": row.unpriced_calls,
        "unpriced_tokens": row.unpriced_tokens,
        "unpriced_models": row.unpriced_models,
        "approximate": row.approximate,
    }


def _total(rows: list[c.CostFigures]) -> dict[str, Any] | None:
    return figures(rows[0]) if rows else None


@router.get("/cost")
def cost(
    tenant_id: str,
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    group_by: c.CostGroup = "feature",
    feature: str | None = FeatureParam,
    model: str | None = ModelParam,
    top: int = Query(DEFAULT_TOP, ge=1, le=MAX_TOP, description="users returned for group_by=user, by cost"),
    compare: bool = Query(False, description="also the totals of the period of the same length just before"),
) -> dict[str, Any]:
    """Cost per group over the range, with the range's total (and the previous period's with ``compare``)."""
    start, end = request_range(start, end)
    tenant = path_tenant(tenant_id)
    if group_by == "hour":
        within_points("end", end.isoformat(), q.bucket_count(start, end, "hour"), "hour", 1, "series",
                      series_advice("hour"))  # fmt: skip
    rows, total, previous = _read(db, tenant, start, end, group_by, feature, model, top, compare)
    h0, h1 = q.day_span(start, end) if group_by == "user" else q.hour_span(start, end)
    answer: dict[str, Any] = {
        "start": h0, "end": h1, "group_by": group_by, "currency": CURRENCY,
        "rows": [{group_by: row.key, **figures(row)} for row in rows],
        "total": _total(total),
    }  # fmt: skip
    if compare:
        answer["previous"] = {"start": h0 - (h1 - h0), "end": h0, "total": _total(previous)}
    if any(row.unpriced_calls for row in total):
        answer["unpriced_advice"] = UNPRICED_ADVICE
    return answer


def _read(db: Engine, tenant: str, start: datetime, end: datetime, group_by: c.CostGroup, feature: str | None,
          model: str | None, top: int, compare: bool,
          ) -> tuple[list[c.CostFigures], list[c.CostFigures], list[c.CostFigures]]:  # fmt: skip
    """The groups, the total and the previous period's total, in one snapshot."""
    try:
        with q.snapshot(db) as conn:
            rows = c.cost_by(conn, tenant, start, end, group_by, feature=feature, model=model, limit=top,
                             max_rows=max_points())  # fmt: skip
            total = rows
            if group_by != "total":
                total = c.cost_by(conn, tenant, start, end, "total", feature=feature, model=model)
            previous: list[c.CostFigures] = []
            if compare:
                h0, h1 = q.hour_span(start, end)
                previous = c.cost_by(conn, tenant, h0 - (h1 - h0), h0, "total", feature=feature, model=model)
    except c.TooManyRows:
        raise too_many_rows("group_by", group_by, "one per group", "narrow the range") from None
    return rows, total, previous


@admin_router.get("/tenants")
def tenants(
    db: ReadEngine,
    start: IsoDateTime | None = None,
    end: IsoDateTime | None = None,
    top: int = Query(DEFAULT_TOP, ge=1, le=MAX_TOP),
) -> dict[str, Any]:
    """The ``top`` tenants by cost over the range (admin keys only)."""
    start, end = request_range(start, end)
    with q.snapshot(db) as conn:
        rows = c.tenants_by_cost(conn, start, end, top)
    h0, h1 = q.hour_span(start, end)
    return {"start": h0, "end": h1, "currency": CURRENCY,
            "tenants": [{"tenant_id": row.key, **figures(row)} for row in rows]}  # fmt: skip
