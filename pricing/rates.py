"""The materialized rate table the cost queries join: ``cost_rates`` and ``cost_rate_scopes``.

For each priced (model, provider) pair (``priced_models``) the global schedule
(tenant '') is the catalog's rate card (pricing.catalog) up to the first
global override's date, then the override in force (pricing.overrides'
precedence) from each override date to the next. A tenant with an override of
its own that applies to the pair gets a complete schedule of its own (catalog,
global and its overrides merged) and a ``cost_rate_scopes`` row; other tenants
use the global rows. Periods of one key never overlap and leave no gap where a
price exists, so the cost query's join::

    LEFT JOIN cost_rate_scopes s ON (s.tenant_id, s.model, s.provider) = (r.tenant_id, r.model, r.provider)
    LEFT JOIN cost_rates p ON p.tenant_id = COALESCE(s.tenant_id, '') AND p.model = r.model
     AND p.provider = r.provider AND p.input_band IN (-1, r.input_band) AND p.hour_of_day IN (-1, <hour>)
     AND r.bucket >= p.valid_from AND r.bucket < p.valid_to

finds at most one row (none: unpriced, never $0).

``refresh`` recomputes schedules (called in the transaction of every override
change, and hourly by the ``prices.refresh`` task so that an upgraded catalog
reaches the table); ``ensure_priced`` registers pairs seen for the first time
and materializes them in the caller's transaction (the rollup run calls it).
"""

from __future__ import annotations

import time as clock
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any, Final, cast

from sqlalchemy import Table, delete, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.price import GLOBAL, SOURCE_CATALOG, SOURCE_OVERRIDE, CostRate, CostRateScope, PricedModel, PriceOverride
from pricing.catalog import RateRow, catalog_schedule
from pricing.locks import lock_prices
from pricing.overrides import active_overrides, applies, matches, override_rates, precedence
from storage.committed_cache import CommittedCache

NEG_INFINITY: Final = "-infinity"  # how an open period end is written to timestamptz
INFINITY: Final = "infinity"
CATALOG_CACHE_PAIRS: Final = 4096  # rate cards kept in memory (the catalog changes only with a restart)
KNOWN_PAIRS_MAX: Final = 100_000  # entries of the per-process set of materialized pairs before it is emptied
PENDING_KEY: Final = "pricing.rates.pending"

Pair = tuple[str, str]  # (model, provider) as stored in events and rollups


@dataclass(frozen=True)
class ScheduleRow:
    """A cost_rates row without its key's (tenant, model, provider)."""

    rate: RateRow
    source: str
    override_id: int | None


@dataclass(frozen=True)
class RefreshResult:
    pairs: int  # (model, provider) pairs recomputed
    schedules: int  # schedules written (global ones and tenants' own)
    rows: int  # cost_rates rows written
    seconds: float


@lru_cache(maxsize=CATALOG_CACHE_PAIRS)
def catalog_rows(model: str, provider: str) -> tuple[RateRow, ...]:
    """The pair's catalog rate card, kept in memory (the catalog changes only with a restart)."""
    return tuple(catalog_schedule(model, provider))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def schedule(catalog: Sequence[RateRow], overrides: Sequence[PriceOverride]) -> list[ScheduleRow]:
    """One schedule: the catalog before the first override's date, then the override in force.

    ``overrides`` are those that apply to the schedule's tenant and pair.
    """
    dates = sorted({o.effective_from for o in overrides})
    if not dates:
        return [ScheduleRow(row, SOURCE_CATALOG, None) for row in catalog]
    cut = _midnight(dates[0])
    rows = [
        ScheduleRow(
            RateRow(
                row.valid_from,
                cut if row.valid_to is None or row.valid_to > cut else row.valid_to,
                row.input_band,
                row.hour_of_day,
                row.rates,
                row.approximate,
            ),
            SOURCE_CATALOG,
            None,
        )
        for row in catalog
        if row.valid_from is None or row.valid_from < cut
    ]
    winners: list[tuple[date, PriceOverride]] = []
    for day in dates:
        in_force = [o for o in overrides if o.effective_from <= day]
        winner = min(in_force, key=precedence)
        if not winners or winners[-1][1].id != winner.id:
            winners.append((day, winner))
    for index, (day, winner) in enumerate(winners):
        end = _midnight(winners[index + 1][0]) if index + 1 < len(winners) else None
        rate = RateRow(_midnight(day), end, -1, -1, override_rates(winner), False)
        rows.append(ScheduleRow(rate, SOURCE_OVERRIDE, winner.id))
    return rows


def _record(tenant_id: str, pair: Pair, row: ScheduleRow) -> dict[str, Any]:
    rates = row.rate.rates
    return {
        "tenant_id": tenant_id,
        "model": pair[0],
        "provider": pair[1],
        "input_band": row.rate.input_band,
        "hour_of_day": row.rate.hour_of_day,
        "valid_from": NEG_INFINITY if row.rate.valid_from is None else row.rate.valid_from,
        "valid_to": INFINITY if row.rate.valid_to is None else row.rate.valid_to,
        "input_per_mtok": rates.input_per_mtok,
        "cache_read_per_mtok": rates.cache_read_per_mtok,
        "cache_write_per_mtok": rates.cache_write_per_mtok,
        "output_per_mtok": rates.output_per_mtok,
        "reasoning_per_mtok": rates.reasoning_per_mtok,
        "call_fee": rates.call_fee,
        "source": row.source,
        "override_id": row.override_id,
        "approximate": row.rate.approximate,
    }


