"""Cost in USD, priced at query time: the rollups' token sums joined with the rate table.

Nothing is priced at ingest. Each rollup cell (one tenant, hour or day,
feature, model, provider and input-size band) is joined with the row of
``cost_rates`` in force for it (pricing.rates keeps that table: the catalog's
dated prices merged with the overrides), so a corrected price or a new override
changes every figure, past ones included, as soon as it commits. The cost of a
cell is linear in its sums,

    (uncached_input * input + cache_read * cache_read_rate + cache_write * cache_write_rate
     + (output - reasoning) * output_rate + reasoning * reasoning_rate) / 10**6 + calls * call_fee,

with ``uncached_input = input - cache_read - cache_write`` (input counts cache
reads and writes, output counts reasoning), so the sum over cells equals the sum
over the events exactly: ``numeric`` arithmetic, multiplications only.

Where prices are not uniform within a day (time-of-day prices), the cells of
those models come from ``rollup_hourly`` instead of ``rollup_daily``. A cell
with no rate in force is *unpriced*: its calls and tokens are counted apart
and its model named, never priced at $0. Per-user cells exist per day only; for
a model with time-of-day prices they are priced at the rate of
``USER_CELL_FALLBACK_HOUR`` and flagged ``approximate``, as is a cell whose rate
row says it cannot be exact (a price boundary inside the rollups' hour).

Same snapshot rules and whole-hour ranges as queries.rollups; the SQL text is
chosen among constant fragments, every value is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection, text

from queries.rollups import (
    DAY,
    PENDING_IN_RANGE,
    TooManyRows,
    capped,
    ceil_to,
    day_span,
    floor_to,
    hour_span,
    limit_for,
)
from schema.bands import input_band_sql

CostGroup = Literal["total", "feature", "model", "hour", "day", "user"]
COST_GROUPS: tuple[CostGroup, ...] = ("total", "feature", "model", "hour", "day", "user")
USER_CELL_FALLBACK_HOUR = 0  # per-user cells are daily: time-of-day prices use this hour's rate (approximate)
TOKENS_PER_MTOK = Decimal(1_000_000)

__all__ = ["COST_GROUPS", "CostFigures", "CostGroup", "TooManyRows", "cost_by", "tenants_by_cost"]


@dataclass(frozen=True)
class CostFigures:
    """Cost of one group. ``cost_usd`` covers the priced calls only (None when there were none);
    the unpriced calls, their tokens and their models are reported beside it, never as $0."""

    key: Any
    calls: int
    tokens_used: int
    cost_usd: Decimal | None
    priced_calls: int
    priced_tokens: int
    unpriced_calls: int
    unpriced_tokens: int
    unpriced_models: list[str]
    approximate: bool

    @property
    def cost_per_call_usd(self) -> Decimal | None:
        return self.cost_usd / self.priced_calls if self.cost_usd is not None and self.priced_calls else None

    @property
    def cost_per_1k_tokens_usd(self) -> Decimal | None:
        if self.cost_usd is None or not self.priced_tokens:
            return None
        return self.cost_usd * 1000 / self.priced_tokens


# --- cells --------------------------------------------------------------------

SUMS = "calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, tokens_used"
FILTERS = (
    "(CAST(:feature AS text) IS NULL OR feature_name = :feature) AND (CAST(:model AS text) IS NULL OR model = :model)"
)
# Pairs priced by time of day: their daily cells cannot be priced, their hourly ones can.
HOURLY_PRICED = (
    "EXISTS (SELECT 1 FROM cost_rates t WHERE t.model = x.model AND t.provider = x.provider AND t.hour_of_day >= 0)"
)
HOUR_OF = "CAST(extract(hour FROM x.bucket AT TIME ZONE 'UTC') AS int)"
CELL = (
    "x.tenant_id, x.feature_name, x.bucket, {hour} AS hour, x.model, x.provider, x.input_band, NULL AS user_id, {sums}"
)
DAILY_PART = f"""
SELECT {CELL.format(hour="-1", sums=SUMS)} FROM rollup_daily x
WHERE {{tenant}} x.bucket >= :d0 AND x.bucket < :d1 AND {FILTERS} AND NOT {HOURLY_PRICED}
UNION ALL
SELECT {CELL.format(hour=HOUR_OF, sums=SUMS)} FROM rollup_hourly x
WHERE {{tenant}} x.bucket >= :d0 AND x.bucket < :d1 AND {FILTERS} AND {HOURLY_PRICED}"""
HOURLY_PART = f"""
SELECT {CELL.format(hour=HOUR_OF, sums=SUMS)} FROM rollup_hourly x
WHERE {{tenant}} ((x.bucket >= :h0 AND x.bucket < :d0) OR (x.bucket >= :d1 AND x.bucket < :h1)) AND {FILTERS}"""
USERS_PART = f"""
SELECT x.tenant_id, x.feature_name, x.day AS bucket, -1 AS hour, x.model, x.provider, x.input_band, x.user_id, {SUMS}
FROM rollup_daily_users x WHERE {{tenant}} x.day >= :h0 AND x.day < :h1 AND {FILTERS}"""
# Pending batches' raw rows, one cell per event (queries.rollups' tail, with the pricing columns).
TAIL_ROWS = (
    "{tenant} e.timestamp >= :h0 AND e.timestamp < :h1"
    " AND e.batch_id BETWEEN :first_batch AND :last_batch AND e.batch_id + 0 = ANY(CAST(:batch_ids AS bigint[]))"
    " AND (CAST(:feature AS text) IS NULL OR e.feature_name = :feature)"
    " AND (CAST(:model AS text) IS NULL OR COALESCE(e.model, '') = :model)"
)
TAIL_PART = f"""
SELECT e.tenant_id, e.feature_name, {{tail_bucket}}, {{tail_hour}}, COALESCE(e.model, ''), COALESCE(e.provider, ''),
       {input_band_sql("e.input_tokens")}, e.user_id, 1, e.input_tokens, e.output_tokens, e.cache_read_tokens,
       e.cache_write_tokens, e.reasoning_tokens, e.tokens_used
