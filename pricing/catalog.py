"""Rate cards from the genai-prices catalog: one (model, provider) pair's rates over time.

A rate card row gives, for a period ``[valid_from, valid_to)`` (UTC day
boundaries of the catalog's dated price changes), an input band (``ANY_BAND``
when the price has no tiers) and an hour of day (``ALL_DAY`` unless the price
depends on the time of day), the linear rates that reproduce
``genai_prices.calc_price`` for one event covered by the row::

    (uncached * input + cache_read * cache_read_rate + cache_write * cache_write_rate
     + (output - reasoning) * output_rate + reasoning * reasoning_rate) / 1_000_000 + call_fee

where ``uncached = input - cache_read - cache_write`` (input counts cache reads
and writes; reasoning is part of output). The rates are not re-derived from the
catalog's leaf rules: the price in force is asked for (``ModelInfo.get_prices``),
its tiered prices are resolved for a representative input size of the band
(``calc_unit_price``), and the resulting flat price is evaluated on basis usages
(``ModelPrice.calc_price``), which is exact because a flat price is linear in the
usage. Where genai-prices puts a missing cache price (at the input rate) is thus
where it lands here too.

A row is ``approximate`` when one rate cannot describe every event it covers:
a time-of-day price boundary inside the hour, or a tier start strictly inside
the band. A pair the catalog does not know has no rows: unpriced, never $0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Final

from genai_prices import Usage, data_snapshot
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
    calc_unit_price,
)

from schema.bands import BELOW_FIRST_BAND, INPUT_BANDS

ANY_BAND: Final = -1  # the row applies to every input band
ALL_DAY: Final = -1  # the row applies to every hour of the day
HOURS_PER_DAY: Final = 24
MTOK: Final = 1_000_000  # the rates are USD per million tokens
NO_PROVIDER: Final = ""  # as stored in events: let genai-prices choose the provider
BANDS: Final = (BELOW_FIRST_BAND, *INPUT_BANDS)
# Any date stands for a period that no dated price change bounds.
UNBOUNDED_PERIOD_DATE: Final = date(2000, 1, 1)
BASIS: Final = MTOK  # tokens in each basis usage: the rate per MTok comes out as is


@dataclass(frozen=True)
class Rates:
    """USD per million tokens of each kind, and USD per call."""

    input_per_mtok: Decimal
    cache_read_per_mtok: Decimal
    cache_write_per_mtok: Decimal
    output_per_mtok: Decimal
    reasoning_per_mtok: Decimal
    call_fee: Decimal

    def cost(
        self,
        *,
        input_tokens: int,
        cache_read_tokens: int,
        cache_write_tokens: int,
        output_tokens: int,
        reasoning_tokens: int,
    ) -> Decimal:
        """The cost of these token sums (the formula the cost queries evaluate, for one call)."""
        uncached = input_tokens - cache_read_tokens - cache_write_tokens
        tokens = (
            uncached * self.input_per_mtok
            + cache_read_tokens * self.cache_read_per_mtok
            + cache_write_tokens * self.cache_write_per_mtok
            + (output_tokens - reasoning_tokens) * self.output_per_mtok
            + reasoning_tokens * self.reasoning_per_mtok
        )
        return tokens / MTOK + self.call_fee


@dataclass(frozen=True)
class RateRow:
    """Rates for ``[valid_from, valid_to)`` (None: unbounded), one input band and one hour of day."""

    valid_from: datetime | None
    valid_to: datetime | None
    input_band: int
    hour_of_day: int
    rates: Rates
    approximate: bool = False


def find_model(model: str, provider: str) -> ModelInfo | None:
    """The catalog's model for a pair as stored in events, or None when genai-prices finds nothing."""
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider or None, None)
    except LookupError:
        return None
    return info


def catalog_schedule(model: str, provider: str) -> list[RateRow]:
    """The pair's rate card from the catalog; empty when the catalog does not know the pair."""
    info = find_model(model, provider)
    if info is None:
        return []
    rows: list[RateRow] = []
    for start, end in _periods(info):
        rows.extend(_period_rows(info, start, end))
    return _merge_periods(rows)


def _conditions(info: ModelInfo) -> list[StartDateConstraint | TimeOfDateConstraint | None]:
    return [] if isinstance(info.prices, ModelPrice) else [price.constraint for price in info.prices]


def _periods(info: ModelInfo) -> Iterator[tuple[date | None, date | None]]:
    """Consecutive UTC-day periods inside which no dated price change happens."""
    starts = sorted({c.start_date for c in _conditions(info) if isinstance(c, StartDateConstraint)})
    bounds: list[date | None] = [None, *starts, None]
    yield from pairwise(bounds)


