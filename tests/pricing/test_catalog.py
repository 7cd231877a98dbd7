"""Rate cards from the catalog reproduce genai-prices exactly, event by event (pricing.catalog).

The property: for random usages (cache reads and writes inside input, reasoning
inside output) of real catalog models at random moments of 2023-2027, the row
covering the event's moment, input band and hour gives the same Decimal as
``genai_prices.calc_price``. The models cover tiered prices (200K tiers), dated
price changes, cache write prices, time-of-day prices and a per-call fee.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import genai_prices
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.catalog import ALL_DAY, ANY_BAND, RateRow, catalog_schedule
from schema.bands import INPUT_BANDS, input_band

MODELS = [
    ("claude-sonnet-4-5", "anthropic"),  # 200K tier, cache writes
    ("claude-opus-4-6", ""),  # dated change and tiers
    ("gemini-2.5-pro", "google"),  # 200K tier
    ("gpt-5.6-sol", ""),  # cache writes, dated change, tiers
    ("o3", "openai"),  # dated price change
    ("gpt-4o", ""),  # flat
    ("deepseek-chat", ""),  # time-of-day prices on :30 boundaries
    ("deepseek-v4-pro", ""),  # dated change and whole-hour time-of-day prices
    ("sonar", "perplexity"),  # a per-call fee
    ("sonar-deep-research", "perplexity"),  # reasoning priced apart from output
]
SCHEDULES = {pair: catalog_schedule(*pair) for pair in MODELS}
START = datetime(2023, 1, 1, tzinfo=UTC)
SPAN_S = int((datetime(2028, 1, 1, tzinfo=UTC) - START).total_seconds())
MAX_INPUT = 1_100_000
MAX_OUTPUT = 200_000
EXAMPLES = 400


def covering(rows: list[RateRow], moment: datetime, band: int) -> RateRow:
    found = [
        row
        for row in rows
        if (row.valid_from is None or row.valid_from <= moment)
        and (row.valid_to is None or moment < row.valid_to)
        and row.input_band in (ANY_BAND, band)
        and row.hour_of_day in (ALL_DAY, moment.hour)
    ]
    assert len(found) == 1, f"{len(found)} rows cover {moment} band {band}"
    return found[0]


@st.composite
def usages(draw: st.DrawFn) -> dict[str, int]:
    input_tokens = draw(st.integers(0, MAX_INPUT) | st.sampled_from([b + d for b in INPUT_BANDS for d in (0, 1)]))
    cache_read = draw(st.integers(0, input_tokens))
    cache_write = draw(st.integers(0, input_tokens - cache_read))
    output = draw(st.integers(0, MAX_OUTPUT))
    reasoning = draw(st.integers(0, output))
    return {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
    }


@pytest.mark.parametrize("pair", MODELS, ids=[m for m, _ in MODELS])
def test_every_model_tried_has_a_schedule(pair: tuple[str, str]) -> None:
    assert SCHEDULES[pair], f"the catalog prices {pair}"


@settings(max_examples=EXAMPLES, deadline=None)
@given(pair=st.sampled_from(MODELS), usage=usages(), offset_s=st.integers(0, SPAN_S), micros=st.integers(0, 999_999))
def test_rates_reproduce_calc_price_exactly(
    pair: tuple[str, str], usage: dict[str, int], offset_s: int, micros: int
) -> None:
    model, provider = pair
    moment = START + timedelta(seconds=offset_s, microseconds=micros)
    row = covering(SCHEDULES[pair], moment, input_band(usage["input_tokens"]))
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage["input_tokens"],
            cache_read_tokens=usage["cache_read_tokens"],
            cache_write_tokens=usage["cache_write_tokens"],
            output_tokens=usage["output_tokens"],
            output_reasoning_tokens=usage["reasoning_tokens"],
        ),
        model,
        provider_id=provider or None,
        genai_request_timestamp=moment,
    ).total_price
    if row.approximate:
        return  # the row says it cannot be exact for every moment of its hour or size of its band
    assert row.rates.cost(**usage) == expected


def test_time_of_day_boundary_inside_the_hour_is_marked_approximate() -> None:
    rows = SCHEDULES[("deepseek-chat", "")]
    flagged = {row.hour_of_day for row in rows if row.approximate}
    assert flagged == {0, 16}  # 00:30 and 16:30 UTC
    assert {row.hour_of_day for row in rows} == set(range(24))


def test_tiered_model_has_a_row_per_band_and_flat_model_one() -> None:
    assert sorted(row.input_band for row in SCHEDULES[("gemini-2.5-pro", "google")]) == [0, *INPUT_BANDS]
    flat = SCHEDULES[("gpt-4o", "")]
    assert [(row.input_band, row.hour_of_day, row.valid_from, row.valid_to) for row in flat] == [
        (ANY_BAND, ALL_DAY, None, None)
    ]


def test_dated_change_splits_the_schedule_at_utc_midnight() -> None:
    rows = SCHEDULES[("o3", "openai")]
    bounds = {row.valid_to for row in rows} - {None}
    assert bounds, "o3's price changed on a date"
    assert all(b.tzinfo == UTC and (b.hour, b.minute, b.second, b.microsecond) == (0, 0, 0, 0) for b in bounds)


def test_unknown_model_or_provider_has_no_rows() -> None:
    assert catalog_schedule("no-such-model-anywhere", "") == []
    assert catalog_schedule("gpt-4o", "no-such-provider") == []
