"""``GET /v1/budget``: what is left of each of the key's tenant's budget rules, for an app about to spend.

Answered from the alert evaluator's last measurement (``alert_states``, every
ALERT_EVALUATE_INTERVAL_S), not by pricing the rollups on each request, so it
takes one indexed read: an app can ask before every expensive call. The spend
of a rule measured before its current period began (just after midnight or the
first of the month) is unknown, ``null``, never $0; so is the spend of a rule
not measured yet. ``remaining_usd`` is the critical threshold minus the spend
(negative when over); ``exhausted`` says whether any budget that applies is at
or over its critical threshold.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from config import get_settings
from models.alert import AlertRule, AlertState
from schema.event import MAX_FEATURE_NAME_LEN
from storage.api_keys import Principal
from web.auth import AUTH_RESPONSES, tenant_principal
from web.dashboard import WITHOUT_NUL
from web.db import sessions

BUDGET_KINDS = ("budget_day", "budget_month")
router = APIRouter(prefix="/v1", tags=["budget"], responses=AUTH_RESPONSES)


def period_start(kind: str, now: datetime) -> datetime:
    """Start of the UTC day or calendar month a budget of ``kind`` counts in at ``now``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if kind == "budget_day" else day.replace(day=1)


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount, "f")


def _budget(rule: AlertRule, state: AlertState | None, now: datetime) -> dict[str, Any]:
    start = period_start(rule.kind, now)
    current = state is not None and state.evaluated_at >= start
    spent = state.value if current and state is not None else None
    remaining = None if spent is None else rule.critical_threshold - spent
    return {
        "rule_id": rule.id, "name": rule.name, "kind": rule.kind, "feature": rule.feature, "model": rule.model,
        "period_start": start, "limit_usd": _money(rule.critical_threshold),
        "warning_usd": _money(rule.warning_threshold), "spent_usd": _money(spent),
        "remaining_usd": _money(remaining), "exhausted": remaining is not None and remaining <= 0,
        "measured_at": state.evaluated_at if state is not None else None,
    }  # fmt: skip


@router.get("/budget")
def budget(
    who: Principal = Depends(tenant_principal),
    factory: sessionmaker[Session] = Depends(sessions),
    feature: str | None = Query(None, max_length=MAX_FEATURE_NAME_LEN, pattern=WITHOUT_NUL,
                                description="Only the budgets that cover this feature (and the tenant-wide ones)."),
) -> dict[str, Any]:  # fmt: skip
    """The key's tenant's enabled budget rules (those covering ``feature`` when given) and what is left of each."""
    tenant = who.tenant_id
    query = (
        select(AlertRule, AlertState)
        .outerjoin(AlertState, and_(AlertState.tenant_id == AlertRule.tenant_id, AlertState.rule_id == AlertRule.id))
        .where(AlertRule.tenant_id == tenant, AlertRule.enabled, AlertRule.kind.in_(BUDGET_KINDS))
        .order_by(AlertRule.id)
    )
    if feature is not None:
        query = query.where(or_(AlertRule.feature.is_(None), AlertRule.feature == feature))
    now = datetime.now(UTC)
    with factory() as session:
        budgets = [_budget(rule, state, now) for rule, state in session.execute(query)]
    return {
        "tenant_id": tenant, "feature": feature, "currency": "USD", "budgets": budgets,
        "exhausted": any(b["exhausted"] for b in budgets),
        "measured_every_s": get_settings().alert_evaluate_interval_s,
    }  # fmt: skip
