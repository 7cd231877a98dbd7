"""What prices each seen model now: the rows the rate table holds for this moment, or UNPRICED.

Seen models are the names of ``tenant_names`` (kind 'model'; one tenant's with
``tenant_id``), with the providers the rate table registered for them
(``priced_models``; provider '' when none yet). Each is priced here by the
same schedule function that fills ``cost_rates`` (pricing.rates.schedule), so
a model not rolled up yet is shown as it will be priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.price import GLOBAL, PricedModel
from models.tenant_name import MODEL, TenantName
from pricing.catalog import ALL_DAY, NO_PROVIDER, Rates
from pricing.overrides import active_overrides, applies, matches
from pricing.rates import catalog_rows, schedule

UNPRICED_HINT = "set an override: prices set MODEL --input X --output Y --from YYYY-MM-DD --reason TEXT"


@dataclass(frozen=True)
class Effective:
    """One rate row in force (``rates`` None: nothing prices the pair)."""

    model: str
    provider: str
    input_band: int
    hour_of_day: int
    source: str
    override_id: int | None
    rates: Rates | None
    approximate: bool


def seen_pairs(session: Session, tenant_id: str | None, model_pattern: str | None) -> list[tuple[str, str]]:
    query = select(TenantName.name).where(TenantName.kind == MODEL).distinct()
    if tenant_id is not None:
        query = query.where(TenantName.tenant_id == tenant_id)
    names = sorted(name for name in session.execute(query).scalars() if name)
    if model_pattern is not None:
        names = [name for name in names if matches(model_pattern, name)]
    providers: dict[str, list[str]] = {}
    for model, provider in session.execute(select(PricedModel.model, PricedModel.provider)).all():
        providers.setdefault(model, []).append(provider)
    return [(name, provider) for name in names for provider in sorted(providers.get(name, [NO_PROVIDER]))]


def effective_rates(
    session: Session, *, tenant_id: str | None = None, model_pattern: str | None = None, at: datetime | None = None
) -> list[Effective]:
    """The rates in force at ``at`` (now) for each seen pair, for ``tenant_id``'s schedule (global when None)."""
    moment = at or datetime.now(UTC)
    overrides = active_overrides(session)
    tenant = tenant_id or GLOBAL
    out: list[Effective] = []
    for model, provider in seen_pairs(session, tenant_id, model_pattern):
        mine = [o for o in overrides if applies(o, tenant, model, provider)]
        rows = [
            row
            for row in schedule(catalog_rows(model, provider), mine)
            if (row.rate.valid_from is None or row.rate.valid_from <= moment)
            and (row.rate.valid_to is None or moment < row.rate.valid_to)
            and row.rate.hour_of_day in (ALL_DAY, moment.hour)
        ]
        if not rows:
            out.append(Effective(model, provider, -1, -1, "unpriced", None, None, False))
        out.extend(
            Effective(
                model,
                provider,
                row.rate.input_band,
                row.rate.hour_of_day,
                row.source,
                row.override_id,
                row.rate.rates,
                row.rate.approximate,
            )
            for row in sorted(rows, key=lambda r: r.rate.input_band)
        )
    return out
