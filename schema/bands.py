"""Input-size bands: the grain at which the rollups keep token sums for tiered prices.

A tiered model price (genai-prices ``TieredPrices``) charges a whole request
at a tier's rate when the request's total input tokens are greater than the
tier's ``start`` (the "cliff" rule), so the price of a sum of requests depends
on each request's input size. The rollups therefore keep their sums per band
of input size: a band is named by its lower bound, the greatest boundary the
request's ``input_tokens`` exceed (0 below the first). Pricing a band row with
any tier start in ``INPUT_BANDS`` is exact; a test fails when the installed
catalog has a start that is not here. A stored band is its own lower bound, so
adding a boundary later leaves old rows meaningful (merely coarser).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

INPUT_BANDS: Final = (32_000, 100_000, 128_000, 199_999, 200_000, 256_000, 272_000, 512_000, 524_288)
BELOW_FIRST_BAND: Final = 0  # the band of a request of at most INPUT_BANDS[0] input tokens


def input_band(input_tokens: int) -> int:
    """The greatest boundary in INPUT_BANDS that ``input_tokens`` exceeds, else 0."""
    index = bisect_left(INPUT_BANDS, input_tokens)  # boundaries strictly below input_tokens
    return INPUT_BANDS[index - 1] if index else BELOW_FIRST_BAND


def input_band_sql(column: str) -> str:
    """``input_band`` as a SQL ``integer`` expression of the integer SQL expression ``column``.

    ``column`` is a column reference written in code (e.g. ``"e.input_tokens"``),
    never input; the boundaries are integer constants from this module.
    """
    whens = " ".join(f"WHEN {column} > {bound:d} THEN {bound:d}" for bound in reversed(INPUT_BANDS))
    return f"(CASE {whens} ELSE {BELOW_FIRST_BAND:d} END)"