FROM analytics_events e WHERE {TAIL_ROWS}"""
HOURLY_TAIL = {
    "tail_bucket": "date_trunc('hour', e.timestamp, 'UTC')",
    "tail_hour": "CAST(extract(hour FROM e.timestamp AT TIME ZONE 'UTC') AS int)",
}
DAILY_TAIL = {"tail_bucket": "date_trunc('day', e.timestamp, 'UTC')", "tail_hour": "-1"}
ONE_TENANT = {"tenant": "x.tenant_id = :tenant AND", "tail_tenant": "e.tenant_id = :tenant AND"}
ALL_TENANTS = {"tenant": "", "tail_tenant": ""}

# --- pricing ------------------------------------------------------------------

# One rate row is in force for a cell: the tenant's own schedule if it has one for the pair, else the global one.
# Cells are first given the band and hour their pair is priced by (-1: the pair's price does not depend on
# it), so that the rate row in force is found by equality on (tenant, model, provider, band, hour) and one
# range test; then summed per key and model, and the few (key, model) rows per key summed last.
PRICED_QUERY = """
WITH cells AS ({cells}),
kinds AS (
    SELECT model, provider, bool_or(input_band >= 0) AS tiered, bool_or(hour_of_day >= 0) AS hourly
    FROM cost_rates GROUP BY model, provider),
shaped AS (
    SELECT {key} AS key, c.tenant_id, c.model, c.provider, c.bucket, c.calls, c.tokens_used,
           CASE WHEN k.tiered THEN c.input_band ELSE -1 END AS band,
           CASE WHEN NOT k.hourly OR k.hourly IS NULL THEN -1 WHEN c.hour >= 0 THEN c.hour
                ELSE :fallback_hour END AS hour,
           COALESCE(k.hourly AND c.hour < 0, false) AS day_cell,
           c.input_tokens - c.cache_read_tokens - c.cache_write_tokens AS uncached, c.cache_read_tokens,
           c.cache_write_tokens, c.output_tokens - c.reasoning_tokens AS plain_output, c.reasoning_tokens
    FROM cells c LEFT JOIN kinds k ON k.model = c.model AND k.provider = c.provider),
per_model AS (
    SELECT c.key, c.model, sum(c.calls) AS calls, sum(c.tokens_used) AS tokens_used,
           sum((c.uncached * p.input_per_mtok + c.cache_read_tokens * p.cache_read_per_mtok
                + c.cache_write_tokens * p.cache_write_per_mtok + c.plain_output * p.output_per_mtok
                + c.reasoning_tokens * p.reasoning_per_mtok) * 0.000001 + c.calls * p.call_fee) AS cost,
           COALESCE(sum(c.calls) FILTER (WHERE p.model IS NOT NULL), 0) AS priced_calls,
           COALESCE(sum(c.tokens_used) FILTER (WHERE p.model IS NOT NULL), 0) AS priced_tokens,
           COALESCE(bool_or(p.approximate OR c.day_cell), false) AS approximate
    FROM shaped c
    LEFT JOIN cost_rate_scopes s
           ON s.tenant_id = c.tenant_id AND s.model = c.model AND s.provider = c.provider
    LEFT JOIN cost_rates p
           ON p.tenant_id = COALESCE(s.tenant_id, '') AND p.model = c.model AND p.provider = c.provider
          AND p.input_band = c.band AND p.hour_of_day = c.hour
          AND c.bucket >= p.valid_from AND c.bucket < p.valid_to
    GROUP BY c.key, c.model)
