"""Alert rules API: a tenant's rules with their current state, and its alert history.

Tenant keys manage their own tenant's rules, admin keys any tenant's;
``ingest_health`` rules watch the whole pipeline, so only admin keys add or
delete them. ``POST /api/tenants/{tenant_id}/alert-rules`` takes the rule's
fields (thresholds and amounts as exact decimal strings or numbers); bad input
is a 422 whose ``loc`` names the field, a name the tenant already uses a 409.
Deleting a rule deletes its state and keeps its history.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, RootModel
from sqlalchemy.orm import Session, sessionmaker

from alerts.rules import (
    MAX_THRESHOLD,
    MAX_WINDOW_MINUTES,
    DuplicateRuleName,
    RuleError,
    RuleWithState,
    add_rule,
    delete_rule,
    get_rule,
    history,
    list_rules,
    parse_rule,
)
from models.alert import INGEST_HEALTH, RULE_NAME_LEN
from schema.event import MAX_FEATURE_NAME_LEN, MAX_INT32, MAX_MODEL_LEN
from storage.api_keys import Principal
from web.auth import AUTH_RESPONSES, BODY_UNREADABLE, ErrorDetail, principal, readable_tenant
from web.body_limit import read_json
from web.dashboard import path_tenant
from web.db import sessions
from web.errors import invalid

DEFAULT_LISTED_HISTORY = 100
MAX_LISTED_HISTORY = 1000
ADMIN_ONLY = f"{INGEST_HEALTH} rules watch the whole pipeline: they need an admin key"

router = APIRouter(prefix="/api/tenants/{tenant_id}", tags=["alerts"], dependencies=[Depends(readable_tenant)],
                   responses=AUTH_RESPONSES)  # fmt: skip

# Amounts: an exact decimal string (best) or a JSON number (read by its shortest repr).
DECIMAL = r"^[0-9]{1,12}(\.[0-9]{1,20})?$"  # alerts.rules.MAX_THRESHOLD is 10^12
FRACTION = r"^(0(\.[0-9]{1,20})?|1(\.0{1,20})?)$"
POSITIVE = r"^([1-9][0-9]{0,11}(\.[0-9]{1,20})?|0?\.[0-9]{0,19}[1-9][0-9]{0,19})$"
NAME = r"^[^\x00]*[^\x00\s][^\x00]*$"  # not blank, no NUL
NO_NUL = r"^[^\x00]*$"
MAX_AMOUNT = float(MAX_THRESHOLD) - 1
Amount = Annotated[str, Field(pattern=DECIMAL)] | Annotated[float, Field(ge=0, le=MAX_AMOUNT)]
Fraction = Annotated[str, Field(pattern=FRACTION)] | Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[str, Field(pattern=POSITIVE)] | Annotated[float, Field(gt=0, le=MAX_AMOUNT)]
Feature = Annotated[str, Field(max_length=MAX_FEATURE_NAME_LEN, pattern=NO_NUL)]
Model = Annotated[str, Field(max_length=MAX_MODEL_LEN, pattern=NO_NUL)]
Window = Annotated[int, Field(ge=1, le=MAX_WINDOW_MINUTES, description="Minutes back from each evaluation.")]
MinCalls = Annotated[int, Field(ge=0, le=MAX_INT32, description="Fewer calls in the window never fire.")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=RULE_NAME_LEN, pattern=NAME, description="Unique in the tenant.")
    enabled: bool = True


class BudgetRule(_Rule):
    """USD spent in the current UTC day (budget_day) or calendar month (budget_month)."""

    kind: Literal["budget_day", "budget_month"]
    feature: Feature | None = None
    model: Model | None = None
    warning_threshold: Amount = Field(examples=["80"])
    critical_threshold: Amount = Field(examples=["100"], description="At or above warning_threshold.")


class SpikeRule(_Rule):
    """The last hour's cost as a ratio to the same hour's average over the previous 7 days."""

    kind: Literal["cost_spike"]
    feature: Feature | None = None
    model: Model | None = None
    warning_threshold: Amount = Field(examples=["2"])
    critical_threshold: Amount = Field(examples=["5"], description="At or above warning_threshold.")
    min_amount_usd: Positive = Field(description="A last hour cheaper than this never fires; the least baseline.")


class ErrorRateRule(_Rule):
    """The fraction of calls that failed over the window."""

    kind: Literal["error_rate"]
    feature: Feature | None = None
    window_minutes: Window
    min_calls: MinCalls = 0
    warning_threshold: Fraction = Field(examples=["0.05"])
    critical_threshold: Fraction = Field(examples=["0.2"], description="At or above warning_threshold.")


class LatencyRule(_Rule):
    """The p95 latency (ms) over the window."""

    kind: Literal["latency_p95"]
    feature: Feature | None = None
    window_minutes: Window
    min_calls: MinCalls = 0
    warning_threshold: Amount = Field(examples=["2000"])
    critical_threshold: Amount = Field(examples=["5000"], description="At or above warning_threshold.")


class IngestHealthRule(_Rule):
    """The whole pipeline (admin keys only): lags in seconds, dead letters added over window_minutes (required
    for it, refused for the others), days of partitions ahead (lower is worse: critical at or below warning)."""

    kind: Literal["ingest_health"]
    metric: Literal["ingest_lag_s", "rollup_lag_s", "dead_letters_added", "partition_horizon_days"]
    window_minutes: Window | None = None
    warning_threshold: Amount
    critical_threshold: Amount


class RuleBody(RootModel[Annotated[BudgetRule | SpikeRule | ErrorRateRule | LatencyRule | IngestHealthRule,
                                   Field(discriminator="kind")]]):  # fmt: skip
    """An alert rule; its kind says which fields it takes and the unit of its thresholds."""


class RuleOut(BaseModel):
    id: int
    tenant_id: str
    name: str
    kind: str
    feature: str | None
    model: str | None
    metric: str | None
    warning_threshold: str
    critical_threshold: str
    window_minutes: int | None
    min_calls: int
    min_amount_usd: str | None
    enabled: bool
    created_at: datetime
    created_by: str
    state: str | None = Field(description="ok, warning or critical; null until first evaluated.")
    value: str | None = Field(description="The value last measured; null: not enough data.")
    since: datetime | None
    evaluated_at: datetime | None


class HistoryOut(BaseModel):
    id: int
    rule_id: int
    rule_name: str
    from_state: str
    to_state: str = Field(description="warning, critical or resolved (back to ok).")
    value: str | None
    threshold: str | None
    at: datetime


def _s(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.normalize():f}"


def _out(entry: RuleWithState) -> RuleOut:
    r = entry.rule
    return RuleOut(id=r.id, tenant_id=r.tenant_id, name=r.name, kind=r.kind, feature=r.feature, model=r.model,
                   metric=r.metric, warning_threshold=f"{r.warning_threshold.normalize():f}",
                   critical_threshold=f"{r.critical_threshold.normalize():f}", window_minutes=r.window_minutes,
                   min_calls=r.min_calls, min_amount_usd=_s(r.min_amount_usd), enabled=r.enabled,
                   created_at=r.created_at, created_by=r.created_by, state=entry.state, value=_s(entry.value),
                   since=entry.since, evaluated_at=entry.evaluated_at)  # fmt: skip


@router.get("/alert-rules", response_model=list[RuleOut])
def get_rules(tenant_id: str, factory: sessionmaker[Session] = Depends(sessions)) -> list[RuleOut]:
    """The tenant's rules and their current state."""
    with factory() as session:
        return [_out(entry) for entry in list_rules(session.connection(), path_tenant(tenant_id))]


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``#/$defs/..`` reference replaced by its definition (openapi_extra has no $defs)."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith(DEFS):
            return _inlined(defs[ref.removeprefix(DEFS)], defs)
        return {k: _inlined(v, defs) for k, v in node.items() if k != "mapping"}  # the mapping names $defs
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    return node


