"""The workload of ``bench.cost``: models and providers, the event loader's SQL, the price changes.

Events are loaded server-side by bench.rollups' Loader (INSERT .. SELECT
generate_series, 1,000 events per batch with its ``rollup_pending_batches``
row) with the token buckets of the GenAI conventions: ``input_tokens`` counts
cache reads and writes, ``output_tokens`` counts reasoning. Tenants are skewed
(tenant ``k`` of ``n`` gets a share near ``1 / (2 sqrt(k n))``): a few large
tenants for the summary, a long tail of small ones for the ranking and for the
per-event check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from bench.rollups import BATCH_EVENTS, ERROR_SHARE, LATENCY_LOG_MEAN, LATENCY_LOG_SIGMA


@dataclass(frozen=True)
class BenchModel:
    """A (model, provider) pair as events carry it, and the shape of its requests."""

    model: str
    provider: str
    reasoning: bool = False  # part of its output is reasoning tokens
    long_inputs: bool = False  # tiered price: some requests go over the 200K tier start


# Real catalog names (genai-prices): flat, dated (catalog price changes), tiered at 200K, time-of-day.
PRICED_MODELS = (
    BenchModel("gpt-4o", "openai"),
    BenchModel("gpt-4o-mini", "openai"),
    BenchModel("gpt-4.1", "openai"),
    BenchModel("gpt-4.1-mini", "openai"),
    BenchModel("gpt-4.1-nano", "openai"),
    BenchModel("o3", "openai", reasoning=True),
    BenchModel("o4-mini", "openai", reasoning=True),
    BenchModel("claude-sonnet-4", "anthropic"),
    BenchModel("claude-3-5-haiku", "anthropic"),
    BenchModel("claude-opus-4", "anthropic"),
    BenchModel("claude-3-7-sonnet", "anthropic", reasoning=True),
    BenchModel("gemini-2.5-pro", "google", reasoning=True, long_inputs=True),
    BenchModel("gemini-2.5-flash", "google", reasoning=True),
    BenchModel("gemini-2.0-flash", "google"),
    BenchModel("gemini-4-argon", "google"),  # dated catalog price change (1 December 2026)
    BenchModel("deepseek-chat", "deepseek"),  # time-of-day prices
    BenchModel("deepseek-reasoner", "deepseek", reasoning=True),  # time-of-day prices
    BenchModel("mistral-large-4", "mistral"),  # dated catalog price changes (20 and 29 October 2026)
    BenchModel("mistral-small-latest", "mistral"),
    BenchModel("grok-3", "x-ai"),
    BenchModel("grok-4.20", "x-ai", reasoning=True, long_inputs=True),  # tiered at 199,999
    BenchModel("openai/gpt-4o", "openrouter"),  # dated catalog price change (19 October 2026)
    BenchModel("google/gemini-2.5-pro", "openrouter", long_inputs=True),  # dated and tiered
)
UNPRICED_MODEL = BenchModel("acme-internal-llm", "acme")  # nothing prices it: its calls are counted apart
BENCH_MODELS = (*PRICED_MODELS, UNPRICED_MODEL)

TENANTS = 1000
USERS_PER_TENANT = 100
TENANT_SKEW = 2  # tenant index = floor(random() ** TENANT_SKEW * TENANTS): a few large tenants, a long tail
TENANT_DIGITS = 4
LONG_INPUT_SHARE = 0.05  # of a long-input model's requests: over 200K input tokens
LONG_INPUT_MIN, LONG_INPUT_SPREAD = 200_001, 150_000
INPUT_MIN, INPUT_SPREAD = 50, 12_000
OUTPUT_MIN, OUTPUT_SPREAD = 20, 1_500
CACHE_READ_SHARE, CACHE_READ_MAX_FRACTION = 0.4, 0.9  # requests with cache reads; at most this much of the input
CACHE_WRITE_SHARE, CACHE_WRITE_MAX_FRACTION = 0.1, 0.5  # of the input left after the cache reads
REASONING_MAX_FRACTION = 0.8  # of a reasoning model's output


def tenant_name(index: int) -> str:
    """``tenant-0001`` .. ``tenant-1000`` (index from 1), as the loader names them."""
    return f"tenant-{index:0{TENANT_DIGITS}d}"


# Three levels so that each random draw is made once per event (a subquery whose
# output has volatile functions is not flattened): draws, then the token counts
# that depend on the model, then the buckets that depend on the input size. A
# cache read fraction a and a cache write fraction (1 - a) * b, with b <= 1/2,
# keep reads + writes <= input.
LOAD_SQL = f"""
WITH events AS (
    INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id, model, provider,
        input_tokens, output_tokens, tokens_used, cache_read_tokens, cache_write_tokens, reasoning_tokens,
        latency_ms, status, error_type, batch_id)
    SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
            || substr(ih, 1, 3) || '8' || substr(ih, 4, 15))::uuid,
           ts, tenant, feature, tenant || '-user-' || u, model, provider,
           inp, outp, inp + outp,
           floor(inp * cache_read_fraction)::int,
           floor(inp * (1 - cache_read_fraction) * cache_write_fraction)::int,
           CASE WHEN reasons THEN floor(outp * reasoning_fraction)::int ELSE 0 END,
           latency, CASE WHEN err THEN 'error' ELSE 'success' END, CASE WHEN err THEN 'timeout' END,
           :first_batch + (i - :first_i) / {BATCH_EVENTS}
    FROM (
        SELECT d.*, (CAST(:models AS text[]))[k] AS model, (CAST(:providers AS text[]))[k] AS provider,
               (CAST(:reasoning AS boolean[]))[k] AS reasons,
               CASE WHEN (CAST(:long_inputs AS boolean[]))[k] AND r_long < {LONG_INPUT_SHARE}
                    THEN {LONG_INPUT_MIN} + floor(r_input * {LONG_INPUT_SPREAD})::int
                    ELSE {INPUT_MIN} + floor(r_input * {INPUT_SPREAD})::int END AS inp,
               CASE WHEN err THEN 0 ELSE {OUTPUT_MIN} + floor(r_output * {OUTPUT_SPREAD})::int END AS outp
        FROM (
            SELECT i,
                   :t0 + (i - :first_i) * (:t1 - :t0) / :n AS ts,
                   lpad(to_hex(i), 18, '0') AS ih,
                   'tenant-' || lpad((1 + floor(power(random(), {TENANT_SKEW}) * {TENANTS}))::int::text,
                                     {TENANT_DIGITS}, '0') AS tenant,
                   (CAST(:features AS text[]))[1 + floor(random() * :n_features)::int] AS feature,
                   floor(random() * {USERS_PER_TENANT})::int AS u,
                   1 + floor(random() * :n_models)::int AS k,
                   random() AS r_long, random() AS r_input, random() AS r_output,
                   CASE WHEN random() < {CACHE_READ_SHARE} THEN random() * {CACHE_READ_MAX_FRACTION}
                        ELSE 0 END AS cache_read_fraction,
                   CASE WHEN random() < {CACHE_WRITE_SHARE} THEN random() * {CACHE_WRITE_MAX_FRACTION}
                        ELSE 0 END AS cache_write_fraction,
                   random() * {REASONING_MAX_FRACTION} AS reasoning_fraction,
                   exp({LATENCY_LOG_MEAN} + {LATENCY_LOG_SIGMA}
                       * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))::int AS latency,
                   random() < {ERROR_SHARE} AS err
            FROM generate_series(:first_i, :first_i + :n - 1) AS i
        ) AS d
    ) AS g
    RETURNING batch_id, timestamp
)
INSERT INTO rollup_pending_batches (batch_id, min_ts, max_ts)
SELECT batch_id, min(timestamp), max(timestamp) FROM events GROUP BY batch_id
"""


def load_params() -> dict[str, Any]:
    """The bound parameters LOAD_SQL needs beyond bench.rollups.Loader's own."""
    return {
        "models": [m.model for m in BENCH_MODELS],
        "providers": [m.provider for m in BENCH_MODELS],
        "reasoning": [m.reasoning for m in BENCH_MODELS],
        "long_inputs": [m.long_inputs for m in BENCH_MODELS],
        "n_models": len(BENCH_MODELS),
    }


