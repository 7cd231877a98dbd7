"""The benchmark suite: ``python -m bench [--quick]``.

Runs every ingest measurement side by side, on this machine with producer,
broker, worker and database co-located, on a database and queues of its own:

* naive: ORM add + commit per event (bench.ingest.run_naive);
* per-event Celery: one task per event (bench.ingest.run_per_event);
* the pipeline, ``track()`` to committed rows, with ``INGEST_WRITER=bulk`` and
  ``INGEST_WRITER=copy`` on the same generated events (bench.ingest.run_pipeline);
* the ceiling: one raw COPY of those same rows (bench.ceiling);
* freshness: commit delay at a steady 5,000 events/s on a private PostgreSQL
  with commit timestamps (bench.freshness);
* worker peak RSS while draining a backlog of 1M events published before the
  worker started (bench.backlog);
* ``track()`` cost, median over the copy pipeline run's calls;
* then the project's other benchmarks, each a command of its own run as a
  child process (bench.companions): rollups, partitions, fault scenarios,
  many small producers in task and aggregate mode.

It writes BENCHMARKS.md (figures beside their targets, machine, versions, a
plot in bench/results/) and ends with one ``RESULT`` line. Exit status: 0 when
every phase reconciles, 1 when one lost, duplicated, dead-lettered, altered
or refused events (or failed), 2 with ``--strict`` when a target is missed,
130 on Ctrl-C. Every worker subprocess is killed at the end, on errors and on
Ctrl-C, and the queues are deleted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench import harness
from bench.backlog import BacklogResult, run_backlog
from bench.ceiling import run_ceiling
from bench.companions import COMPANIONS, CompanionResult, run_companion
from bench.freshness import FreshnessResult, run_freshness
from bench.ingest import (
    DEFAULT_CONCURRENCY,
    PER_EVENT_CONCURRENCY,
    PhaseResult,
    generate_events,
    run_naive,
    run_per_event,
    run_pipeline,
)

PHASES = ("naive", "per_event", "bulk", "copy", "ceiling", "freshness", "backlog", *COMPANIONS)
FRESHNESS_RATE_EPS = 5_000.0
DEFAULT_DATABASE = "analytics_bench"
FORBIDDEN_DATABASES = ("analytics", "postgres", "template0", "template1")
FRESHNESS_WRITER = "copy"  # the writer the suite recommends; bulk's share is in the throughput phases
BACKLOG_WRITER = "copy"


@dataclass(frozen=True)
class Sizes:
    naive: int
    per_event: int
    pipeline: int  # each of bulk and copy, and the ceiling
    freshness_s: float
    backlog: int


FULL = Sizes(naive=5_000, per_event=10_000, pipeline=200_000, freshness_s=40.0, backlog=1_000_000)
QUICK = Sizes(naive=1_000, per_event=2_000, pipeline=20_000, freshness_s=8.0, backlog=50_000)


@dataclass
class SuiteResult:
    quick: bool
    sizes: Sizes
    concurrency: int
    started: datetime
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    freshness: FreshnessResult | None = None
    backlog: BacklogResult | None = None
    companions: dict[str, CompanionResult] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)  # machine and versions
    runtime_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    failure: str | None = None

    def correct(self) -> bool:
        """Every phase that ran reconciled: nothing lost, duplicated, dead-lettered or refused."""
        if self.failure:
            return False
        for phase in self.phases.values():
            rec = phase.reconciliation
            if rec is None or not rec.ok or phase.seconds is None or phase.refused:
                return False
        for extra in (self.freshness, self.backlog):
            if extra is not None and (extra.reconciliation is None or not extra.reconciliation.ok):
                return False
        if self.backlog is not None and (self.backlog.refused or self.backlog.drain_seconds is None):
            return False
        return all(companion.ok for companion in self.companions.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, small sizes (figures not comparable)")
    parser.add_argument(
        "--broker-url", default=None, help="broker (default: CELERY_BROKER_URL, else the settings default, RabbitMQ)"
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"bench database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"ingest worker pool size in every phase (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (the ceiling reuses the pipeline's events)",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed of the workloads")
    parser.add_argument(
        "--output", default="BENCHMARKS.md", help="report to write, relative to the repository (default BENCHMARKS.md)"
    )
    parser.add_argument("--no-report", action="store_true", help="print the figures only, write no files")
    parser.add_argument("--strict", action="store_true", help="exit 2 if a performance target is missed")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    if args.database in FORBIDDEN_DATABASES or args.database.startswith("analytics_test"):
        parser.error(f"--database {args.database} is not a bench database")
    return args


def run_phases(
    args: argparse.Namespace, env: harness.BenchEnv, suite: SuiteResult, outer_environ: dict[str, str]
) -> None:
    """Each phase in turn; results go into ``suite`` as they come, so a failure keeps the earlier ones."""
    from bench.report import collect_facts

    sizes = suite.sizes
    rng = random.Random(args.seed)
    harness.recreate_database(env)
    engine = harness.make_bench_engine(env)
    try:
        suite.facts = collect_facts(env, engine)
        if "naive" in args.phases:
            suite.phases["naive"] = run_naive(env, engine, sizes.naive, rng)
        if "per_event" in args.phases:
            suite.phases["per_event"] = run_per_event(env, engine, sizes.per_event, PER_EVENT_CONCURRENCY, rng)
        events = generate_events(sizes.pipeline, rng)
        for writer in ("bulk", "copy"):
            if writer in args.phases:
                suite.phases[writer] = run_pipeline(
                    env, engine, sizes.pipeline, args.concurrency, rng,
                    writer=writer, label=f"pipeline_{writer}", events=events,
                )  # fmt: skip
        if "ceiling" in args.phases:
            suite.phases["ceiling"] = run_ceiling(engine, events)
        del events
        if "freshness" in args.phases:
            suite.freshness = run_freshness(
                env, engine, FRESHNESS_RATE_EPS, sizes.freshness_s, args.concurrency, rng, FRESHNESS_WRITER
            )
        if "backlog" in args.phases:
            suite.backlog = run_backlog(env, engine, sizes.backlog, args.concurrency, rng, BACKLOG_WRITER)
    finally:
        engine.dispose()
    for name, companion in COMPANIONS.items():
        if name in args.phases:
            suite.companions[name] = run_companion(companion, suite.quick, outer_environ)


def main(argv: list[str] | None = None) -> int:
    from bench import report

    args = parse_args(argv)
    harness.install_signal_handlers()
    outer_environ = dict(os.environ)  # before configure_environment sets the ingest phases' own
    env = harness.configure_environment(args.broker_url, args.database)
    suite = SuiteResult(
        quick=args.quick,
        sizes=QUICK if args.quick else FULL,
        concurrency=args.concurrency,
        started=datetime.now(UTC),
        load_before=os.getloadavg(),
    )
    started = time.perf_counter()
    print(
        f"bench suite run {env.run_id} ({'quick' if args.quick else 'full'}): database {env.database_name},"
        f" queues {env.ingest_queue} / {env.per_event_queue}, worker logs in {env.workdir};"
        f" load average {' / '.join(f'{v:.2f}' for v in suite.load_before)}",
        flush=True,
    )
    interrupted = False
    try:
        run_phases(args, env, suite, outer_environ)
    except KeyboardInterrupt:
        interrupted = True
        suite.failure = "interrupted"
        print("\ninterrupted; stopping workers and deleting queues", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, then the suite fails
        suite.failure = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        for worker_log in sorted(env.workdir.glob("*.log")):
            print(f"--- {worker_log.name} (tail)", file=sys.stderr)
            print("\n".join(worker_log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
    finally:
        harness.stop_all_workers()
        harness.delete_queues(env.broker_url, [env.ingest_queue, env.per_event_queue])
    if interrupted:
        return 130
    suite.runtime_s = time.perf_counter() - started
    suite.load_after = os.getloadavg()
    report.print_summary(suite)
    if not args.no_report and suite.failure is None:
        output = harness.REPO_ROOT / args.output
        written = report.write_report(suite, output, harness.REPO_ROOT / report.PLOT_PATH)
        print(f"\nwrote {', '.join(os.path.relpath(path, harness.REPO_ROOT) for path in written)}")
    correct = suite.correct()
    if correct:
        shutil.rmtree(env.workdir, ignore_errors=True)
    else:
        print(
            f"\nFAILED ({suite.failure or 'a phase did not reconcile'}); worker logs in {env.workdir}", file=sys.stderr
        )
    print(report.result_line(suite), flush=True)
    if not correct:
        return 1
    if args.strict and not all(t.met for t in report.all_targets(suite) if t.met is not None):
        return 2
    return 0
