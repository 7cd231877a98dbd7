"""Freshness: how long after ``track()`` an event is committed, at a steady rate.

The phase runs against a private PostgreSQL started with
``track_commit_timestamp = on``, so each row's commit time is PostgreSQL's own
record (``pg_xact_commit_timestamp(xmin)``; a row written in a SAVEPOINT has
its subtransaction's xid, which gets the commit time of the whole
transaction). ``track()`` sets the event's ``timestamp`` from the same clock
at call time, so ``commit time - timestamp`` is the delay from the call to the
commit: buffering, publishing, the broker, the worker and the transaction.

The producer is paced: every ``PACE_TICK_S`` this process tracks the events
that are due at ``rate`` per second since the start. Only the server is
private: broker, queue, producer and worker are the ones of the other phases.
"""

from __future__ import annotations

import os
import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, text

from bench import harness
from bench.harness import BenchEnv, Reconciliation, RowMonitor, Worker
from bench.ingest import expected_sums, generate_events

PACE_TICK_S = 0.005  # 25 events per tick at 5,000 events/s
FLUSH_TIMEOUT_S = 60.0
# Server settings copied from the shared server, so only commit timestamps differ.
MIRRORED_SETTINGS = ("shared_buffers", "autovacuum", "max_wal_size", "fsync", "synchronous_commit")
US_PER_MS = 1000.0


@dataclass(frozen=True)
class SecondStats:
    """One second of the run (by commit time, from the first ``track()``)."""

    second: int
    committed: int
    p50_ms: float
    p99_ms: float


@dataclass
class FreshnessResult:
    rate_target: float
    events: int
    writer: str
    tracking_seconds: float = 0.0
    delays_ms: list[float] = field(default_factory=list)  # sorted
    per_second: list[SecondStats] = field(default_factory=list)
    reconciliation: Reconciliation | None = None
    track_us_median: float | None = None
    foreign_cores: float = 0.0
    server: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.events / self.tracking_seconds if self.tracking_seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return harness.percentile(self.delays_ms, q)


def _mirrored_settings(shared_engine: Engine) -> dict[str, str]:
    """The shared server's values of ``MIRRORED_SETTINGS``, with units (as ``postgres -c`` takes them)."""
    with shared_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, current_setting(name) FROM unnest(CAST(:names AS text[])) AS name"),
            {"names": list(MIRRORED_SETTINGS)},
        ).all()
    return {name: value for name, value in rows}


def _pace(tracker: Any, events: list[dict[str, Any]], rate: float, durations: array) -> float:
    """Track ``events`` at ``rate`` per second; returns the seconds it took."""
    clock = time.perf_counter_ns
    track = tracker.track
    n = len(events)
    i = 0
    t0 = time.perf_counter()
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            start = clock()
            track(**events[i])
            durations[i] = clock() - start
            i += 1
        time.sleep(PACE_TICK_S)
    return time.perf_counter() - t0


def _delays(engine: Engine, start_us: int) -> tuple[list[float], list[SecondStats]]:
    """Every row's commit delay (ms, sorted) and per-second figures by commit second."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1e6)::bigint,"
                " (extract(epoch FROM timestamp) * 1e6)::bigint FROM analytics_events"
            )
        ).all()
    buckets: dict[int, list[float]] = {}
    delays = []
    for committed_us, tracked_us in rows:
        delay_ms = (committed_us - tracked_us) / US_PER_MS
        delays.append(delay_ms)
        buckets.setdefault((committed_us - start_us) // 1_000_000, []).append(delay_ms)
    per_second = []
    for second in sorted(buckets):
        values = sorted(buckets[second])
        per_second.append(
            SecondStats(
                second=int(second),
                committed=len(values),
                p50_ms=harness.percentile(values, 0.5),
                p99_ms=harness.percentile(values, 0.99),
            )
        )
    delays.sort()
    return delays, per_second


def run_freshness(
    env: BenchEnv,
    shared_engine: Engine,
    rate: float,
    seconds: float,
    concurrency: int,
    rng: random.Random,
    writer: str,
) -> FreshnessResult:
    from config import get_settings
    from devtools.servers import PrivatePostgres
    from producer import Tracker
    from storage.migrate import migrate

    n = int(rate * seconds)
    print(
        f"\n== freshness: track() at a steady {rate:,.0f} events/s for {seconds:.0f}s ({n:,} events),"
        f" writer {writer!r}, private PostgreSQL with track_commit_timestamp=on",
        flush=True,
    )
    events = generate_events(n, rng)
    result = FreshnessResult(rate_target=rate, events=n, writer=writer)
    server_settings = {**_mirrored_settings(shared_engine), "track_commit_timestamp": "on"}
    server = PrivatePostgres(database=env.database_name, settings=server_settings)
    shared_url = os.environ["DATABASE_URL"]
    engine: Engine | None = None
    try:
        server.start()
        private_url = server.url()
        migrate(private_url)
        engine = create_engine(private_url, pool_size=2)
        with engine.connect() as conn:
            result.server = conn.execute(text("SHOW server_version")).scalar_one()
        os.environ["DATABASE_URL"] = private_url  # for the worker, started next
        harness.use_writer(writer)
        durations = array("q", bytes(8 * n))
        with Worker(env, "tasks.app", env.ingest_queue, concurrency, "freshness") as worker:
            tracker = Tracker(get_settings())
            tracker.start()
            try:
                cpu_start = harness.cpu_snapshot()
                t0 = time.perf_counter()
                start_us = time.time_ns() // 1000
                monitor = RowMonitor(
                    engine, "freshness", n, t0,
                    status=lambda: "" if worker.alive() else "WORKER DIED",
                )  # fmt: skip
                monitor.start()
                try:
                    result.tracking_seconds = _pace(tracker, events, rate, durations)
                    if not tracker.flush(timeout=FLUSH_TIMEOUT_S):
                        result.notes.append("tracker.flush() timed out")
                    monitor.join()
                finally:
                    monitor.stop()
                if monitor.error:
                    raise monitor.error
                cpu_end = harness.cpu_snapshot()
                groups = {
                    "bench process": {os.getpid()},
                    "worker": harness.process_group(cpu_end, worker.pgid or 0),
                    "postgres (private)": harness.bench_backend_pids(engine),
                }
                _busy, cores = harness.cpu_breakdown(cpu_start, cpu_end, groups)
                result.foreign_cores = cores["other"] + cores["postgres other"]
                result.notes.append(harness.format_breakdown(cores))
                stats = tracker.stats()
            finally:
                tracker.close(timeout=5)
        if stats.dropped_buffer_full:
            result.notes.append(f"EVENTS REFUSED BY A FULL BUFFER: {stats.dropped_buffer_full}")
        result.delays_ms, result.per_second = _delays(engine, start_us)
        result.reconciliation = harness.reconcile(engine, n, expected_sums(events))
    finally:
        os.environ["DATABASE_URL"] = shared_url
        get_settings.cache_clear()
        if engine is not None:
            engine.dispose()
        server.close()
    ordered = sorted(durations)
    result.track_us_median = harness.percentile(ordered, 0.5) / 1000
    result.notes.insert(
        0,
        f"tracked at {result.achieved_rate:,.0f} events/s; commit delay p50 {result.percentile_ms(0.5):.0f} ms,"
        f" p99 {result.percentile_ms(0.99):.0f} ms, max {result.percentile_ms(1.0):.0f} ms;"
        f" track() median {result.track_us_median:.2f} us",
    )
    for note in result.notes:
        print(f"  [freshness] {note}", flush=True)
    return result