# --- price changes --------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedOverride:
    """A price the bench sets through pricing.overrides; its fields also price events in the check."""

    model: str
    provider: str
    tenant: str  # '' for a global override
    effective_from: date
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None  # None: as input
    cache_write_per_mtok: Decimal | None = None  # None: as input
    reasoning_per_mtok: Decimal | None = None  # None: as output
    call_fee: Decimal = Decimal(0)

    def cost(self, *, input_tokens: int, cache_read_tokens: int, cache_write_tokens: int, output_tokens: int,
             reasoning_tokens: int) -> Decimal:  # fmt: skip
        """One call's cost, from this override's own fields (the check's independent computation)."""
        cache_read = self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        cache_write = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        reasoning = self.output_per_mtok if self.reasoning_per_mtok is None else self.reasoning_per_mtok
        per_mtok = (
            (input_tokens - cache_read_tokens - cache_write_tokens) * self.input_per_mtok
            + cache_read_tokens * cache_read
            + cache_write_tokens * cache_write
            + (output_tokens - reasoning_tokens) * self.output_per_mtok
            + reasoning_tokens * reasoning
        )
        return per_mtok / Decimal(1_000_000) + self.call_fee


def planned_overrides(month_start: date, origin: date, check_tenant: str) -> list[PlannedOverride]:
    """Dated price changes inside the loaded days: two global overrides and one of the check tenant.

    Two take effect inside the checked month, so that the check covers both sides
    of a change; each names its own model, so no two overrides compete.
    """
    return [
        PlannedOverride("gpt-4o-mini", "openai", "", origin + timedelta(days=10),
                        Decimal("0.12"), Decimal("0.48"), cache_read_per_mtok=Decimal("0.06")),
        PlannedOverride("claude-sonnet-4", "anthropic", "", month_start + timedelta(days=9),
                        Decimal("2.5"), Decimal("12.5"), cache_read_per_mtok=Decimal("0.25"),
                        cache_write_per_mtok=Decimal("3.125")),
        PlannedOverride("gemini-2.5-flash", "google", check_tenant, month_start + timedelta(days=14),
                        Decimal("0.2"), Decimal("1.75"), reasoning_per_mtok=Decimal("2.5"),
                        call_fee=Decimal("0.0001")),
    ]  # fmt: skip


# The override the reprice measurement adds (global, from the first loaded day): its model's cost changes.
REPRICE_MODEL = BenchModel("gpt-4.1", "openai")
REPRICE_RATES = {"input_per_mtok": Decimal("1.5"), "output_per_mtok": Decimal("6")}
