"""Ingest benchmark: ``python -m bench.ingest [--quick] [--events N] [--broker-url URL]``.

Measures, side by side in one run, on a database and queues of its own:

1. naive_eps: the seed's naive path, ORM ``session.add(AnalyticsEvent(...))`` +
   ``session.commit()`` per event, in this process.
2. per_event_celery_eps: one Celery task per event (``bench.per_event``): this
   process calls ``apply_async`` per event (project broker settings, so
   publisher confirms on RabbitMQ), a worker subprocess inserts each row with
   ORM add + commit; timed from the first publish until the last row committed.
   apply_async_us is the median cost of one ``apply_async`` call here.
3. pipeline_eps: the real pipeline: ``producer.Tracker.track()`` in this process
   (micro-batches published by its background thread) and a ``celery -A
   tasks.app worker`` subprocess on the ingest queue; timed from the first
   ``track()`` until the last row is committed (``count(*)`` polled every 0.2 s,
   so the figure is pessimistic by at most one poll). track_us is the median
   cost of one ``track()`` call measured with ``perf_counter_ns`` around each
   call during this same run (so it includes the GIL contention with the
   publishing thread, and the timer's own ~0.1 us).

The tracking loop applies backpressure itself: when ``stats().buffered`` passes
a threshold it sleeps briefly, so no event is ever refused (asserted:
``dropped_buffer_full == 0``). Each phase is reconciled against what was sent
(lost, duplicated, dead letters, token and error sums).

The bench database (``analytics_bench`` on the DATABASE_URL server by default)
is dropped, created and migrated with Alembic at start, and left in place for
inspection. Queues are ``bench-ingest-<run>`` and ``bench-per-event-<run>``,
deleted at the end. Workers run in their own process groups and are killed as
a group at the end, on Ctrl-C and on errors.

Exit status: 0 if every phase reconciles (performance targets are reported,
and enforced only with ``--strict``: exit 2 if one is missed), 1 if events were
lost, duplicated, dead-lettered, altered or refused, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
import traceback
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import harness
from bench.harness import BenchEnv, Reconciliation, RowMonitor, Worker
from demo.ai import FEATURES  # the demo's features: the benchmark's load looks like ./run's

TENANTS = tuple(f"tenant-{i:02d}" for i in range(1, 21))
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-haiku", "claude-sonnet", "llama-3-8b")
ERROR_TYPES = ("timeout", "rate_limited", "provider_error", "content_filtered")
USERS_PER_TENANT = 250
ERROR_RATE = 0.03

# Targets (10,000+ events/s at peak, 200,000 events, a cheap track()) and the baselines measured on this
# machine kind before the project existed (its naive path, one Celery task per event, apply_async's cost).
TARGET_PIPELINE_EPS = 10_000
TARGET_PIPELINE_EVENTS = 200_000
TARGET_SPEEDUP = 10
TARGET_TRACK_US = 15.0

NOISY_CORES = 0.25  # warn when other processes took this much CPU during a phase

BACKPRESSURE_BUFFERED = 20_000  # pause tracking above this many buffered events
BACKPRESSURE_CHECK_EVERY = 256  # track() calls between two stats() checks
BACKPRESSURE_SLEEP_S = 0.002

FULL = {"events": 200_000, "naive": 5_000, "per_event": 10_000}
QUICK = {"events": 20_000, "naive": 1_000, "per_event": 2_000}
DEFAULT_CONCURRENCY = 3  # the Procfile's WORKER_CONCURRENCY (threads)
PER_EVENT_CONCURRENCY = 2  # the seed's worker: Celery's default prefork pool, a process per core


# --- workload --------------------------------------------------------------------


def generate_events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``track()`` keyword arguments of ``n`` AI calls (ids and times come later)."""
    users = {t: [f"{t}-user-{u:04d}" for u in range(USERS_PER_TENANT)] for t in TENANTS}
    events = []
    for _ in range(n):
        tenant = rng.choice(TENANTS)
        failed = rng.random() < ERROR_RATE
        events.append(
            {
                "tenant_id": tenant,
                "feature_name": rng.choice(FEATURES),
                "user_id": rng.choice(users[tenant]),
                "model": rng.choice(MODELS),
                "input_tokens": rng.randint(20, 4_000),
                "output_tokens": 0 if failed else rng.randint(10, 1_500),
                "latency_ms": rng.randint(30, 30_000) if failed else rng.randint(40, 8_000),
                "status": "error" if failed else "success",
                "error_type": rng.choice(ERROR_TYPES) if failed else None,
            }
        )
    return events


