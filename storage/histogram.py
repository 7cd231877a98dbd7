"""Mergeable latency histogram with a stated relative error (DDSketch's bucket scheme).

The rollups keep two of them per cell, in the same buckets: latency, and the
time to first token of the streamed calls; "latency" below stands for either.

Bucket ``0`` holds latency 0; a latency ``v >= 1`` ms goes to bucket
``1 + ceil(log_g(v))`` with ``g = (1 + a) / (1 - a)``, so bucket ``i >= 1``
covers ``(g**(i-2), g**(i-1)]``. Reporting ``2 * g**(i-1) / (g + 1)`` for any
value of that bucket is off by at most ``a`` relative (``RELATIVE_ERROR``).
The buckets are the same for every row, so merging two histograms is adding
counts bucket by bucket, which SQL does with the rollups' upserts.

A percentile is read the way PostgreSQL's ``percentile_disc`` defines it: the
value at rank ``ceil(q * n)`` of the sorted latencies. The histogram finds the
bucket holding that rank and returns its representative value, clamped to the
exact min/max the rollups also keep (clamping only moves it closer). So
``|estimate - percentile_disc(q)| <= RELATIVE_ERROR * percentile_disc(q)``.

Why 2 %: the query cost is one row per non-empty bucket of every merged
rollup row (measured ~250 ns each), and the number of non-empty buckets grows
as ``1 / ln(g)``; 2 % keeps a 30-day summary of one tenant within its 20 ms
budget, where 1 % would double the work.

This module is the one source of the formula: ``bucket_sql`` renders the same
computation as a SQL expression (the rollups and the query layer embed it),
with ``LN_GAMMA`` written as a float8 literal that reads back as the same
double, so Python and PostgreSQL divide the same ``ln`` by the same number.
Changing ``RELATIVE_ERROR`` changes every bucket: the rollups must then be
rebuilt over the stored range (``python -m cli rollups rebuild``). Migration
0002 froze this constant in a SQL function ``rollup_latency_bucket``, which
nothing called any more; migration 0006 drops it.

Counts are ``integer``: one bucket of one tenant x feature x model x day would
need 2**31 events (24,855 events/s for a whole day into one latency bucket)
to overflow; sums over many rows are taken as bigint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RELATIVE_ERROR = 0.02
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LN_GAMMA = math.log(GAMMA)
ZERO_BUCKET = 0
PERCENTILES = (0.5, 0.95, 0.99)


def bucket_of(latency_ms: int) -> int:
    """The bucket of a latency in ms; ``bucket_sql`` is the same formula in SQL (tests compare them)."""
    if latency_ms <= 0:
        return ZERO_BUCKET
    return 1 + math.ceil(math.log(latency_ms) / LN_GAMMA)


def bucket_sql(latency: str) -> str:
    """``bucket_of`` as a SQL expression (a ``smallint``) of the integer SQL expression ``latency``.

    ``latency`` is a column reference written in code (e.g. ``"e.latency_ms"``),
    never input. The expression is written out rather than wrapped in a SQL
    function: PostgreSQL does not inline a STRICT function whose body is a CASE,
    and a function call per event cost 2.8 s of CPU per 1M rows against 0.15 s
    for the expression. ``repr`` of a float reads back as the same double, so
    the divisor is bit for bit ``LN_GAMMA``.
    """
    return (
        f"CASE WHEN {latency} <= 0 THEN {ZERO_BUCKET}"
        f" ELSE 1 + ceil(ln({latency}::float8) / {LN_GAMMA!r}::float8) END::smallint"
    )


def representative(bucket: int) -> float:
    """The value reported for every latency of ``bucket``; within RELATIVE_ERROR of each."""
    if bucket <= ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA ** (bucket - 1) / (GAMMA + 1)


def rank(q: float, total: int) -> int:
    """1-based rank of the q-quantile, as PostgreSQL's percentile_disc computes it."""
    return max(1, math.ceil(q * total))


@dataclass(frozen=True)
class LatencyHistogram:
    """Sparse histogram: ascending bucket indexes and their counts."""

    buckets: tuple[int, ...]
    counts: tuple[int, ...]

    @classmethod
    def of(cls, buckets: Sequence[int] | None, counts: Sequence[int] | None) -> LatencyHistogram:
        return cls(tuple(buckets or ()), tuple(counts or ()))

    @classmethod
    def from_latencies(cls, latencies: Iterable[int]) -> LatencyHistogram:
        tally: dict[int, int] = {}
        for latency in latencies:
            bucket = bucket_of(latency)
            tally[bucket] = tally.get(bucket, 0) + 1
        ordered = sorted(tally.items())
        return cls(tuple(b for b, _ in ordered), tuple(c for _, c in ordered))

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        tally = dict(zip(self.buckets, self.counts, strict=False))
        for bucket, count in zip(other.buckets, other.counts, strict=False):
            tally[bucket] = tally.get(bucket, 0) + count
        ordered = sorted(tally.items())
        return LatencyHistogram(tuple(b for b, _ in ordered), tuple(c for _, c in ordered))

    def quantile(self, q: float, minimum: float | None = None, maximum: float | None = None) -> float | None:
        """Estimate of ``percentile_disc(q)``; None when empty. See the module docstring."""
        total = self.total
        if total == 0:
            return None
        wanted = rank(q, total)
        seen = 0
        estimate = representative(self.buckets[-1])
        for bucket, count in zip(self.buckets, self.counts, strict=False):
            seen += count
            if seen >= wanted:
                estimate = representative(bucket)
                break
        if minimum is not None:
            estimate = max(estimate, float(minimum))
        if maximum is not None:
            estimate = min(estimate, float(maximum))
        return estimate
