"""Many small producers, task mode against aggregate mode: ``python -m bench.small_producers``.

The load the aggregator (``INGEST_MODE=aggregate``, ``python -m tasks.aggregator``)
was written for: many web processes, each flushing a few events at a time. By
default 200 producers each flush 10 events every 200 ms (10,000 events/s
offered, 1,000 broker messages/s) for 20 s; the same workload is stored once
by the Procfile's Celery worker (``INGEST_MODE=task``: one transaction per
message, ``-P threads -c 3``) and once by the Procfile's worker line with
``INGEST_MODE=aggregate`` (many messages per transaction), side by side, each
on an emptied bench database and reconciled (nothing lost, duplicated or
dead-lettered, token and error sums equal).

The producers are real ``producer.Tracker`` instances (``PRODUCER_BATCH_SIZE=10``,
``PRODUCER_FLUSH_INTERVAL_MS=200``), each with its own publishing thread and
broker connection, as a web process has: 4 child processes of 50 trackers
(200 tracker threads in one process would spend the run contending for one
GIL). Each child tracks 10 events on each of its trackers once per 200 ms,
the trackers' turns spread evenly over the interval and interleaved across
the children, so the broker sees a steady stream of 10-event messages from
200 connections, with the producer code's own costs (``send_task``, publisher
confirms). Those costs land on this 2-core machine, where in production they
would be on the web servers: the children's CPU is reported apart.

Figures, per mode:

* ``eps``: events stored per second, from the first ``track()`` until the last
  row is committed (``count(*)`` polled). A mode that keeps up stores at the
  offered rate; one that does not falls behind and drains after the producers
  stop, which lowers it.
* ``xact_per_s``: transactions committed on the bench database per second over
  the same time (``pg_stat_database.xact_commit``, read before the start and
  after the worker stopped, since a backend's counters reach the statistics
  only when it goes idle or exits; the bench's own ``count(*)`` polls are
  subtracted).
* where the CPU went (worker, producers, PostgreSQL backends of the bench
  database, broker, other processes) and how far behind the producers' own
  schedule fell.

Ends with ``RESULT task_eps=.. aggregate_eps=.. task_xact_per_s=..
aggregate_xact_per_s=.. lost=.. duplicated=..`` (lost and duplicated summed over
both modes). Exit status 0 when both modes reconcile, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, text

from bench import harness
from bench.harness import BenchEnv, Reconciliation, RowMonitor
from devtools.processes import REPO_ROOT

MODES = ("task", "aggregate")
PROCESSES = 4
TRACKERS_PER_PROCESS = 50
EVENTS_PER_FLUSH = 10
FLUSH_INTERVAL_MS = 200
SECONDS = 20.0
QUICK_SECONDS = 5.0
DEFAULT_DATABASE = "analytics_bench_small"
FORBIDDEN_DATABASES = ("analytics", "analytics_bench", "postgres", "template0", "template1")

READY_LINE = "READY"
GO_LINE = "GO"
DONE_PREFIX = "DONE "
CHILD_START_TIMEOUT_S = 120.0  # generating the events and starting the trackers
PRODUCER_FLUSH_TIMEOUT_S = 120.0  # a child's last flush when the broker is slow
PRODUCER_CLOSE_TIMEOUT_S = 5.0
STALL_TIMEOUT_S = 60.0
STATS_SETTLE_S = 0.5  # after the worker exits, before its backends' counters are read
WIN_EPS_RATIO = 1.5  # "aggregate wins clearly": this much more events/s ...
WIN_XACT_RATIO = 10.0  # ... or this many times fewer transactions at about the same rate
SAME_RATE_WITHIN = 0.05


# --- producer child ------------------------------------------------------------------


def run_producer_child(index: int, processes: int, trackers: int, events_per_flush: int, seconds: float,
                       seed: int, out: IO[str]) -> int:  # fmt: skip
    """One producer process: ``trackers`` Trackers, each fed ``events_per_flush`` events per flush interval.

    Prints ``READY`` once its events are generated and its trackers started,
    waits for ``GO`` on stdin, tracks on schedule, flushes, and prints one
    ``DONE {json}`` line: what it sent (count and sums) and the trackers' stats.
    """
    from bench.ingest import expected_sums, generate_events
    from config import get_settings
    from producer import Tracker

    settings = get_settings()
    interval_s = settings.producer_flush_interval_ms / 1000
    ticks = max(1, round(seconds / interval_s))
    n = trackers * events_per_flush * ticks
    events = generate_events(n, random.Random(seed * 1_000 + index))
    spool_root = Path(settings.producer_spool_dir) / f"producer-{index}"
    pool = [
        Tracker(settings.model_copy(update={"producer_spool_dir": str(spool_root / str(i))})) for i in range(trackers)
    ]
    for tracker in pool:
        tracker.start()
    print(READY_LINE, file=out, flush=True)
    if sys.stdin.readline().strip() != GO_LINE:
        return 1
    step_s = interval_s / (trackers * processes)  # every tracker of every child gets its own moment
    refused = 0
    late_s = 0.0
    cursor = 0
    start = time.perf_counter()
    for tick in range(ticks):
        for i, tracker in enumerate(pool):
            due = start + tick * interval_s + (i * processes + index) * step_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                late_s = max(late_s, -delay)
            for event in events[cursor : cursor + events_per_flush]:
                refused += not tracker.track(**event)
            cursor += events_per_flush
    tracked_s = time.perf_counter() - start
    flushed = all(tracker.flush(timeout=PRODUCER_FLUSH_TIMEOUT_S) for tracker in pool)
    published_s = time.perf_counter() - start
    stats = [tracker.stats() for tracker in pool]
    for tracker in pool:
        tracker.close(timeout=PRODUCER_CLOSE_TIMEOUT_S)
    report = {
        "sent": n,
        "expected": expected_sums(events),
        "tracked_s": tracked_s,
        "published_s": published_s,
        "late_s": late_s,
        "flushed": flushed,
        "refused": refused,
        "published": sum(s.published for s in stats),
        "publish_failures": sum(s.publish_failures for s in stats),
        "dropped_buffer_full": sum(s.dropped_buffer_full for s in stats),
        "spooled": sum(s.spooled for s in stats),
    }
    print(DONE_PREFIX + json.dumps(report), file=out, flush=True)
    sys.stdin.read()  # until the parent has read this process's CPU time (it closes our stdin)
    return 0


class ProducerProcess:
    """A producer child in its own process group (``Worker.stop``'s way of never leaving one behind)."""

    def __init__(self, env: BenchEnv, index: int, args: argparse.Namespace) -> None:
        self.index = index
        self.log_path = env.workdir / f"producer-{index}.log"
        command = [
            sys.executable, "-m", "bench.small_producers", "--producer-child", str(index),
            "--processes", str(args.processes), "--trackers", str(args.trackers),
            "--events-per-flush", str(args.events_per_flush), "--seconds", str(args.seconds),
            "--seed", str(args.seed),
        ]  # fmt: skip
        environ = dict(os.environ, PRODUCER_BATCH_SIZE=str(args.events_per_flush),
                       PRODUCER_FLUSH_INTERVAL_MS=str(args.interval_ms))  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True, start_new_session=True,
            )  # fmt: skip
        self.report: dict[str, Any] | None = None

    def wait_ready(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = self.proc.stdout.readline().strip() if readable else "(nothing in time)"
        if line != READY_LINE:  # the child prints nothing else before it
            raise RuntimeError(f"producer {self.index} did not start: {line!r}\n{self.log_tail()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(GO_LINE + "\n")
        self.proc.stdin.flush()

    def wait_done(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(DONE_PREFIX):
                self.report = json.loads(line[len(DONE_PREFIX) :])
                break
        if self.report is None:
            raise RuntimeError(f"producer {self.index} ended without a report:\n{self.log_tail()}")
        return self.report

    def release(self) -> None:
        """Let it exit (it waits, so that its CPU time can still be read from /proc)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- one mode --------------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    sent: int = 0
    seconds: float | None = None  # first track() .. last row committed
    offered_eps: float = 0.0  # what the producers achieved while tracking
    xact_commits: int = 0
    xact_rollbacks: int = 0
    sessions: int = 0  # database connections opened during the run (the bench's own excepted)
    stored_while_producing: int = 0
    reconciliation: Reconciliation | None = None
    refused: int = 0
    cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def eps(self) -> float | None:
        return self.sent / self.seconds if self.seconds else None

    @property
    def xact_per_s(self) -> float | None:
        return self.xact_commits / self.seconds if self.seconds else None

    @property
    def ok(self) -> bool:
        rec = self.reconciliation
        return rec is not None and rec.ok and self.seconds is not None and not self.refused


def database_counters(engine: Engine) -> tuple[int, int, int]:
    """(commits, rollbacks, sessions) of the bench database so far, read on a fresh connection (no cached
    statistics snapshot)."""
    with engine.connect() as conn:
        commits, rollbacks, sessions = conn.execute(
            text("SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = current_database()")
        ).one()
    return int(commits), int(rollbacks), int(sessions)


def run_mode(env: BenchEnv, engine: Engine, mode: str, args: argparse.Namespace) -> ModeResult:
    """The whole workload through one ingest mode; the worker is the Procfile's (bench.abuse_stack)."""
    from bench.abuse_stack import start_worker

    producers = args.processes * args.trackers
    offered = producers * args.events_per_flush * 1000 / args.interval_ms
    print(f"\n== {mode}: {producers} producers ({args.processes} processes of {args.trackers} Trackers) each"
          f" flushing {args.events_per_flush} events every {args.interval_ms} ms ({offered:,.0f} events/s offered)"
          f" for {args.seconds:g} s", flush=True)  # fmt: skip
    result = ModeResult(mode)
    harness.truncate_events(engine)
    worker = start_worker(env, mode)
    children: list[ProducerProcess] = []
    try:
        children = [ProducerProcess(env, index, args) for index in range(args.processes)]
        deadline = time.monotonic() + CHILD_START_TIMEOUT_S
        for child in children:
            child.wait_ready(deadline)
        ticks = max(1, round(args.seconds * 1000 / args.interval_ms))
        result.sent = producers * args.events_per_flush * ticks
        engine.dispose()  # our own connections' counters reach the statistics when they close
        commits_before, rollbacks_before, sessions_before = database_counters(engine)
        engine.dispose()
        cpu_start = harness.cpu_snapshot()
        t0 = time.perf_counter()
        for child in children:
            child.go()
        monitor = RowMonitor(
            engine, mode, result.sent, t0, stall_timeout_s=STALL_TIMEOUT_S,
            status=lambda: "" if worker.alive() else "WORKER DIED",
        )  # fmt: skip
        monitor.start()
        try:
            reports = [child.wait_done() for child in children]
            t_produced = time.perf_counter()
            monitor.join()
        finally:
            monitor.stop()
        if monitor.error:
            raise monitor.error
        cpu_end = harness.cpu_snapshot()
        pgid = worker.proc.pid if worker.proc is not None else 0
        groups = {
            "worker": harness.process_group(cpu_end, pgid),
            "producers": set().union(*(harness.process_group(cpu_end, c.proc.pid) for c in children)),
            "bench process": {os.getpid()},
            "postgres (bench db)": harness.bench_backend_pids(engine),
        }
        _busy, result.cores = harness.cpu_breakdown(cpu_start, cpu_end, groups)
        for child in children:
            child.release()
    finally:
        for child in children:
            child.stop()
        worker.stop()
    time.sleep(STATS_SETTLE_S)
    engine.dispose()
    commits_after, rollbacks_after, sessions_after = database_counters(engine)
    # Our own in between: the monitor's polls (one transaction each) and the baseline read's connection.
    result.xact_commits = commits_after - commits_before - monitor.polls - 1
    result.xact_rollbacks = rollbacks_after - rollbacks_before
    result.sessions = sessions_after - sessions_before - 2  # minus the monitor's and the baseline read's
    if monitor.done_at is not None:
        result.seconds = monitor.done_at - t0
    else:
        result.notes.append(f"only {monitor.last_count:,} of {result.sent:,} rows arrived")
    tracked_s = max(r["tracked_s"] for r in reports)
    result.offered_eps = result.sent / tracked_s
    result.stored_while_producing = monitor.count_at(t_produced)
    result.refused = sum(r["refused"] + r["dropped_buffer_full"] for r in reports)
    if not all(r["flushed"] for r in reports):
        result.notes.append("A PRODUCER'S LAST FLUSH TIMED OUT")
    expected = {key: sum(r["expected"][key] for r in reports) for key in reports[0]["expected"]}
    result.reconciliation = harness.reconcile(engine, sum(r["sent"] for r in reports), expected)
    result.notes.append(
        f"producers tracked at {result.offered_eps:,.0f} events/s (at most {max(r['late_s'] for r in reports):.2f} s"
        f" behind schedule), all published {max(r['published_s'] for r in reports):.1f} s after the start;"
        f" {result.stored_while_producing:,} rows stored by then"
        f" ({result.stored_while_producing / (t_produced - t0):,.0f} rows/s)"
        + (
            f", the other {result.sent - result.stored_while_producing:,} in the"
            f" {monitor.done_at - t_produced:.1f} s after"
            f" ({(result.sent - result.stored_while_producing) / (monitor.done_at - t_produced):,.0f} rows/s)"
            if monitor.done_at is not None and monitor.done_at > t_produced
            else ""
        )
    )
    result.notes.append(
        f"producer stats: published {sum(r['published'] for r in reports):,}, publish_failures"
        f" {sum(r['publish_failures'] for r in reports)}, spooled {sum(r['spooled'] for r in reports)},"
        f" refused {result.refused}"
    )
    per_commit = f", {result.sent / result.xact_commits:,.0f} events per commit" if result.xact_commits > 0 else ""
    result.notes.append(f"database: {result.xact_commits:,} transactions committed{per_commit},"
                        f" {result.xact_rollbacks:,} rolled back; {result.sessions:,} connections opened")  # fmt: skip
    result.notes.append(harness.format_breakdown(result.cores))
    if result.eps is not None:
        print(f"  [{mode}] done: {result.sent:,} events in {result.seconds:.2f}s = {result.eps:,.0f} events/s,"
              f" {result.xact_per_s:,.1f} transactions/s", flush=True)  # fmt: skip
    for note in result.notes:
        print(f"  [{mode}] {note}", flush=True)
    return result


# --- report ------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "nan" if value is None else format(value, spec)


def verdict(results: dict[str, ModeResult]) -> str:
    """Whether aggregate mode wins clearly, by the figures of this run (one line)."""
    task, aggregate = results.get("task"), results.get("aggregate")
    if task is None or aggregate is None or not task.eps or not aggregate.eps:
        return "no verdict: both modes must run to the end"
    ratio = aggregate.eps / task.eps
    xact_ratio = (task.xact_per_s or 0) / aggregate.xact_per_s if aggregate.xact_per_s else float("inf")
    if ratio >= WIN_EPS_RATIO:
        return f"aggregate wins: {ratio:.2f}x the events/s of task mode"
    if abs(ratio - 1) <= SAME_RATE_WITHIN and xact_ratio >= WIN_XACT_RATIO:
        return (f"same rate ({ratio:.2f}x), {xact_ratio:,.0f}x fewer transactions in aggregate mode:"
                " it wins where the database is the bottleneck")  # fmt: skip
    return f"no clear win: {ratio:.2f}x the events/s, {xact_ratio:,.1f}x fewer transactions"


def result_line(results: dict[str, ModeResult]) -> str:
    task, aggregate = results.get("task"), results.get("aggregate")
    recs = [r.reconciliation for r in results.values() if r.reconciliation is not None]
    complete = bool(recs) and len(recs) == len(results)  # every mode that ran was reconciled
    lost = sum(rec.lost for rec in recs) if complete else None
    duplicated = sum(rec.duplicated for rec in recs) if complete else None
    return (
        f"RESULT task_eps={_fmt(task.eps if task else None, '.0f')}"
        f" aggregate_eps={_fmt(aggregate.eps if aggregate else None, '.0f')}"
        f" task_xact_per_s={_fmt(task.xact_per_s if task else None, '.1f')}"
        f" aggregate_xact_per_s={_fmt(aggregate.xact_per_s if aggregate else None, '.1f')}"
        f" lost={_fmt(lost, 'd')} duplicated={_fmt(duplicated, 'd')}"
    )


def print_report(results: dict[str, ModeResult]) -> None:
    print("\n== results")
    cols = ("mode", "events", "seconds", "events/s", "xact/s", "lost", "dup", "dead", "sums", "worker", "postgres")
    widths = (10, 9, 8, 9, 8, 5, 5, 5, 5, 7, 8)
    print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True))))
    for result in results.values():
        rec = result.reconciliation
        values = (
            result.mode, f"{result.sent:,}", _fmt(result.seconds, ".2f"), _fmt(result.eps), _fmt(result.xact_per_s, ".1f"),
            _fmt(rec.lost if rec else None, "d"), _fmt(rec.duplicated if rec else None, "d"),
            _fmt(rec.dead_letters if rec else None, "d"), "n/a" if rec is None else "ok" if rec.content_ok else "DIFF",
            _fmt(result.cores.get("worker"), ".2f"), _fmt(result.cores.get("postgres (bench db)"), ".2f"),
        )  # fmt: skip
        print(
            "  "
            + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))
        )
    print(f"  (worker and postgres: cores of {os.cpu_count()} used on average)")
    print(f"\n  {verdict(results)}")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.small_producers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:g} s per mode (figures not comparable)")
    parser.add_argument("--seconds", type=float, default=None, help=f"tracking time per mode (default {SECONDS:g})")
    parser.add_argument("--processes", type=int, default=PROCESSES, help=f"producer processes (default {PROCESSES})")
    parser.add_argument(
        "--trackers",
        type=int,
        default=TRACKERS_PER_PROCESS,
        help=f"Trackers per producer process (default {TRACKERS_PER_PROCESS})",
    )
    parser.add_argument(
        "--events-per-flush",
        type=int,
        default=EVENTS_PER_FLUSH,
        help=f"events each Tracker gets per flush interval = PRODUCER_BATCH_SIZE (default {EVENTS_PER_FLUSH})",
    )
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=FLUSH_INTERVAL_MS,
        help=f"PRODUCER_FLUSH_INTERVAL_MS of every Tracker (default {FLUSH_INTERVAL_MS})",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--writer", default=None, help="INGEST_WRITER of both workers (default: the environment's,"
                        " else the project's default)")  # fmt: skip
    parser.add_argument("--broker-url", default=None, help="a RabbitMQ broker (aggregate mode refuses Redis)"
                        " (default: CELERY_BROKER_URL, else the settings default)")  # fmt: skip
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"bench database, dropped and recreated (default {DEFAULT_DATABASE})",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed of the workload")
    parser.add_argument("--producer-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - set(MODES):
        parser.error(f"unknown modes: {sorted(set(args.modes) - set(MODES))}")
    if args.database in FORBIDDEN_DATABASES or args.database.startswith("analytics_test"):
        parser.error(f"--database {args.database} is not a bench database of its own")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.producer_child is not None:
        return run_producer_child(args.producer_child, args.processes, args.trackers, args.events_per_flush,
                                  args.seconds, args.seed, sys.stdout)  # fmt: skip
    harness.install_signal_handlers()
    env = harness.configure_environment(args.broker_url, args.database, args.writer)
    from config import get_settings

    settings = get_settings()
    print(f"bench.small_producers run {env.run_id}: database {env.database_name}, queue {env.ingest_queue},"
          f" writer {settings.ingest_writer!r}, logs in {env.workdir} (kept on failure); load average"
          f" {' / '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)  # fmt: skip
    started = time.perf_counter()
    results: dict[str, ModeResult] = {}
    engine = None
    try:
        harness.recreate_database(env)
        engine = harness.make_bench_engine(env)
        for mode in args.modes:
            results[mode] = run_mode(env, engine, mode, args)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the workers and deleting the queue", file=sys.stderr, flush=True)
        return 130
    except Exception:  # noqa: BLE001 - reported, then the run fails
        traceback.print_exc()
        for log in sorted(env.workdir.glob("*.log")):
            print(f"--- {log.name} (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]),
                  file=sys.stderr)  # fmt: skip
        return 1
    finally:
        harness.stop_all_workers()
        harness.delete_queues(env.broker_url, [env.ingest_queue, f"{env.ingest_queue}.dead"])
        if engine is not None:
            engine.dispose()
    print_report(results)
    print(f"\nruntime {time.perf_counter() - started:.1f}s; load average now"
          f" {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    correct = len(results) == len(args.modes) and all(r.ok for r in results.values())
    if correct:
        shutil.rmtree(env.workdir, ignore_errors=True)  # worker and producer logs, kept only on failure
    else:
        print(f"\nFAILED: a mode did not reconcile; logs in {env.workdir}", file=sys.stderr)
    print(result_line(results), flush=True)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