DEFS = "#/$defs/"
_schema = RuleBody.model_json_schema()
RULE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined({k: v for k, v in _schema.items() if k != "$defs"},
                                                            _schema.get("$defs", {}))}},
    }
}  # fmt: skip


@router.post(
    "/alert-rules",
    status_code=201,
    response_model=RuleOut,
    openapi_extra=RULE_BODY,
    responses={**BODY_UNREADABLE, 409: {"model": ErrorDetail, "description": "The tenant has a rule of that name"}},
)
async def create_rule(
    tenant_id: str, request: Request, who: Principal = Depends(principal),
    factory: sessionmaker[Session] = Depends(sessions),
) -> RuleOut:  # fmt: skip
    """Add a rule; it is evaluated from the next cycle on."""
    body = await read_json(request, RuleBody)
    return await run_in_threadpool(_create, path_tenant(tenant_id), body, who, factory)


def _create(tenant_id: str, body: RuleBody, who: Principal, factory: sessionmaker[Session]) -> RuleOut:
    raw = body.root.model_dump(exclude_none=True)
    if raw["kind"] == INGEST_HEALTH and not who.is_admin:
        raise HTTPException(403, ADMIN_ONLY)
    try:
        rule = parse_rule(raw)
    except RuleError as exc:
        raise invalid("body", exc.field, exc.message, raw.get(exc.field)) from None
    try:
        with factory.begin() as session:
            stored = add_rule(session.connection(), tenant_id, rule, created_by=f"api key {who.key_id}")
    except DuplicateRuleName as exc:
        raise HTTPException(409, str(exc)) from None
    return _out(RuleWithState(stored, None, None, None, None))


