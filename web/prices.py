"""Admin API for prices: the rates in force, setting an override, the history (admin keys only).

Amounts are JSON strings holding exact decimals (USD per million tokens; the
per-call fee in USD), in answers and in the body of ``POST``. The body is
declared to OpenAPI but read by the handler after the key is checked (as for
ingest). Bad input is a 422 whose ``loc`` names the field; an override with
the same tenant, pattern, provider and date as an active one is a 409 unless
the body says ``"replace": true`` (a correction; the old one is kept in the
history, superseded).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from models.price import PriceOverride
from pricing.listing import Effective, effective_rates
from pricing.overrides import OverrideConflict, PriceError, history, parse_override, set_override
from schema.event import MAX_MODEL_LEN, MAX_PROVIDER_LEN, MAX_TENANT_ID_LEN
from web.auth import AUTH_RESPONSES, ErrorDetail, admin_principal
from web.body_limit import read_json
from web.db import sessions

router = APIRouter(prefix="/api/admin/prices", tags=["prices"], dependencies=[Depends(admin_principal)],
                   responses=AUTH_RESPONSES)  # fmt: skip

Amount = str  # an exact decimal as a JSON string


class OverrideBody(BaseModel):
    """A price override. Rates: USD per million tokens as decimal strings; omitted cache rates are priced as
    input, omitted reasoning as output."""

    model_config = ConfigDict(extra="forbid")

    model_pattern: str = Field(max_length=MAX_MODEL_LEN, description="A model name, or a glob with * and ?.")
    input_per_mtok: Amount = Field(examples=["2.50"])
    output_per_mtok: Amount = Field(examples=["10.00"])
    cache_read_per_mtok: Amount | None = None
    cache_write_per_mtok: Amount | None = None
    reasoning_per_mtok: Amount | None = None
    call_fee: Amount | None = Field(None, description="USD per call; default 0.")
    provider: str = Field("", max_length=MAX_PROVIDER_LEN, description="'' = any provider.")
    tenant_id: str = Field("", max_length=MAX_TENANT_ID_LEN, description="'' = every tenant.")
    effective_from: date = Field(description="First UTC day the price applies.")
    reason: str = Field(description="Why; kept in the history.")
    set_by: str = ""
    replace: bool = Field(False, description="Correct the active override of the same pattern, scope and date.")


class RatesOut(BaseModel):
    input_per_mtok: Amount
    cache_read_per_mtok: Amount
    cache_write_per_mtok: Amount
    output_per_mtok: Amount
    reasoning_per_mtok: Amount
    call_fee: Amount


class EffectiveOut(BaseModel):
    model: str
    provider: str
    source: str = Field(description="'catalog', 'override' or 'unpriced' (nothing prices it: set an override).")
    override_id: int | None
    input_band: int = Field(description="-1: every input size; else the band's lower bound (input tokens).")
    hour_of_day: int = Field(description="-1: all day; else the UTC hour.")
    approximate: bool
    rates: RatesOut | None


class OverrideOut(BaseModel):
    id: int
    tenant_id: str
    model_pattern: str
    provider: str
    effective_from: date
    input_per_mtok: Amount
    cache_read_per_mtok: Amount | None
    cache_write_per_mtok: Amount | None
    output_per_mtok: Amount
    reasoning_per_mtok: Amount | None
    call_fee: Amount
    set_by: str
    reason: str
    created_at: datetime
    superseded_by: int | None
    superseded_at: datetime | None


class SetOut(BaseModel):
    id: int
    superseded_id: int | None
    warnings: list[str]


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _effective(row: Effective) -> EffectiveOut:
    rates = None
    if row.rates is not None:
        r = row.rates
        rates = RatesOut(
            input_per_mtok=str(r.input_per_mtok),
            cache_read_per_mtok=str(r.cache_read_per_mtok),
            cache_write_per_mtok=str(r.cache_write_per_mtok),
            output_per_mtok=str(r.output_per_mtok),
            reasoning_per_mtok=str(r.reasoning_per_mtok),
            call_fee=str(r.call_fee),
        )
    return EffectiveOut(model=row.model, provider=row.provider, source=row.source, override_id=row.override_id,
                        input_band=row.input_band, hour_of_day=row.hour_of_day, approximate=row.approximate,
                        rates=rates)  # fmt: skip


def _override(row: PriceOverride) -> OverrideOut:
    return OverrideOut(id=row.id, tenant_id=row.tenant_id, model_pattern=row.model_pattern, provider=row.provider,
                       effective_from=row.effective_from, input_per_mtok=str(row.input_per_mtok),
                       cache_read_per_mtok=_s(row.cache_read_per_mtok), cache_write_per_mtok=_s(row.cache_write_per_mtok),
                       output_per_mtok=str(row.output_per_mtok), reasoning_per_mtok=_s(row.reasoning_per_mtok),
                       call_fee=str(row.call_fee), set_by=row.set_by, reason=row.reason, created_at=row.created_at,
                       superseded_by=row.superseded_by, superseded_at=row.superseded_at)  # fmt: skip


@router.get("", response_model=list[EffectiveOut])
def list_prices(
    factory: sessionmaker[Session] = Depends(sessions),
    tenant_id: str | None = Query(None, max_length=MAX_TENANT_ID_LEN, description="That tenant's schedule."),
    model: str | None = Query(None, max_length=MAX_MODEL_LEN, description="A model name or glob."),
) -> list[EffectiveOut]:
    """The rates in force now for every seen model; those nothing prices have source 'unpriced'."""
    with factory() as session:
        return [_effective(row) for row in effective_rates(session, tenant_id=tenant_id, model_pattern=model)]


@router.get("/history", response_model=list[OverrideOut])
def price_history(
    factory: sessionmaker[Session] = Depends(sessions),
    tenant_id: str | None = Query(None, max_length=MAX_TENANT_ID_LEN),
    model: str | None = Query(None, max_length=MAX_MODEL_LEN),
) -> list[OverrideOut]:
    """Every override set, superseded ones included, newest first."""
    with factory() as session:
        return [_override(row) for row in history(session, tenant_id=tenant_id, model=model)]


OVERRIDE_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": OverrideBody.model_json_schema()}}}
}


# Its own path: Starlette answers a wrong method with the Allow header of the first route of the path only.
@router.post(
    "/overrides",
    status_code=201,
    response_model=SetOut,
    responses={409: {"model": ErrorDetail, "description": "An active override has the same scope and date"}},
    openapi_extra=OVERRIDE_BODY,
)
async def create_override(request: Request, factory: sessionmaker[Session] = Depends(sessions)) -> SetOut:
    """Store an override and reprice every figure it touches, in one transaction."""
    body = await read_json(request, OverrideBody)
    return await run_in_threadpool(_create, body, factory)


def _create(body: OverrideBody, factory: sessionmaker[Session]) -> SetOut:
    fields: dict[str, Any] = body.model_dump(exclude={"replace"})
    try:
        value = parse_override(fields)
    except PriceError as exc:
        raise HTTPException(422, [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]) from None
    try:
        with factory.begin() as session:
            result = set_override(session, value, replace=body.replace)
    except OverrideConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return SetOut(id=result.override_id, superseded_id=result.superseded_id, warnings=result.warnings)