SELECT key, sum(calls)::bigint AS calls, sum(tokens_used)::bigint AS tokens_used, sum(cost) AS cost,
       sum(priced_calls)::bigint AS priced_calls, sum(priced_tokens)::bigint AS priced_tokens,
       sum(calls - priced_calls)::bigint AS unpriced_calls, sum(tokens_used - priced_tokens)::bigint AS unpriced_tokens,
       COALESCE(array_agg(model ORDER BY model) FILTER (WHERE calls > priced_calls), '{{}}') AS unpriced_models,
       bool_or(approximate) AS approximate
FROM per_model GROUP BY key ORDER BY {order} LIMIT :row_limit"""
KEYS: dict[CostGroup | Literal["tenant"], str] = {
    "total": "'total'",
    "feature": "c.feature_name",
    "model": "c.model",
    "hour": "c.bucket",
    "day": "date_trunc('day', c.bucket, 'UTC')",
    "user": "c.user_id",
    "tenant": "c.tenant_id",
}
BY_KEY = "key"
BY_COST = "cost DESC NULLS LAST, calls DESC, key"


def _cells(conn: Connection, h0: datetime, h1: datetime, *, days: bool, users: bool,
           scope: dict[str, str]) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The UNION of rollup parts and pending tail covering [h0, h1), and its range parameters."""
    d0, d1 = ceil_to(h0, DAY), floor_to(h1, DAY)
    if not days or d0 >= d1:
        d0 = d1 = h1  # no daily part: the hourly part's first range covers everything
    batch_ids = list(conn.execute(PENDING_IN_RANGE, {"h0": h0, "h1": h1}).scalars())
    params: dict[str, Any] = {
        "h0": h0, "h1": h1, "d0": d0, "d1": d1, "batch_ids": batch_ids,
        "first_batch": batch_ids[0] if batch_ids else 0, "last_batch": batch_ids[-1] if batch_ids else 0,
    }  # fmt: skip
    tail = TAIL_PART.format(tenant=scope["tail_tenant"], **(DAILY_TAIL if users else HOURLY_TAIL))
    if users:
        parts = [USERS_PART.format(tenant=scope["tenant"])]
    else:
        parts = [HOURLY_PART.format(tenant=scope["tenant"])]
        if d0 < d1:
            parts.insert(0, DAILY_PART.format(tenant=scope["tenant"]))
    if batch_ids:
        parts.append(tail)
    return "\nUNION ALL\n".join(parts), params


def _figures(row: Any) -> CostFigures:
    return CostFigures(
        key=row.key,
        calls=row.calls,
        tokens_used=row.tokens_used,
        cost_usd=row.cost if row.priced_calls else None,
        priced_calls=row.priced_calls,
        priced_tokens=row.priced_tokens,
        unpriced_calls=row.unpriced_calls,
        unpriced_tokens=row.unpriced_tokens,
        unpriced_models=list(row.unpriced_models),
        approximate=bool(row.approximate),
    )


def cost_by(
    conn: Connection,
    tenant: str,
    start: datetime,
    end: datetime,
    group: CostGroup,
    *,
    feature: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    max_rows: int | None = None,
) -> list[CostFigures]:
    """One tenant's cost over ``hour_span(start, end)`` (``day_span`` for ``group="user"``), one row per group.

    ``user`` rows are ranked by cost (most first) and cut at ``limit``; the other groups are in key order.
    More than ``max_rows`` rows raise TooManyRows (they are never all read)."""
    if group not in COST_GROUPS:
        raise ValueError(f"group must be one of {COST_GROUPS}, got {group!r}")
    users = group == "user"
    h0, h1 = day_span(start, end) if users else hour_span(start, end)
    cells, params = _cells(conn, h0, h1, days=group != "hour", users=users, scope=ONE_TENANT)
    sql = PRICED_QUERY.format(cells=cells, key=KEYS[group], order=BY_COST if users else BY_KEY)
    row_limit = limit if users else limit_for(max_rows)
    bound = {**params, "tenant": tenant, "feature": feature, "model": model,
             "fallback_hour": USER_CELL_FALLBACK_HOUR, "row_limit": row_limit}  # fmt: skip
    rows = conn.execute(text(sql), bound).all()
    return [_figures(row) for row in (rows if users else capped(rows, max_rows))]


def tenants_by_cost(conn: Connection, start: datetime, end: datetime, limit: int) -> list[CostFigures]:
    """Every tenant's cost over ``hour_span(start, end)``, most first, the first ``limit`` (admin only)."""
    h0, h1 = hour_span(start, end)
    cells, params = _cells(conn, h0, h1, days=True, users=False, scope=ALL_TENANTS)
    sql = PRICED_QUERY.format(cells=cells, key=KEYS["tenant"], order=BY_COST)
    bound = {**params, "feature": None, "model": None, "fallback_hour": USER_CELL_FALLBACK_HOUR, "row_limit": limit}
    return [_figures(row) for row in conn.execute(text(sql), bound)]
