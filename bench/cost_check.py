"""The check of ``bench.cost``: a tenant-month of API cost against the cost of each of its events.

The events of the month are read raw and priced one by one, independently of
pricing/ and of the rollups: by ``genai_prices.calc_price`` at the event's own
timestamp, or, where one of the bench's overrides is in force for the event,
from that override's own fields. Events no catalog and no override prices are
counted, never priced. The figures are compared per model, so that a difference
says where it comes from (and whether the API flagged that model's cost as
approximate).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price
from sqlalchemy import Connection, text

from bench.cost_data import PlannedOverride
from queries.cost import CostFigures

EVENTS_SQL = """
SELECT timestamp, model, coalesce(provider, '') AS provider, input_tokens, cache_read_tokens, cache_write_tokens,
       output_tokens, reasoning_tokens
FROM analytics_events
WHERE tenant_id = :tenant AND timestamp >= :start AND timestamp < :end
"""
FETCH_ROWS = 10_000


@dataclass
class ModelTotals:
    """One model's events of the month as the check priced them."""

    calls: int = 0
    cost_usd: Decimal = Decimal(0)
    unpriced_calls: int = 0


@dataclass
class EventTotals:
    by_model: dict[str, ModelTotals] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.by_model.values())

    @property
    def cost_usd(self) -> Decimal:
        return sum((t.cost_usd for t in self.by_model.values()), Decimal(0))

    @property
    def unpriced_calls(self) -> int:
        return sum(t.unpriced_calls for t in self.by_model.values())


def override_in_force(overrides: Iterable[PlannedOverride], tenant: str, model: str, provider: str,
                      day: date) -> PlannedOverride | None:  # fmt: skip
    """The override pricing this call: the tenant's own latest one in force, else the latest global one."""
    matching = [
        o for o in overrides
        if o.model == model and o.provider in ("", provider) and o.effective_from <= day and o.tenant in ("", tenant)
    ]  # fmt: skip
    own = [o for o in matching if o.tenant == tenant]
    chosen = own or matching
    return max(chosen, key=lambda o: o.effective_from) if chosen else None


def price_events(conn: Connection, tenant: str, start: datetime, end: datetime, overrides: list[PlannedOverride],
                 *, at_hour_start: bool = False) -> EventTotals:  # fmt: skip
    """Every event of the tenant in ``[start, end)`` priced on its own.

    ``at_hour_start`` prices each event as if made at the start of its UTC hour,
    the rollups' finest grain: what the API can at best reproduce where a price
    changes inside an hour (time-of-day prices starting at half past).
    """
    totals = EventTotals()
    result = conn.execution_options(stream_results=True, max_row_buffer=FETCH_ROWS).execute(
        text(EVENTS_SQL), {"tenant": tenant, "start": start, "end": end}
    )
    for row in result:
        model_totals = totals.by_model.setdefault(row.model, ModelTotals())
        model_totals.calls += 1
        tokens = {
            "input_tokens": row.input_tokens, "cache_read_tokens": row.cache_read_tokens,
            "cache_write_tokens": row.cache_write_tokens, "output_tokens": row.output_tokens,
            "reasoning_tokens": row.reasoning_tokens,
        }  # fmt: skip
        moment = row.timestamp.replace(minute=0, second=0, microsecond=0) if at_hour_start else row.timestamp
        override = override_in_force(overrides, tenant, row.model, row.provider, moment.date())
        if override is not None:
            model_totals.cost_usd += override.cost(**tokens)
            continue
        usage = Usage(input_tokens=row.input_tokens, cache_read_tokens=row.cache_read_tokens,
                      cache_write_tokens=row.cache_write_tokens, output_tokens=row.output_tokens,
                      output_reasoning_tokens=row.reasoning_tokens)  # fmt: skip
        try:
            price = calc_price(usage, row.model, provider_id=row.provider or None, genai_request_timestamp=moment)
        except LookupError:  # neither the provider nor the model is in the catalog: unpriced
            model_totals.unpriced_calls += 1
            continue
        model_totals.cost_usd += price.total_price
    return totals


@dataclass(frozen=True)
class ModelCheck:
    model: str
    api_cost_usd: Decimal | None
    events_cost_usd: Decimal
    api_unpriced_calls: int
    events_unpriced_calls: int
    approximate: bool

    @property
    def mismatch_usd(self) -> Decimal:
        return abs((self.api_cost_usd or Decimal(0)) - self.events_cost_usd)


def compare(api_by_model: list[CostFigures], events: EventTotals) -> list[ModelCheck]:
    """One line per model seen by either side, in model order."""
    api = {str(row.key): row for row in api_by_model}
    checks = []
    for model in sorted(set(api) | set(events.by_model)):
        row, mine = api.get(model), events.by_model.get(model, ModelTotals())
        checks.append(ModelCheck(
            model=model, api_cost_usd=row.cost_usd if row else None, events_cost_usd=mine.cost_usd,
            api_unpriced_calls=row.unpriced_calls if row else 0, events_unpriced_calls=mine.unpriced_calls,
            approximate=bool(row and row.approximate),
        ))  # fmt: skip
    return checks


def mismatch_usd(api_total: CostFigures | None, events: EventTotals) -> Decimal:
    """|API total - per-event total|; an API total of None (nothing priced) counts as no cost."""
    api_cost = api_total.cost_usd if api_total is not None and api_total.cost_usd is not None else Decimal(0)
    return abs(api_cost - events.cost_usd)