def expected_sums(events: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "input_tokens": sum(e["input_tokens"] for e in events),
        "output_tokens": sum(e["output_tokens"] for e in events),
        "errors": sum(e["status"] == "error" for e in events),
    }


# --- results -----------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    events: int
    seconds: float | None = None  # first send .. last row committed (None: never completed)
    reconciliation: Reconciliation | None = None
    notes: list[str] = field(default_factory=list)
    call_us_median: float | None = None  # track() or apply_async()
    call_us_p99: float | None = None
    foreign_cores: float = 0.0  # CPU taken by processes outside the run, on average
    refused: int = 0  # events track() refused (buffer full)
    writer: str | None = None  # the pipeline worker's INGEST_WRITER
    t0: float | None = None  # perf_counter() of the first send
    samples: list[tuple[float, int]] = field(default_factory=list)  # (perf_counter, rows stored)

    @property
    def eps(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.events / self.seconds


def _call_stats(durations_ns: array) -> tuple[float, float, float]:
    ordered = sorted(durations_ns)
    return (
        harness.percentile(ordered, 0.5) / 1000,
        harness.percentile(ordered, 0.9) / 1000,
        harness.percentile(ordered, 0.99) / 1000,
    )


# --- phase 1: naive ORM add + commit per event -----------------------------------------


def run_naive(env: BenchEnv, engine: Any, n: int, rng: random.Random) -> PhaseResult:
    from sqlalchemy.orm import Session

    from models import AnalyticsEvent

    print(f"\n== naive: ORM add + commit per event, {n:,} events (this process)", flush=True)
    events = generate_events(n, rng)
    extras = harness.baseline_row_extras()
    harness.truncate_events(engine)
    cpu_start = harness.cpu_snapshot()
    t0 = last_print = time.perf_counter()
    for i, event in enumerate(events, 1):
        with Session(engine) as session:
            session.add(
                AnalyticsEvent(
                    event_id=uuid.uuid4(),
                    timestamp=datetime.now(UTC),
                    tokens_used=event["input_tokens"] + event["output_tokens"],
                    **event,
                    **extras,
                )
            )
            session.commit()
        if i % 100 == 0 and (now := time.perf_counter()) - last_print >= 1.0:
            print(f"  [naive] {now - t0:6.1f}s  stored {i:>9,}/{n:,}  {i / (now - t0):>8,.0f} rows/s", flush=True)
            last_print = now
    seconds = time.perf_counter() - t0
    result = PhaseResult("naive", n, seconds)
    cpu_note, result.foreign_cores = _cpu_note(cpu_start, engine, None)
    result.notes.append(cpu_note)
    result.reconciliation = harness.reconcile(engine, n, expected_sums(events))
    print(f"  [naive] done: {n:,} events in {seconds:.2f}s = {result.eps:,.0f} events/s", flush=True)
    for note in result.notes:
        print(f"  [naive] {note}", flush=True)
    return result


# --- phase 2: one Celery task per event -------------------------------------------------


def run_per_event(env: BenchEnv, engine: Any, n: int, concurrency: int, rng: random.Random) -> PhaseResult:
    from bench.per_event import insert_one

    print(
        f"\n== per-event Celery: apply_async per event, worker -c {concurrency} inserts each"
        f" (ORM add + commit), {n:,} events",
        flush=True,
    )
    events = generate_events(n, rng)
    for event in events:
        event["event_id"] = uuid.uuid4().hex
    harness.truncate_events(engine)
    result = PhaseResult("per_event_celery", n)
    durations = array("q", bytes(8 * n))
    # The seed's setup: Celery's default pool.
    with Worker(env, "bench.per_event", env.per_event_queue, concurrency, "per-event", pool="prefork") as worker:
        published = [0]
        cpu_start = harness.cpu_snapshot()
        t0 = time.perf_counter()
        monitor = RowMonitor(
            engine, "per-event", n, t0,
            status=lambda: f"published {published[0]:,}" + ("" if worker.alive() else "  WORKER DIED"),
        )  # fmt: skip
        monitor.start()
        clock = time.perf_counter_ns
        apply_async = insert_one.apply_async
        try:
            for i, event in enumerate(events):
                event["timestamp_us"] = time.time_ns() // 1000
                start = clock()
                apply_async(args=[event])
                durations[i] = clock() - start
                published[0] = i + 1
            t_published = time.perf_counter()
            monitor.join()
        finally:
            monitor.stop()
        if monitor.error:
            raise monitor.error
        cpu_note, result.foreign_cores = _cpu_note(cpu_start, engine, worker)
        if monitor.done_at is not None:
            result.seconds = monitor.done_at - t0
        else:
            result.notes.append(f"only {monitor.last_count:,} of {n:,} rows arrived")
    median, p90, p99 = _call_stats(durations)
    result.call_us_median, result.call_us_p99 = median, p99
    result.notes.append(
        f"publishing alone: {n / (t_published - t0):,.0f} events/s;"
        f" apply_async median {median:.0f} us, p90 {p90:.0f} us, p99 {p99:.0f} us"
    )
    result.notes.append(cpu_note)
    result.reconciliation = harness.reconcile(engine, n, expected_sums(events))
    if result.eps is not None:
        print(f"  [per-event] done: {n:,} events in {result.seconds:.2f}s = {result.eps:,.0f} events/s", flush=True)
    for note in result.notes:
        print(f"  [per-event] {note}", flush=True)
    return result


# --- phase 3: the pipeline ------------------------------------------------------------------


@dataclass
class TrackingRun:
    """What ``track_events`` did: the bench's own backpressure and the refusals."""

    refused: int = 0
    backpressure_sleeps: int = 0


def track_events(tracker: Any, events: list[dict[str, Any]], durations: array, tracked: list[int]) -> TrackingRun:
    """``track()`` every event as fast as the producer takes them, timing each call.

    The loop applies backpressure itself (sleeps while more than
    ``BACKPRESSURE_BUFFERED`` events wait in the buffer), so that a producer
    faster than its publishing thread never fills the buffer: nothing is refused.
    ``tracked[0]`` follows the progress, for status lines.
    """
    run = TrackingRun()
    clock = time.perf_counter_ns
    track = tracker.track
    stats = tracker.stats
    for i, event in enumerate(events):
        if i % BACKPRESSURE_CHECK_EVERY == 0:
            tracked[0] = i
            while stats().buffered > BACKPRESSURE_BUFFERED:
                run.backpressure_sleeps += 1
                time.sleep(BACKPRESSURE_SLEEP_S)
        start = clock()
        accepted = track(**event)
        durations[i] = clock() - start
        if not accepted:
            run.refused += 1
    tracked[0] = len(events)
    return run


def run_pipeline(
    env: BenchEnv,
    engine: Any,
    n: int,
    concurrency: int,
    rng: random.Random,
    *,
    writer: str | None = None,
    label: str = "pipeline",
    events: list[dict[str, Any]] | None = None,
) -> PhaseResult:
    """The real pipeline at full speed; ``writer`` overrides INGEST_WRITER for its worker,
    ``events`` (``generate_events`` output) the workload, so a caller can reuse it."""
    from config import get_settings
    from producer import Tracker

    if writer is not None:
        harness.use_writer(writer)
    settings = get_settings()
    writer = getattr(settings, "ingest_writer", "bulk")
    print(
        f"\n== {label}: track() -> micro-batches of {settings.producer_batch_size} -> "
        f"worker -c {concurrency} on {settings.ingest_queue} -> writer {writer!r}, {n:,} events",
        flush=True,
    )
    if events is None:
        print("  generating events ...", flush=True)
        events = generate_events(n, rng)
    n = len(events)
    expected = expected_sums(events)
    harness.truncate_events(engine)
    result = PhaseResult(label, n, writer=writer)
    durations = array("q", bytes(8 * n))
    with Worker(env, "tasks.app", env.ingest_queue, concurrency, "ingest") as worker:
        tracker = Tracker(settings)
        tracked = [0]

        def status() -> str:
            stats = tracker.stats()
            return f"tracked {tracked[0]:,}  buffered {stats.buffered:,}  published {stats.published:,}" + (
                "" if worker.alive() else "  WORKER DIED"
            )

        cpu_start = harness.cpu_snapshot()
        t0 = time.perf_counter()
        monitor = RowMonitor(engine, label, n, t0, status=status)
        monitor.start()
        try:
            tracking = track_events(tracker, events, durations, tracked)
            refused, backpressure_sleeps = tracking.refused, tracking.backpressure_sleeps
            t_tracked = time.perf_counter()
            flushed = tracker.flush(timeout=120)
            t_flushed = time.perf_counter()
            monitor.join()
            if monitor.error:
                raise monitor.error
            cpu_note, result.foreign_cores = _cpu_note(cpu_start, engine, worker)
            final = tracker.stats()
        finally:
            monitor.stop()
            # On an error or Ctrl-C, don't wait on a broker whose queue is about to go.
            tracker.close(timeout=5 if monitor.done_at is not None else 0)
        result.t0, result.samples = t0, monitor.samples
        if monitor.done_at is not None:
            result.seconds = monitor.done_at - t0
        else:
            result.notes.append(f"only {monitor.last_count:,} of {n:,} rows arrived")
        if not flushed:
            result.notes.append("tracker.flush() timed out")
    median, p90, p99 = _call_stats(durations)
    result.call_us_median, result.call_us_p99 = median, p99
    result.notes.append(
        f"tracking: {n / (t_tracked - t0):,.0f} calls/s incl. backpressure"
        f" ({backpressure_sleeps:,} sleeps of {BACKPRESSURE_SLEEP_S * 1000:.0f} ms);"
        f" all published after {t_flushed - t0:.2f}s"
    )
    result.notes.append(f"track() median {median:.2f} us, p90 {p90:.2f} us, p99 {p99:.2f} us")
    if monitor.done_at is not None and monitor.done_at > t_flushed and t_flushed - t0 >= 1.0:
        stored_then = monitor.count_at(t_flushed)
        result.notes.append(
            f"worker while this process was tracking/publishing: {stored_then / (t_flushed - t0):,.0f} rows/s;"
            f" draining the rest ({n - stored_then:,} rows) afterwards:"
            f" {(n - stored_then) / (monitor.done_at - t_flushed):,.0f} rows/s"
        )
    result.notes.append(
        f"producer stats: published {final.published:,}, dropped_buffer_full {final.dropped_buffer_full},"
        f" publish_failures {final.publish_failures}, spooled {getattr(final, 'spooled', 0)},"
        f" refused by track() {refused}"
    )
    result.notes.append(
        f"count(*) polls: {monitor.polls}, {1000 * monitor.poll_seconds / max(monitor.polls, 1):.1f} ms each"
    )
    result.notes.append(cpu_note)
    result.reconciliation = harness.reconcile(engine, n, expected)
    if final.dropped_buffer_full or refused:
        result.notes.append("EVENTS REFUSED BY A FULL BUFFER")
    result.refused = max(final.dropped_buffer_full, refused)
    if result.eps is not None:
        print(f"  [{label}] done: {n:,} events in {result.seconds:.2f}s = {result.eps:,.0f} events/s", flush=True)
    for note in result.notes:
        print(f"  [{label}] {note}", flush=True)
    return result


def _cpu_note(start: harness.CpuSnapshot, engine: Any, worker: Worker | None) -> tuple[str, float]:
    """Where the machine's CPU went from ``start`` until now (call before the worker stops).

    Returns the line to print and the cores used by processes outside the run
    ('other' and other databases' or the server's background postgres work).
    """
    end = harness.cpu_snapshot()
    groups = {"bench process": {os.getpid()}}
    if worker is not None and worker.pgid is not None:
        groups["worker"] = harness.process_group(end, worker.pgid)
    groups["postgres (bench db)"] = harness.bench_backend_pids(engine)
    _busy, cores = harness.cpu_breakdown(start, end, groups)
    return harness.format_breakdown(cores), cores["other"] + cores["postgres other"]


# --- report -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[ok]


def report(results: dict[str, PhaseResult], concurrency: int, env: BenchEnv) -> tuple[bool, bool]:
    """Print the tables; returns (correct, targets_met)."""
    naive = results.get("naive")
    per_event = results.get("per_event_celery")
    pipeline = results.get("pipeline")
    p_eps = pipeline.eps if pipeline else None
    n_eps = naive.eps if naive else None
    speedup = p_eps / n_eps if p_eps and n_eps else None
    rec = pipeline.reconciliation if pipeline else None

    rows: list[tuple[str, str, str, str]] = []
    sustained = pipeline is not None and pipeline.events >= TARGET_PIPELINE_EVENTS
    rows.append((
        "pipeline_eps", _fmt(p_eps),
        f">= {TARGET_PIPELINE_EPS:,} over >= {TARGET_PIPELINE_EVENTS:,} events",
        _verdict(None if p_eps is None else (p_eps >= TARGET_PIPELINE_EPS and sustained) if sustained
                 else None),
    ))  # fmt: skip
    if pipeline and not sustained:
        rows[-1] = (*rows[-1][:3], f"{'ok' if p_eps and p_eps >= TARGET_PIPELINE_EPS else 'low'} (short run)")
    rows.append(
        (
            "pipeline / naive",
            _fmt(speedup, ".1f") + "x" if speedup else "n/a",
            f">= {TARGET_SPEEDUP}x",
            _verdict(None if speedup is None else speedup >= TARGET_SPEEDUP),
        )
    )
    rows.append(("naive_eps", _fmt(n_eps), "baseline (before the project: ~900)", "-"))
    rows.append(
        (
            "per_event_celery_eps",
            _fmt(per_event.eps if per_event else None),
            "baseline (before the project: 700-2,600)",
            "-",
        )
    )
    track_us = pipeline.call_us_median if pipeline else None
    rows.append(
        (
            "track_us (median)",
            _fmt(track_us, ".2f"),
            f"<= {TARGET_TRACK_US:g}",
            _verdict(None if track_us is None else track_us <= TARGET_TRACK_US),
        )
    )
    apply_us = per_event.call_us_median if per_event else None
    rows.append(("apply_async_us (median)", _fmt(apply_us, ".0f"), "baseline (before the project: 500-900)", "-"))
    rows.append(
        ("lost (pipeline)", _fmt(rec.lost if rec else None, "d"), "0", _verdict(None if rec is None else rec.lost == 0))
    )
    rows.append(
        (
            "duplicated (pipeline)",
            _fmt(rec.duplicated if rec else None, "d"),
            "0",
            _verdict(None if rec is None else rec.duplicated == 0),
        )
    )

    from config import get_settings

    writer = getattr(get_settings(), "ingest_writer", "bulk")
    print(
        f"\n== results (pipeline worker concurrency {concurrency}, writer {writer}, broker"
        f" {_broker_name(env.broker_url)}, database {env.database_name})"
    )
    widths = (24, 12, 44, 16)
    header = ("figure", "measured", "target / baseline", "verdict")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  "
            + row[0].ljust(widths[0])
            + "  "
            + row[1].rjust(widths[1])
            + "  "
            + row[2].ljust(widths[2])
            + "  "
            + row[3]
        )

    print("\n== reconciliation (per phase: sent vs stored)")
    cols = ("phase", "sent", "rows", "distinct ids", "lost", "duplicated", "dead letters", "sums", "seconds")
    cw = (18, 9, 9, 12, 6, 10, 12, 6, 8)
    print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, cw, strict=False))))
    correct = True
    for phase in results.values():
        r = phase.reconciliation
        if r is None:
            continue
        correct &= r.ok and phase.seconds is not None and not phase.refused
        values = (
            phase.name,
            f"{r.sent:,}",
            f"{r.rows:,}",
            f"{r.distinct_ids:,}",
            str(r.lost),
            str(r.duplicated),
            str(r.dead_letters),
            "ok" if r.content_ok else "DIFF",
            _fmt(phase.seconds, ".2f"),
        )
        print(
            "  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, cw, strict=False)))
        )
    noisy = [(p.name, p.foreign_cores) for p in results.values() if p.foreign_cores >= NOISY_CORES]
    if noisy:
        print(
            "\n  WARNING: processes outside this run used CPU during "
            + ", ".join(f"{name} ({cores:.2f} cores on average)" for name, cores in noisy)
            + f" of the {os.cpu_count()} the run measures; its figures understate what this"
            " machine does when it runs only this system."
        )
    targets_met = all(row[3] in ("PASS", "-") for row in rows)
    return correct, targets_met


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _broker_name(url: str) -> str:
    return "Redis" if url.startswith(("redis://", "rediss://")) else "RabbitMQ"


