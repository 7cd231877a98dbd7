"""schema.bands: the Python band and its SQL rendering agree, and cover the installed price catalog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import genai_prices.data
from genai_prices.types import ConditionalPrice, ModelInfo, ModelPrice, TieredPrices
from sqlalchemy import Engine, text

from schema.bands import BELOW_FIRST_BAND, INPUT_BANDS, input_band, input_band_sql
from schema.event import MAX_INT32

# Every boundary, one below and one above it, and the ends of the range.
PROBES = sorted({0, 1, MAX_INT32} | {bound + delta for bound in INPUT_BANDS for delta in (-1, 0, 1)})


def test_input_band_is_the_greatest_boundary_exceeded() -> None:
    for tokens in PROBES:
        exceeded = [bound for bound in INPUT_BANDS if tokens > bound]
        assert input_band(tokens) == (max(exceeded) if exceeded else BELOW_FIRST_BAND), tokens
    # The cliff rule: a tier starting at b applies to inputs > b, not to b itself.
    assert input_band(INPUT_BANDS[0]) == BELOW_FIRST_BAND
    assert input_band(INPUT_BANDS[0] + 1) == INPUT_BANDS[0]
    assert input_band(INPUT_BANDS[-1] + 1) == INPUT_BANDS[-1]


def test_input_band_sql_agrees_with_input_band_in_postgresql(engine: Engine) -> None:
    query = text(f"SELECT t, {input_band_sql('t')} FROM unnest(CAST(:probes AS integer[])) AS t ORDER BY t")
    with engine.connect() as conn:
        rows = conn.execute(query, {"probes": PROBES}).all()
    assert [tokens for tokens, _ in rows] == PROBES
    assert [band for _, band in rows] == [input_band(tokens) for tokens in PROBES]
    assert len({band for _, band in rows}) == len(INPUT_BANDS) + 1  # every band was reached


def _model_prices(model: ModelInfo) -> Iterator[ModelPrice]:
    prices: Any = model.prices
    for price in prices if isinstance(prices, list) else [prices]:
        yield price.prices if isinstance(price, ConditionalPrice) else price
    for variant in model.price_variants or []:
        yield variant.prices


def _catalog_tier_starts() -> set[int]:
    starts = set()
    for provider in genai_prices.data.providers:
        for model in provider.models:
            for price in _model_prices(model):
                for value in vars(price).values():
                    if isinstance(value, TieredPrices):
                        starts |= {tier.start for tier in value.tiers}
    return starts


def test_every_tier_start_of_the_installed_catalog_is_a_band() -> None:
    """A genai-prices upgrade that adds a threshold fails here: add it to INPUT_BANDS (rollups keep old rows)."""
    starts = _catalog_tier_starts()
    assert starts, "the catalog walk found no tiered price: genai-prices' layout changed"
    assert starts <= set(INPUT_BANDS), f"tier starts missing from INPUT_BANDS: {sorted(starts - set(INPUT_BANDS))}"


def test_bands_are_ascending_distinct_and_positive() -> None:
    """input_band's bisection needs them sorted; band 0 must stay "below the first boundary"."""
    assert list(INPUT_BANDS) == sorted(set(INPUT_BANDS)) and INPUT_BANDS[0] > BELOW_FIRST_BAND
