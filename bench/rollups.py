"""Rollup benchmark: ``python -m bench.rollups [--quick] [--database NAME]``.

In a database of its own (``analytics_bench_rollups`` by default, dropped,
created and migrated at start, left in place for inspection):

1. loads the base table server-side (INSERT .. SELECT generate_series, 1,000
   events per batch with its ``rollup_pending_batches`` row in the same
   statement, exactly what the ingest path leaves behind) spread over 60 days:
   20 tenants, the demo's nine features and three models, 200 users per
   tenant, 3 % errors, lognormal latency; then rolls it all up (timed apart)
   and vacuums (what autovacuum would do);
2. adds 1M events as new batches (the last 10 minutes, 1 % of them late
   events anywhere in the 60 days) and times the incremental rollup:
   ``rollup_1m_s``;
3. grows the table by as much again (same 60 days), rolls it up, vacuums, adds
   another 1M and times it: ``rollup_1m_s_larger_table`` (the cost should
   follow the new rows, not the table);
4. times the per-feature summary (calls, errors, tokens, avg and p50/p95/p99
   latency) of one tenant over the last 30 days, from the rollups
   (queries.rollups, median of repeats) and from raw events (median), and
   checks that both agree (percentiles within the histogram's error).

Ends with ``RESULT rollup_1m_s=.. rollup_1m_s_larger_table=..
summary_rollup_ms=.. summary_raw_ms=..``. The machine may be shared with other
work; figures are noisy, so run it twice when they matter. Exit status 0 when
the answers agree (targets are reported, enforced with ``--strict``: exit 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from config import DEFAULTS, get_settings
from demo.ai import FEATURES, MODELS
from queries.rollups import feature_summary, hour_span, snapshot
from storage.histogram import RELATIVE_ERROR
from storage.migrate import migrate
from storage.partitions import Month, ensure_months
from storage.rollups import run_until_idle

FULL = {"base": 20_000_000, "increment": 1_000_000}
QUICK = {"base": 1_000_000, "increment": 100_000}
TENANTS = 20
USERS_PER_TENANT = 200
ERROR_SHARE = 0.03
LATENCY_LOG_MEAN, LATENCY_LOG_SIGMA = 5.5, 0.6  # the demo's: median ~245 ms
BATCH_EVENTS = DEFAULTS.producer_batch_size  # one ingest message, one batch
SPAN = timedelta(days=60)
INCREMENT_SPAN = timedelta(minutes=10)
LATE_SHARE = 0.01
STATEMENT_BATCHES = 500  # batches per INSERT statement (500k events)
LOAD_JOBS = 2
SUMMARY_WINDOW = timedelta(days=30)
SUMMARY_TENANT = "tenant-01"
ROLLUP_REPEATS, RAW_REPEATS = 21, 3
TARGET_ROLLUP_1M_S = 5.0
TARGET_SAME_WITHIN = 0.25
TARGET_SUMMARY_MS = 20.0
DEFAULT_DATABASE = "analytics_bench_rollups"

# One statement loads whole batches [:first_batch, ..) of events numbered from
# :first_i, and logs each batch with its time bounds, as store_batch would.
LOAD_SQL = f"""
WITH events AS (
    INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id, model,
        input_tokens, output_tokens, tokens_used, latency_ms, status, error_type, batch_id)
    SELECT (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
            || substr(ih, 1, 3) || '8' || substr(ih, 4, 15))::uuid,
           ts, tenant, feature, tenant || '-user-' || u, model,
           inp, CASE WHEN err THEN 0 ELSE outp END, inp + CASE WHEN err THEN 0 ELSE outp END,
           latency, CASE WHEN err THEN 'error' ELSE 'success' END, CASE WHEN err THEN 'timeout' END,
           :first_batch + (i - :first_i) / {BATCH_EVENTS}
    FROM (
        SELECT i,
               CASE WHEN random() < :late_share
                    THEN :late_from + random() * (:late_to - :late_from)
                    ELSE :t0 + (i - :first_i) * (:t1 - :t0) / :n END AS ts,
               lpad(to_hex(i), 18, '0') AS ih,
               'tenant-' || lpad((1 + floor(random() * {TENANTS}))::int::text, 2, '0') AS tenant,
               (CAST(:features AS text[]))[1 + floor(random() * :n_features)::int] AS feature,
               floor(random() * {USERS_PER_TENANT})::int AS u,
               (CAST(:models AS text[]))[1 + floor(random() * :n_models)::int] AS model,
               10 + floor(random() * 1990)::int AS inp,
               20 + floor(random() * 780)::int AS outp,
               exp({LATENCY_LOG_MEAN} + {LATENCY_LOG_SIGMA}
                   * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))::int AS latency,
               random() < {ERROR_SHARE} AS err
        FROM generate_series(:first_i, :first_i + :n - 1) AS i
    ) AS g
    RETURNING batch_id, timestamp
)
INSERT INTO rollup_pending_batches (batch_id, min_ts, max_ts)
SELECT batch_id, min(timestamp), max(timestamp) FROM events GROUP BY batch_id
"""

RAW_SUMMARY_SQL = """
SELECT feature_name, count(*), count(*) FILTER (WHERE status = 'error'), sum(input_tokens),
       sum(output_tokens), sum(tokens_used), avg(latency_ms), min(latency_ms), max(latency_ms),
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)
FROM analytics_events
WHERE tenant_id = :tenant AND timestamp >= :start AND timestamp < :end
GROUP BY feature_name ORDER BY feature_name
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Loader:
    """Loads events in time order, whole batches per statement, on LOAD_JOBS connections.

    ``sql`` is the statement that loads one piece (LOAD_SQL's parameters, plus ``params``,
    which are bound to every piece): another benchmark loads other columns the same way.
    """

    engine: Engine
    next_i: int = 0  # event numbers are unique across loads (they make the event ids)
    sql: str = LOAD_SQL
    params: dict[str, Any] = field(default_factory=dict)

    def reserve_batches(self, count: int) -> int:
        with self.engine.begin() as conn:
            last = conn.execute(
                text(
                    "SELECT setval('rollup_pending_batches_batch_id_seq',"
                    " nextval('rollup_pending_batches_batch_id_seq') + :n - 1)"
                ),
                {"n": count},
            ).scalar_one()
        return int(last) - count + 1

    def load(
        self, events: int, t0: datetime, t1: datetime, late_share: float, late: tuple[datetime, datetime]
    ) -> float:
        batches = -(-events // BATCH_EVENTS)
        first_batch = self.reserve_batches(batches)
        first_i = self.next_i
        self.next_i += batches * BATCH_EVENTS
        step = (t1 - t0) / (batches * BATCH_EVENTS)
        pieces = []
        for start_batch in range(0, batches, STATEMENT_BATCHES):
            n_batches = min(STATEMENT_BATCHES, batches - start_batch)
            offset = start_batch * BATCH_EVENTS
            pieces.append({
                "first_i": first_i + offset, "n": n_batches * BATCH_EVENTS,
                "first_batch": first_batch + start_batch,
                "t0": t0 + step * offset, "t1": t0 + step * (offset + n_batches * BATCH_EVENTS),
                "late_share": late_share, "late_from": late[0], "late_to": late[1],
                "features": list(FEATURES), "n_features": len(FEATURES),
                "models": list(MODELS), "n_models": len(MODELS), **self.params,
            })  # fmt: skip
        started = time.monotonic()
        done = [0]
        lock = threading.Lock()
        errors: list[BaseException] = []

        def work(mine: list[dict[str, Any]]) -> None:
            try:
                for params in mine:
                    with self.engine.begin() as conn:
                        conn.execute(text("SET LOCAL jit = off"))
                        conn.execute(text(self.sql), params)
                    with lock:
                        done[0] += params["n"]
                        if done[0] % 5_000_000 < params["n"] or done[0] == batches * BATCH_EVENTS:
                            rate = done[0] / (time.monotonic() - started)
                            log(f"  loaded {done[0]:>11,} / {batches * BATCH_EVENTS:,} ({rate:,.0f} events/s)")
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        jobs = [threading.Thread(target=work, args=(pieces[j::LOAD_JOBS],)) for j in range(LOAD_JOBS)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join()
        if errors:
            raise errors[0]
        return time.monotonic() - started


def recreate(url: str) -> Engine:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        quoted = conn.dialect.identifier_preparer.quote(target.database or "")
        conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    admin.dispose()
    migrate(url)
    return create_engine(url, pool_size=LOAD_JOBS + 1)


def fresh_database(database: str, span: timedelta) -> tuple[str, Engine, datetime, datetime]:
    """``database`` on the Settings' server dropped and migrated afresh, with the monthly partitions of a load
    spanning ``span`` up to now (and tomorrow): (url, engine, origin, now), now to the second."""
    url = make_url(get_settings().database_url).set(database=database).render_as_string(hide_password=False)
    engine = recreate(url)
    now = datetime.now(UTC).replace(microsecond=0)
    origin = now - span
    with engine.begin() as conn:
        months, month = [], Month.of(origin)
        while month.start <= now + timedelta(days=1):
            months.append(month)
            month = month.shift(1)
        ensure_months(conn, months)
    return url, engine, origin, now


def vacuum(engine: Engine) -> float:
    started = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) analytics_events"))
        conn.execute(text("VACUUM (ANALYZE) rollup_hourly, rollup_daily, rollup_daily_users, rollup_pending_batches"))
    return time.monotonic() - started


def table_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM analytics_events")).scalar_one())


def timed_rollup(engine: Engine, label: str) -> float:
    report = run_until_idle(engine, get_settings().rollup_chunk_batches)
    log(
        f"  {label}: {report.events:,} events of {report.batches:,} batches in {report.chunks}"
        f" chunks, {report.seconds:.2f}s ({report.events / max(report.seconds, 1e-9):,.0f} events/s)"
    )
    return report.seconds


def summaries(engine: Engine, start: datetime, end: datetime) -> tuple[float, float]:
    """Median ms of the tenant's per-feature summary from rollups and from raw; checks they agree."""
    h0, h1 = hour_span(start, end)
    rollup_ms = []
    answer = []
    for _ in range(ROLLUP_REPEATS + 1):  # the first is a warm-up
        t = time.perf_counter()
        with snapshot(engine) as conn:
            answer = feature_summary(conn, SUMMARY_TENANT, start, end)
        rollup_ms.append((time.perf_counter() - t) * 1000)
    raw_ms = []
    raw = []
    for _ in range(RAW_REPEATS):
        t = time.perf_counter()
        with engine.connect() as conn:
            raw = conn.execute(text(RAW_SUMMARY_SQL), {"tenant": SUMMARY_TENANT, "start": h0, "end": h1}).all()
        raw_ms.append((time.perf_counter() - t) * 1000)
    agree = [s.feature_name for s in answer] == [r[0] for r in raw]
    for s, r in zip(answer, raw, strict=False):
        agree &= (s.calls, s.errors, s.input_tokens, s.output_tokens, s.tokens_used) == tuple(r[1:6])
        for estimate, exact in zip((s.latency_p50_ms, s.latency_p95_ms, s.latency_p99_ms), r[9], strict=False):
            agree &= estimate is not None and abs(estimate - exact) <= RELATIVE_ERROR * exact + 1e-9
    if not agree:
        raise SystemExit("bench: the rollup summary does not match the raw events")
    return statistics.median(rollup_ms[1:]), statistics.median(raw_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollups", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M base rows, 100k increments: a smoke run")
    parser.add_argument("--base", type=int, default=None, help="events of the base table (and of the growth)")
    parser.add_argument("--increment", type=int, default=None, help="events added before each timed run")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="bench database (dropped and recreated)")
    parser.add_argument("--strict", action="store_true", help="exit 2 if a target is missed")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    base, increment = args.base or sizes["base"], args.increment or sizes["increment"]
    bench_started = time.monotonic()

    log(f"bench.rollups: database {args.database}, base {base:,}, increments {increment:,}")
    _, engine, origin, now = fresh_database(args.database, SPAN)
    loader = Loader(engine)
    late = (origin, now - INCREMENT_SPAN)
    results: dict[str, float] = {}

    def grow(label: str) -> None:
        log(f"{label}: loading {base:,} events over {SPAN.days} days")
        seconds = loader.load(base, origin, now, 0.0, late)
        log(f"  {seconds:.0f}s ({base / seconds:,.0f} events/s)")
        timed_rollup(engine, "rolled up (not the measured run)")
        log(f"  vacuum analyze: {vacuum(engine):.0f}s; table {table_rows(engine):,} events")

    def step(key: str) -> None:
        end = datetime.now(UTC)
        log(
            f"adding {increment:,} events as {increment // BATCH_EVENTS:,} batches (last 10 min, {LATE_SHARE:.0%} late)"
        )
        loader.load(increment, end - INCREMENT_SPAN, end, LATE_SHARE, late)
        results[key] = timed_rollup(engine, f"incremental rollup [{key}]")

    grow("base")
    step("rollup_1m_s")
    size_small = table_rows(engine)
    summary_small = summaries(engine, now - SUMMARY_WINDOW, now)
    log(f"  summary at {size_small:,} events: rollups {summary_small[0]:.1f} ms, raw {summary_small[1]:.0f} ms")
    grow("grow")
    step("rollup_1m_s_larger_table")
    size_large = table_rows(engine)
    end = datetime.now(UTC)
    summary_rollup_ms, summary_raw_ms = summaries(engine, end - SUMMARY_WINDOW, end)
    day_end = end.replace(hour=0, minute=0, second=0, microsecond=0)
    aligned = summaries(engine, day_end - SUMMARY_WINDOW, day_end)
    engine.dispose()

    small, large = results["rollup_1m_s"], results["rollup_1m_s_larger_table"]
    ratio = large / small if small else float("inf")
    rows = [
        ("rollup_1m_s", f"{small:.2f} s", f"<= {TARGET_ROLLUP_1M_S:g} s", small <= TARGET_ROLLUP_1M_S),
        ("rollup_1m_s_larger_table", f"{large:.2f} s", f"within {TARGET_SAME_WITHIN:.0%} of the first",
         abs(ratio - 1) <= TARGET_SAME_WITHIN),
        ("summary_rollup_ms", f"{summary_rollup_ms:.1f} ms", f"<= {TARGET_SUMMARY_MS:g} ms",
         summary_rollup_ms <= TARGET_SUMMARY_MS),
        ("summary_raw_ms", f"{summary_raw_ms:.0f} ms", "(reference)", True),
    ]  # fmt: skip
    print()
    print(
        f"table: {size_small:,} events for the first run, {size_large:,} for the second"
        f" (x{size_large / size_small:.2f}); second/first rollup time x{ratio:.2f}"
    )
    print(
        f"summary: tenant {SUMMARY_TENANT}, last 30 days; same at {size_small:,} events:"
        f" {summary_small[0]:.1f} ms rollups / {summary_small[1]:.0f} ms raw;"
        f" 30 whole days: {aligned[0]:.1f} ms / {aligned[1]:.0f} ms"
    )
    print(f"{'figure':<28}{'value':>12}  {'target':<28}ok")
    for name, value, target, ok in rows:
        print(f"{name:<28}{value:>12}  {target:<28}{'yes' if ok else 'NO'}")
    print(f"bench time {time.monotonic() - bench_started:.0f}s")
    print(
        f"RESULT rollup_1m_s={small:.2f} rollup_1m_s_larger_table={large:.2f}"
        f" summary_rollup_ms={summary_rollup_ms:.1f} summary_raw_ms={summary_raw_ms:.0f}"
    )
    missed = not all(ok for *_, ok in rows)
    return 2 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