OTHER_METHODS = ["DELETE", "OPTIONS", "PATCH", "PUT", "TRACE"]
RULES_METHODS = "GET, HEAD, POST"


# Starlette answers a method a path lacks with the Allow header of the path's first route only (GET here):
# this hidden route answers every other method with both.
@router.api_route("/alert-rules", methods=OTHER_METHODS, include_in_schema=False)
def rules_method_not_allowed() -> Response:
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": RULES_METHODS})


@router.delete("/alert-rules/{rule_id}", status_code=204, responses={404: {"model": ErrorDetail}})
def remove_rule(
    tenant_id: str, rule_id: int, who: Principal = Depends(principal),
    factory: sessionmaker[Session] = Depends(sessions),
) -> Response:  # fmt: skip
    """Delete a rule and its state; its history stays."""
    tenant_id = path_tenant(tenant_id)
    with factory.begin() as session:
        conn = session.connection()
        rule = get_rule(conn, tenant_id, rule_id)
        if rule is None:
            raise HTTPException(404, f"tenant {tenant_id!r} has no alert rule {rule_id}")
        if rule.kind == INGEST_HEALTH and not who.is_admin:
            raise HTTPException(403, ADMIN_ONLY)
        delete_rule(conn, tenant_id, rule_id)
    return Response(status_code=204)


@router.get("/alert-history", response_model=list[HistoryOut])
def get_history(
    tenant_id: str,
    factory: sessionmaker[Session] = Depends(sessions),
    rule_id: int | None = Query(None, ge=1, description="Only this rule's changes."),
    limit: int = Query(DEFAULT_LISTED_HISTORY, ge=1, le=MAX_LISTED_HISTORY),
) -> list[HistoryOut]:
    """Every state change of the tenant's rules (deleted rules' too), newest first."""
    with factory() as session:
        rows = history(session.connection(), path_tenant(tenant_id), rule_id=rule_id, limit=limit)
    return [HistoryOut(id=r.id, rule_id=r.rule_id, rule_name=r.rule_name, from_state=r.from_state,
                       to_state=r.to_state, value=_s(r.value), threshold=_s(r.threshold), at=r.at)
            for r in rows]  # fmt: skip
