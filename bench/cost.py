"""Cost benchmark: ``python -m bench.cost [--quick] [--database NAME] [--strict]``.

In a database of its own (``analytics_bench_cost`` by default, dropped, created
and migrated at start, left in place for inspection):

1. loads 20M events over 60 days (bench.cost_data: 1,000 skewed tenants, 100
   users each, the demo's features, 23 catalog models of 7 providers (flat,
   dated, tiered at 200K with some requests above it, time-of-day) and one
   model nothing prices, with cache reads/writes and reasoning tokens as the
   GenAI conventions count them) the way bench.rollups does, rolls them up and
   vacuums;
2. materializes the rates of every pair and sets three dated overrides inside
   the 60 days (two global, one of the check tenant) through
   ``pricing.overrides.set_override``, the function the API and the CLI use;
   the catalog's own dated changes in range (mistral-large-4, openai/gpt-4o and
   google/gemini-2.5-pro on openrouter, gemini-4-argon) come on top; then
   analyzes the price tables (as autovacuum soon would);
3. times, warm, median of repeats: the 30-day per-feature cost of the largest
   tenant (``queries.cost.cost_by(.., "feature")`` in a snapshot, as the API
   reads it): ``cost_summary_ms``; the ranking of the 1,000 tenants by 30-day
   cost (``tenants_by_cost``): ``tenants_cost_ms``;
4. checks one tenant-month (the last whole calendar month, a small tenant that
   has its own override) of ``cost_by(.., "total")`` against its raw events
   priced one by one (bench.cost_check: ``genai_prices.calc_price`` at each
   event's time, or the bench's override in force, from its own fields):
   ``cost_mismatch_usd`` (and the API's unpriced calls against the events of
   the unpriced model), per model; and, as a reference, against the same
   events priced at the start of their UTC hour, the rollups' finest grain
   (time-of-day prices that change at half past cannot be exact from hourly
   sums; the API flags those cells approximate): ``cost_mismatch_hour_grain_usd``;
5. starts the Procfile's web process on a spare port and measures the time
   from a new global override (``set_override``, committed) until
   ``GET /api/tenants/{t}/cost`` answers the new cost: ``reprice_visible_s``.

Ends with ``RESULT cost_summary_ms=.. tenants_cost_ms=.. reprice_visible_s=..
cost_mismatch_usd=.. cost_mismatch_hour_grain_usd=..``. Exit status 0 when it ran to the end; the targets are
reported, enforced with ``--strict`` (exit 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench import cost_check
from bench.cost_data import (
    BENCH_MODELS,
    LOAD_SQL,
    REPRICE_MODEL,
    REPRICE_RATES,
    TENANTS,
    PlannedOverride,
    load_params,
    planned_overrides,
    tenant_name,
)
from bench.rollups import Loader, fresh_database, log, table_rows, timed_rollup, vacuum
from queries.cost import cost_by, tenants_by_cost
from queries.rollups import snapshot
from storage.partitions import Month

FULL_EVENTS = 20_000_000
QUICK_EVENTS = 1_000_000
SPAN = timedelta(days=60)
WINDOW = timedelta(days=30)
SUMMARY_TENANT = tenant_name(1)  # the largest (cost_data's skew)
CHECK_TENANT = tenant_name(TENANTS)  # the smallest: its month is priced event by event in Python
SUMMARY_REPEATS, TENANTS_REPEATS = 21, 5  # plus one warm-up each
TARGET_SUMMARY_MS = 20.0
TARGET_TENANTS_MS = 100.0
TARGET_REPRICE_S = 1.0
TARGET_MISMATCH_USD = 0.0
REPRICE_TIMEOUT_S = 60.0
DEFAULT_DATABASE = "analytics_bench_cost"
OVERRIDE_REASON = "bench.cost"


# --- verdicts (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    shown: str
    target: str
    ok: bool | None  # None: a reference, no target


def figure_rows(values: dict[str, float]) -> list[Figure]:
    """The figures beside their targets (also the suite's reading of the RESULT line)."""
    summary, tenants = values["cost_summary_ms"], values["tenants_cost_ms"]
    reprice, mismatch = values["reprice_visible_s"], values["cost_mismatch_usd"]
    hour_grain = values.get("cost_mismatch_hour_grain_usd")
    reference = [] if hour_grain is None else [
        Figure("cost_mismatch_hour_grain_usd", hour_grain, f"${hour_grain:g}",
               "reference: events priced at their hour's start", None),
    ]  # fmt: skip
    return [
        Figure("cost_summary_ms", summary, f"{summary:.1f} ms", f"<= {TARGET_SUMMARY_MS:g} ms",
               summary <= TARGET_SUMMARY_MS),
        Figure("tenants_cost_ms", tenants, f"{tenants:.1f} ms", f"<= {TARGET_TENANTS_MS:g} ms",
               tenants <= TARGET_TENANTS_MS),
        Figure("reprice_visible_s", reprice, f"{reprice:.3f} s", f"<= {TARGET_REPRICE_S:g} s",
               reprice <= TARGET_REPRICE_S),
        Figure("cost_mismatch_usd", mismatch, f"${mismatch}", f"== {TARGET_MISMATCH_USD:g}",
               mismatch == TARGET_MISMATCH_USD),
        *reference,
    ]  # fmt: skip


def result_line(summary_ms: float, tenants_ms: float, reprice_s: float, mismatch_usd: Decimal,
                hour_grain_usd: Decimal | None = None) -> str:  # fmt: skip
    """The RESULT line; the mismatches are printed exactly (Decimals), the times rounded."""
    line = (
        f"RESULT cost_summary_ms={summary_ms:.1f} tenants_cost_ms={tenants_ms:.1f}"
        f" reprice_visible_s={reprice_s:.3f} cost_mismatch_usd={format(mismatch_usd, 'f')}"
    )
    return line if hour_grain_usd is None else f"{line} cost_mismatch_hour_grain_usd={format(hour_grain_usd, 'f')}"


def last_whole_month(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) before the one of ``now``: the check's tenant-month."""
    first = Month.of(now).shift(-1)
    return first.start, first.shift(1).start


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# --- steps ---------------------------------------------------------------------------------


def set_prices(engine: Engine, overrides: list[PlannedOverride]) -> float:
    """Materialize every pair's rates, then set the planned overrides; seconds taken."""
    from pricing.overrides import parse_override, set_override
    from pricing.rates import ensure_priced

    started = time.monotonic()
    with Session(engine) as session, session.begin():
        ensure_priced(session, [(m.model, m.provider) for m in BENCH_MODELS])
    for planned in overrides:
        with Session(engine) as session, session.begin():
            set_override(session, parse_override(override_fields(planned)))
    seconds = time.monotonic() - started
    # What autovacuum does soon after: without statistics the planner takes the rate table for one row.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE cost_rates, cost_rate_scopes, priced_models"))
    return seconds


def override_fields(planned: PlannedOverride) -> dict[str, Any]:
    """The override as the API and the CLI pass it to pricing.overrides.parse_override."""
    fields: dict[str, Any] = {
        "model_pattern": planned.model, "provider": planned.provider, "tenant_id": planned.tenant,
        "effective_from": planned.effective_from.isoformat(), "input_per_mtok": str(planned.input_per_mtok),
        "output_per_mtok": str(planned.output_per_mtok), "call_fee": str(planned.call_fee),
        "reason": OVERRIDE_REASON, "set_by": OVERRIDE_REASON,
    }  # fmt: skip
    for name in ("cache_read_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok"):
        value = getattr(planned, name)
        if value is not None:
            fields[name] = str(value)
    return fields


def time_queries(engine: Engine, start: datetime, end: datetime) -> tuple[float, float]:
    def summary() -> object:
        with snapshot(engine) as conn:
            return cost_by(conn, SUMMARY_TENANT, start, end, "feature")

    def ranking() -> object:
        with snapshot(engine) as conn:
            return tenants_by_cost(conn, start, end, TENANTS)

    return median_ms(summary, SUMMARY_REPEATS), median_ms(ranking, TENANTS_REPEATS)


def check_month(engine: Engine, overrides: list[PlannedOverride], now: datetime) -> tuple[Decimal, Decimal]:
    """The tenant-month check (see the module docstring); prints the per-model lines.

    Returns |API - events| and |API - events priced at their hour's start|.
    """
    start, end = last_whole_month(now)
    with snapshot(engine) as conn:
        total = cost_by(conn, CHECK_TENANT, start, end, "total")
        by_model = cost_by(conn, CHECK_TENANT, start, end, "model")
    with engine.connect() as conn:
        started = time.monotonic()
        events = cost_check.price_events(conn, CHECK_TENANT, start, end, overrides)
        seconds = time.monotonic() - started
        hourly = cost_check.price_events(conn, CHECK_TENANT, start, end, overrides, at_hour_start=True)
    api_total = total[0] if total else None
    mismatch = cost_check.mismatch_usd(api_total, events)
    api_unpriced = api_total.unpriced_calls if api_total else 0
    log(f"check: {CHECK_TENANT}, {start:%Y-%m}: {events.calls:,} events priced one by one in {seconds:.1f}s;"
        f" API ${format(api_total.cost_usd, 'f') if api_total and api_total.cost_usd is not None else None},"
        f" events ${format(events.cost_usd, 'f')}; unpriced calls API {api_unpriced:,} /"
        f" events {events.unpriced_calls:,}")  # fmt: skip
    for line in cost_check.compare(by_model, events):
        if line.mismatch_usd or line.api_unpriced_calls != line.events_unpriced_calls:
            log(f"  {line.model}: API {line.api_cost_usd} events {line.events_cost_usd}"
                f" (|diff| {line.mismatch_usd}{', API says approximate' if line.approximate else ''});"
                f" unpriced API {line.api_unpriced_calls} events {line.events_unpriced_calls}")  # fmt: skip
    hour_grain = cost_check.mismatch_usd(api_total, hourly)
    log(f"  events priced at the start of their hour (the rollups' grain): ${format(hourly.cost_usd, 'f')},"
        f" |API - that| ${format(hour_grain, 'f')}")  # fmt: skip
    if api_unpriced != events.unpriced_calls:
        raise SystemExit(f"bench: the API counts {api_unpriced} unpriced calls, the events {events.unpriced_calls}")
    return mismatch, hour_grain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events: a smoke run")
    parser.add_argument("--events", type=int, default=None, help="events to load over the 60 days")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="bench database (dropped and recreated)")
    parser.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    args = parser.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    bench_started = time.monotonic()

    log(f"bench.cost: database {args.database}, {events:,} events over {SPAN.days} days, {TENANTS:,} tenants")
    url, engine, origin, now = fresh_database(args.database, SPAN)
    loader = Loader(engine, sql=LOAD_SQL, params=load_params())
    seconds = loader.load(events, origin, now, 0.0, (origin, now))
    log(f"  loaded in {seconds:.0f}s ({events / seconds:,.0f} events/s)")
    timed_rollup(engine, "rolled up")
    log(f"  vacuum analyze: {vacuum(engine):.0f}s; table {table_rows(engine):,} events")

    month_start, _ = last_whole_month(now)
    overrides = planned_overrides(month_start.date(), (origin + timedelta(days=1)).date(), CHECK_TENANT)
    log(f"prices: rates of {len(BENCH_MODELS)} pairs and {len(overrides)} overrides in"
        f" {set_prices(engine, overrides):.1f}s")  # fmt: skip
    for o in overrides:
        log(f"  override {o.model} ({o.provider}) from {o.effective_from} for {o.tenant or 'every tenant'}")
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT count(*) FROM cost_rates")).scalar_one()
    log(f"  cost_rates: {rows:,} rows")

    summary_ms, tenants_ms = time_queries(engine, now - WINDOW, now)
    log(f"cost_by(feature) of {SUMMARY_TENANT}: {summary_ms:.1f} ms; tenants_by_cost: {tenants_ms:.1f} ms")
    mismatch, hour_grain = check_month(engine, overrides, now)

    from bench.cost_web import reprice_visible

    workdir = Path(tempfile.mkdtemp(prefix="bench-cost-"))
    reprice_from = (origin + timedelta(days=1)).date()
    reprice_s = reprice_visible(engine, url, workdir, SUMMARY_TENANT, now - WINDOW, now,
                                lambda session: _reprice(session, reprice_from), REPRICE_TIMEOUT_S)  # fmt: skip
    log(f"reprice: {reprice_s:.3f}s from set_override to the API's new cost (logs in {workdir})")
    engine.dispose()

    values = {"cost_summary_ms": summary_ms, "tenants_cost_ms": tenants_ms, "reprice_visible_s": reprice_s,
              "cost_mismatch_usd": float(mismatch), "cost_mismatch_hour_grain_usd": float(hour_grain)}  # fmt: skip
    figures = figure_rows(values)
    print()
    print(f"{'figure':<30}{'value':>16}  {'target':<46}ok")
    for fig in figures:
        verdict = "-" if fig.ok is None else "yes" if fig.ok else "NO"
        print(f"{fig.name:<30}{fig.shown:>16}  {fig.target:<46}{verdict}")
    print(f"bench time {time.monotonic() - bench_started:.0f}s")
    print(result_line(summary_ms, tenants_ms, reprice_s, mismatch, hour_grain))
    missed = any(fig.ok is False for fig in figures)
    return 2 if args.strict and missed else 0


def _reprice(session: Session, effective_from: date) -> None:
    from pricing.overrides import parse_override, set_override

    fields = {"model_pattern": REPRICE_MODEL.model, "provider": REPRICE_MODEL.provider,
              "effective_from": effective_from.isoformat(), "reason": OVERRIDE_REASON, "set_by": OVERRIDE_REASON,
              **{name: str(value) for name, value in REPRICE_RATES.items()}}  # fmt: skip
    set_override(session, parse_override(fields))


if __name__ == "__main__":
    sys.exit(main())