def _midnight(day: date | None) -> datetime | None:
    return None if day is None else datetime.combine(day, time(0), tzinfo=UTC)


def _utc_boundaries(info: ModelInfo) -> list[time]:
    """Times of day (UTC) where a time-of-day price starts or ends."""
    found = []
    for condition in _conditions(info):
        if isinstance(condition, TimeOfDateConstraint):
            for moment in (condition.start_time, condition.end_time):
                zone = moment.tzinfo or UTC
                found.append(
                    datetime.combine(UNBOUNDED_PERIOD_DATE, moment.replace(tzinfo=zone)).astimezone(UTC).time()
                )
    return found


def _period_rows(info: ModelInfo, start: date | None, end: date | None) -> list[RateRow]:
    if start is not None:
        day = start
    elif end is not None:
        day = end - timedelta(days=1)
    else:
        day = UNBOUNDED_PERIOD_DATE
    boundaries = _utc_boundaries(info)
    by_hour: list[tuple[int, list[tuple[int, Rates, bool]], bool]] = []
    for hour in range(HOURS_PER_DAY) if boundaries else (ALL_DAY,):
        moment = datetime.combine(day, time(max(hour, 0)), tzinfo=UTC)
        price = info.get_prices(moment)
        inside = [b for b in boundaries if b.hour == hour and b != time(hour)]
        # A boundary inside the hour matters only if the price differs on its two sides.
        split = any(info.get_prices(datetime.combine(day, b, tzinfo=UTC)) != price for b in inside)
        by_hour.append((hour, _band_rates(price), split))
    if len(by_hour) > 1 and all(entry[1] == by_hour[0][1] and not entry[2] for entry in by_hour):
        by_hour = [(ALL_DAY, by_hour[0][1], False)]
    return [
        RateRow(_midnight(start), _midnight(end), band, hour, rates, approximate or split)
        for hour, bands, split in by_hour
        for band, rates, approximate in bands
    ]


def _band_rates(price: ModelPrice) -> list[tuple[int, Rates, bool]]:
    """(band, rates, approximate) for each band, or one ANY_BAND entry when no tier applies."""
    tiered = {key: value for key, value in _price_items(price) if isinstance(value, TieredPrices)}
    if not tiered:
        return [(ANY_BAND, basis_rates(price), False)]
    starts = {tier.start for value in tiered.values() for tier in value.tiers}
    entries = []
    for index, band in enumerate(BANDS):
        upper = BANDS[index + 1] if index + 1 < len(BANDS) else None
        representative = band + 1  # a request in the band has more than ``band`` input tokens
        flat = ModelPrice(
            **{
                key: calc_unit_price(value, 1, representative, 1) if isinstance(value, TieredPrices) else value
                for key, value in _price_items(price)
            }
        )
        inside = any(band < start and (upper is None or start < upper) for start in starts)
        entries.append((band, basis_rates(flat), inside))
    if all(rates == entries[0][1] and not inside for _, rates, inside in entries):
        return [(ANY_BAND, entries[0][1], False)]
    return entries


def _price_items(price: ModelPrice) -> list[tuple[str, Decimal | TieredPrices]]:
    return [(key, value) for key, value in price.__dict__.items() if not key.startswith("_") and value is not None]


def basis_rates(flat: ModelPrice) -> Rates:
    """Rates of a price without tiers, asked of genai-prices on one basis usage per kind of token."""

    def total(**usage: int) -> Decimal:
        return flat.calc_price(Usage(**usage))["total_price"]

    fee = total()
    return Rates(
        input_per_mtok=total(input_tokens=BASIS) - fee,
        cache_read_per_mtok=total(input_tokens=BASIS, cache_read_tokens=BASIS) - fee,
        cache_write_per_mtok=total(input_tokens=BASIS, cache_write_tokens=BASIS) - fee,
        output_per_mtok=total(output_tokens=BASIS) - fee,
        reasoning_per_mtok=total(output_tokens=BASIS, output_reasoning_tokens=BASIS) - fee,
        call_fee=fee,
    )


def _merge_periods(rows: list[RateRow]) -> list[RateRow]:
    """Join consecutive periods of one (band, hour) whose rates and flag are the same."""
    merged: dict[tuple[int, int], list[RateRow]] = {}
    out: list[RateRow] = []
    # Periods come in time order; a key's previous row is the last one kept for it.
    for row in rows:
        kept = merged.setdefault((row.input_band, row.hour_of_day), [])
        last = kept[-1] if kept else None
        if (
            last is not None
            and last.valid_to == row.valid_from
            and (last.rates, last.approximate)
            == (
                row.rates,
                row.approximate,
            )
        ):
            kept[-1] = replace(last, valid_to=row.valid_to)
        else:
            kept.append(row)
    for kept in merged.values():
        out.extend(kept)
    return out