def result_line(results: dict[str, PhaseResult]) -> str:
    def eps(name: str) -> str:
        phase = results.get(name)
        return "nan" if phase is None or phase.eps is None else str(round(phase.eps))

    pipeline = results.get("pipeline")
    per_event = results.get("per_event_celery")
    rec = pipeline.reconciliation if pipeline else None
    track = "nan" if not pipeline or pipeline.call_us_median is None else f"{pipeline.call_us_median:.2f}"
    apply = "nan" if not per_event or per_event.call_us_median is None else f"{per_event.call_us_median:.0f}"
    return (
        f"RESULT pipeline_eps={eps('pipeline')} naive_eps={eps('naive')}"
        f" per_event_celery_eps={eps('per_event_celery')} track_us={track} apply_async_us={apply}"
        f" lost={rec.lost if rec else 'nan'} duplicated={rec.duplicated if rec else 'nan'}"
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker-url", default=None, help="broker (default: CELERY_BROKER_URL, else the settings default, RabbitMQ)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"pipeline events (default {FULL['events']:,}; --quick: {QUICK['events']:,})",
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=None,
        help=f"naive-path events (default {FULL['naive']:,}; --quick: {QUICK['naive']:,})",
    )
    parser.add_argument(
        "--per-event-events",
        type=int,
        default=None,
        help=f"per-event Celery events (default {FULL['per_event']:,}; --quick: {QUICK['per_event']:,})",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run for CI")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"pipeline worker pool size (default {DEFAULT_CONCURRENCY}; the per-event worker: {PER_EVENT_CONCURRENCY})",
    )
    parser.add_argument(
        "--writer",
        default=None,
        help="INGEST_WRITER of the pipeline worker, if the project has that setting"
        " (default: the environment's, else the project's default)",
    )
    parser.add_argument(
        "--phases", default="naive,per_event,pipeline", help="comma-separated subset of naive,per_event,pipeline"
    )
    parser.add_argument(
        "--database",
        default="analytics_bench",
        help="bench database name, dropped and recreated (default analytics_bench)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed of the workload")
    parser.add_argument("--strict", action="store_true", help="exit 2 if a performance target is missed")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    args.events = args.events or sizes["events"]
    args.naive_events = args.naive_events or sizes["naive"]
    args.per_event_events = args.per_event_events or sizes["per_event"]
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - {"naive", "per_event", "pipeline"}
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    if args.database in ("analytics", "analytics_test", "postgres"):
        parser.error(f"--database {args.database} is not a bench database")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.install_signal_handlers()
    env = harness.configure_environment(args.broker_url, args.database, args.writer)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    print(
        f"bench.ingest run {env.run_id}: broker {_broker_name(env.broker_url)}, database {env.database_name},"
        f" queues {env.ingest_queue} / {env.per_event_queue}, worker logs in {env.workdir}",
        flush=True,
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {_load()} before the run"
        " (anything else running competes with the co-located producer, broker, worker and database)",
        flush=True,
    )
    results: dict[str, PhaseResult] = {}
    engine = None
    failed = True
    try:
        harness.recreate_database(env)
        engine = harness.make_bench_engine(env)
        if "naive" in args.phases:
            results["naive"] = run_naive(env, engine, args.naive_events, rng)
        if "per_event" in args.phases:
            results["per_event_celery"] = run_per_event(env, engine, args.per_event_events, PER_EVENT_CONCURRENCY, rng)
        if "pipeline" in args.phases:
            results["pipeline"] = run_pipeline(env, engine, args.events, args.concurrency, rng)
        failed = False
    except KeyboardInterrupt:
        print("\ninterrupted; stopping workers and deleting queues", file=sys.stderr, flush=True)
        return 130
    except Exception:  # noqa: BLE001 - printed with the workers' log tails, then a failing exit code
        traceback.print_exc()
        for worker_log in sorted(env.workdir.glob("*.log")):
            print(f"--- {worker_log.name} (tail)", file=sys.stderr)
            print("\n".join(worker_log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        return 1
    finally:
        harness.stop_all_workers()
        harness.delete_queues(env.broker_url, [env.ingest_queue, env.per_event_queue])
        if engine is not None:
            engine.dispose()
    correct, targets_met = report(results, args.concurrency, env)
    if correct and not failed:
        shutil.rmtree(env.workdir, ignore_errors=True)
        logs = ""
    else:
        logs = f"; worker logs in {env.workdir}"
    print(
        f"\nruntime {time.perf_counter() - started:.1f}s (load average {_load()} now);"
        f" bench database {env.database_name} left for inspection{logs}"
    )
    print(result_line(results), flush=True)
    if not correct:
        return 1
    if args.strict and not targets_met:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