def _pairs(session: Session, models: Iterable[str] | None) -> list[Pair]:
    registered = [(m, p) for m, p in session.execute(select(PricedModel.model, PricedModel.provider)).all()]
    if models is None:
        return registered
    patterns = list(models)
    return [pair for pair in registered if any(matches(pattern, pair[0]) for pattern in patterns)]


def refresh(
    session: Session, *, models: Iterable[str] | None = None, tenants: Iterable[str] | None = None
) -> RefreshResult:
    """Recompute the schedules of the registered pairs whose model matches ``models`` (all when None).

    ``tenants``: recompute only these tenants' own schedules (the global one
    is left as it is), for a change of their overrides; None recomputes the
    global schedule and every tenant's. Runs in the caller's transaction.
    """
    started = clock.perf_counter()
    lock_prices(session)
    return _refresh_pairs(session, _pairs(session, models), None if tenants is None else set(tenants), started)


def _refresh_pairs(session: Session, pairs: list[Pair], tenants: set[str] | None, started: float) -> RefreshResult:
    if not pairs:
        return RefreshResult(0, 0, 0, clock.perf_counter() - started)
    overrides = active_overrides(session)
    scoped = {
        (tenant, model, provider)
        for tenant, model, provider in session.execute(
            select(CostRateScope.tenant_id, CostRateScope.model, CostRateScope.provider).where(
                tuple_(CostRateScope.model, CostRateScope.provider).in_(pairs)
            )
        ).all()
    }
    records: list[dict[str, Any]] = []
    rewritten: list[tuple[str, str, str]] = []  # (tenant, model, provider) schedules deleted then written
    wanted_scopes: list[dict[str, str]] = []
    dropped_scopes: list[tuple[str, str, str]] = []
    for pair in pairs:
        model, provider = pair
        catalog = catalog_rows(model, provider)
        # The pair's overrides once, then per tenant: linear in the overrides, whatever the tenants.
        for_pair = [o for o in overrides if applies(o, o.tenant_id, model, provider)]
        global_overrides = [o for o in for_pair if o.tenant_id == GLOBAL]
        by_tenant: dict[str, list[PriceOverride]] = {}
        for o in for_pair:
            if o.tenant_id != GLOBAL:
                by_tenant.setdefault(o.tenant_id, []).append(o)
        if tenants is None:
            rewritten.append((GLOBAL, model, provider))
            records.extend(_record(GLOBAL, pair, row) for row in schedule(catalog, global_overrides))
        own = set(by_tenant) if tenants is None else set(by_tenant) & tenants
        for tenant in sorted(own):
            rewritten.append((tenant, model, provider))
            records.extend(
                _record(tenant, pair, row) for row in schedule(catalog, global_overrides + by_tenant[tenant])
            )
            wanted_scopes.append({"tenant_id": tenant, "model": model, "provider": provider})
        for tenant, m, p in scoped:
            if (m, p) == pair and tenant not in own and (tenants is None or tenant in tenants):
                dropped_scopes.append((tenant, m, p))
    stale = rewritten + dropped_scopes
    if stale:
        session.execute(
            delete(CostRate).where(tuple_(CostRate.tenant_id, CostRate.model, CostRate.provider).in_(stale))
        )
    if dropped_scopes:
        session.execute(
            delete(CostRateScope).where(
                tuple_(CostRateScope.tenant_id, CostRateScope.model, CostRateScope.provider).in_(dropped_scopes)
            )
        )
    if records:
        # Core, not the ORM's bulk path (which sends a statement per row here): one multi-row INSERT per page.
        session.connection().execute(insert(cast(Table, CostRate.__table__)), records)
    if wanted_scopes:
        session.execute(pg_insert(CostRateScope).on_conflict_do_nothing(), wanted_scopes)
    return RefreshResult(len(pairs), len(rewritten), len(records), clock.perf_counter() - started)


# --- ensure_priced -------------------------------------------------------------------


KNOWN: Final = CommittedCache[Pair](PENDING_KEY, KNOWN_PAIRS_MAX)  # pairs whose priced_models row is committed


def ensure_priced(session: Session, pairs: Iterable[Pair]) -> None:
    """Register the pairs not yet in ``priced_models`` and materialize their rates, in the caller's transaction.

    Costs two set operations when every pair is known to this process; a pair
    is known only once the transaction that found or added its row committed.
    Pairs without a model name are skipped: an unnamed model is unpriced.
    """
    unknown = KNOWN.unknown({(model, provider) for model, provider in pairs if model})
    if not unknown:
        return
    lock_prices(session)
    found = set(
        session.execute(
            select(PricedModel.model, PricedModel.provider).where(
                tuple_(PricedModel.model, PricedModel.provider).in_(sorted(unknown))
            )
        ).all()
    )
    new = sorted(unknown - found)
    if new:
        session.execute(pg_insert(PricedModel).on_conflict_do_nothing(), [{"model": m, "provider": p} for m, p in new])
        _refresh_pairs(session, new, None, clock.perf_counter())
    KNOWN.pending(session).update(unknown)
