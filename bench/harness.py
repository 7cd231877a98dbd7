"""Shared pieces of the benchmarks: environment, bench database, worker subprocesses,
row-count monitor, reconciliation, queue cleanup.

Everything a benchmark starts it also stops: workers run in their own process
group (devtools.processes) and ``Worker.stop`` kills the whole group, so a
pool child never outlives the run, even after Ctrl-C or an exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.ready import READY_FILE_ENV
from devtools.processes import REPO_ROOT, ManagedProcess, file_tail
from devtools.workers import PROCFILE_POOL  # the Procfile's ingest worker (WORKER_POOL)

READY_POLL_S = 0.05


# --- environment ---------------------------------------------------------------


@dataclass(frozen=True)
class BenchEnv:
    run_id: str
    broker_url: str
    database_url: str  # the bench database
    admin_url: str  # the server's "postgres" database, to drop/create the bench one
    ingest_queue: str
    per_event_queue: str
    workdir: Path  # worker logs and ready files

    @property
    def database_name(self) -> str:
        return make_url(self.database_url).database or ""


def configure_environment(broker_url: str | None, database_name: str, writer: str | None = None) -> BenchEnv:
    """Point this process and its worker subprocesses at the bench database and queues.

    Must run before anything calls ``config.get_settings()``; the settings cache
    is cleared anyway, in case something did.
    """
    from config.settings import Settings

    run_id = uuid.uuid4().hex[:8]
    base = make_url(os.environ.get("DATABASE_URL") or Settings.model_fields["database_url"].default)
    broker = broker_url or os.environ.get("CELERY_BROKER_URL") or Settings.model_fields["celery_broker_url"].default
    env = BenchEnv(
        run_id=run_id,
        broker_url=broker,
        database_url=base.set(database=database_name).render_as_string(hide_password=False),
        admin_url=base.set(database="postgres").render_as_string(hide_password=False),
        ingest_queue=f"bench-ingest-{run_id}",
        per_event_queue=f"bench-per-event-{run_id}",
        workdir=Path(tempfile.mkdtemp(prefix=f"bench-ingest-{run_id}-")),
    )
    os.environ["DATABASE_URL"] = env.database_url
    os.environ["CELERY_BROKER_URL"] = env.broker_url
    os.environ["INGEST_QUEUE"] = env.ingest_queue
    os.environ["BENCH_PER_EVENT_QUEUE"] = env.per_event_queue
    # A private spool: the tracker replays orphaned segments it finds in its
    # spool directory, and the bench must neither take a dev process's events
    # nor leave its own behind in the repository.
    os.environ["PRODUCER_SPOOL_DIR"] = str(env.workdir / "spool")
    # Nor add the bench worker's counters to a dev setup's /metrics.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    if writer:
        os.environ["INGEST_WRITER"] = writer

    from config import get_settings

    get_settings.cache_clear()
    return env


# --- database ------------------------------------------------------------------


def recreate_database(env: BenchEnv) -> None:
    """Drop and create the bench database, then migrate it to head with Alembic."""
    from alembic import command
    from alembic.config import Config

    from config import get_settings

    name = env.database_name
    if name in ("", "postgres", "template0", "template1"):
        raise SystemExit(f"refusing to recreate database {name!r}")
    admin = create_engine(env.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    get_settings.cache_clear()
    config = Config(str(REPO_ROOT / "alembic.ini"))
    command.upgrade(config, "head")


def make_bench_engine(env: BenchEnv) -> Engine:
    return create_engine(env.database_url, pool_size=2)


def truncate_events(engine: Engine) -> None:
    """Empty every table of the bench database but alembic_version (events, dead
    letters, and whatever bookkeeping later revisions add), between phases."""
    with engine.begin() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT quote_ident(c.relname) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
                    " AND NOT c.relispartition AND c.relname <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        conn.execute(text(f"TRUNCATE {', '.join(tables)}"))


def baseline_row_extras() -> dict[str, Any]:
    """Values the baselines' per-event rows need beyond the event's own fields.

    The baselines write ``AnalyticsEvent`` rows directly (ORM add + commit), so
    a NOT NULL column that the pipeline fills for its own bookkeeping (e.g. a
    rollup ``batch_id``, if the model has one) gets a constant here; nothing in
    the bench reads it back.
    """
    from models import AnalyticsEvent

    return {"batch_id": 0} if hasattr(AnalyticsEvent, "batch_id") else {}


@dataclass(frozen=True)
class Reconciliation:
    sent: int
    rows: int
    distinct_ids: int
    dead_letters: int
    input_tokens: int
    output_tokens: int
    errors: int
    expected_input_tokens: int
    expected_output_tokens: int
    expected_errors: int

    @property
    def lost(self) -> int:
        return self.sent - self.distinct_ids

    @property
    def duplicated(self) -> int:
        return self.rows - self.distinct_ids

    @property
    def content_ok(self) -> bool:
        return (
            self.input_tokens == self.expected_input_tokens
            and self.output_tokens == self.expected_output_tokens
            and self.errors == self.expected_errors
        )

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.dead_letters == 0 and self.content_ok


def reconcile(engine: Engine, sent: int, expected: dict[str, int]) -> Reconciliation:
    """Compare what is stored with what was sent (the table holds one phase's rows)."""
    with engine.connect() as conn:
        rows, distinct_ids, input_tokens, output_tokens, errors = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT event_id), coalesce(sum(input_tokens), 0),"
                " coalesce(sum(output_tokens), 0), count(*) FILTER (WHERE status = 'error')"
                " FROM analytics_events"
            )
        ).one()
        dead = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
    return Reconciliation(
        sent=sent,
        rows=rows,
        distinct_ids=distinct_ids,
        dead_letters=dead,
        input_tokens=int(input_tokens),
        output_tokens=int(output_tokens),
        errors=errors,
        expected_input_tokens=expected["input_tokens"],
        expected_output_tokens=expected["output_tokens"],
        expected_errors=expected["errors"],
    )


# --- row-count monitor -----------------------------------------------------------


class RowMonitor(threading.Thread):
    """Polls ``count(*)`` until ``target`` rows are stored; prints progress.

    ``done_at`` is the ``time.perf_counter()`` of the first poll that saw all
    rows (so the measured time is late by at most one poll interval). The
    thread gives up if the count does not move for ``stall_timeout_s``.
    """

    def __init__(
        self,
        engine: Engine,
        label: str,
        target: int,
        t0: float,
        status: Callable[[], str] = lambda: "",
        poll_s: float = 0.2,
        print_every_s: float = 1.0,
        stall_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(name=f"bench-monitor-{label}", daemon=True)
        self._engine = engine
        self._label = label
        self.target = target
        self._t0 = t0
        self._status = status
        self._poll_s = poll_s
        self._print_every_s = print_every_s
        self._stall_timeout_s = stall_timeout_s
        self._stop_event = threading.Event()
        self.done_at: float | None = None
        self._max_rate = 0.0
        self.last_count = 0
        self.samples: list[tuple[float, int]] = []  # (perf_counter, count) of every poll
        self.polls = 0
        self.poll_seconds = 0.0
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc

    def _run(self) -> None:
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        query = text("SELECT count(*) FROM analytics_events")
        last_print = last_change = time.perf_counter()
        printed_count = 0
        try:
            while not self._stop_event.is_set():
                start = time.perf_counter()
                count = conn.execute(query).scalar_one()
                now = time.perf_counter()
                self.polls += 1
                self.poll_seconds += now - start
                self.samples.append((now, count))
                if count != self.last_count:
                    last_change = now
                    self.last_count = count
                if count >= self.target:
                    self.done_at = now
                    self._print(now, count, (count - printed_count) / max(now - last_print, 1e-9))
                    return
                if now - last_print >= self._print_every_s:
                    rate = (count - printed_count) / (now - last_print)
                    self._print(now, count, rate)
                    last_print, printed_count = now, count
                    self._max_rate = max(self._max_rate, rate)
                if now - last_change > self._stall_timeout_s:
                    print(
                        f"  [{self._label}] no new rows for {self._stall_timeout_s:.0f}s, giving up "
                        f"at {count:,}/{self.target:,}",
                        flush=True,
                    )
                    return
                self._stop_event.wait(self._next_poll_delay(count, now, last_print))
        finally:
            conn.close()

    def count_at(self, moment: float) -> int:
        """Rows seen by the last poll at or before ``moment``."""
        seen = 0
        for at, count in self.samples:
            if at > moment:
                break
            seen = count
        return seen

    def _next_poll_delay(self, count: int, now: float, last_print: float) -> float:
        """``poll_s`` once the end may be near; otherwise wait for the next progress line.

        ``count(*)`` scans the table (10-20 ms at 100-200K rows on this machine
        while it is busy), so polling it every 0.2 s for the whole run would
        take a noticeable share of the CPU the run is measuring. Near the end
        (less than 1.5 progress intervals of work left at twice the best rate
        seen so far, or no rate seen yet) the poll interval is ``poll_s``, which bounds the error
        of the end time; before that, one poll per progress line.
        """
        if not self._max_rate:
            return self._poll_s
        # Assume the rate may still rise to twice the best one seen in a window.
        remaining_s = (self.target - count) / (2.0 * self._max_rate)
        if remaining_s < 1.5 * self._print_every_s:
            return self._poll_s
        return max(self._poll_s, self._print_every_s - (now - last_print))

    def _print(self, now: float, count: int, rate: float) -> None:
        status = self._status()
        print(
            f"  [{self._label}] {now - self._t0:6.1f}s  stored {count:>9,}/{self.target:,}"
            f"  {rate:>8,.0f} rows/s{'  ' + status if status else ''}",
            flush=True,
        )


# --- worker subprocesses ----------------------------------------------------------


class Worker:
    """One ``celery worker`` subprocess (devtools.processes.ManagedProcess: its own process
    group, stopped whole), ready when ``bench.ready`` writes its ready file; may be started again."""

    def __init__(self, env: BenchEnv, app: str, queue: str, concurrency: int, name: str,
                 pool: str = PROCFILE_POOL) -> None:  # fmt: skip
        self._env = env
        self.pool = pool
        self.app = app
        self.queue = queue
        self.concurrency = concurrency
        self.name = name
        self.log_path = env.workdir / f"{name}.log"
        self._ready_path = env.workdir / f"{name}.ready"
        self._process: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> None:
        cmd = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-Q", self.queue,
            "-c", str(self.concurrency),
            "-P", self.pool,
            "-n", f"{self.name}-{self._env.run_id}@%h",
            "-l", "WARNING",
            "--include", "bench.ready",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self._ready_path.unlink(missing_ok=True)
        # SIGTERM to the whole group, as a terminal's Ctrl-C or a supervisor would send it.
        self._process = ManagedProcess(f"worker {self.name}", cmd, self.log_path,
                                       env=dict(os.environ, **{READY_FILE_ENV: str(self._ready_path)}),
                                       append_log=True, term_group=True).start()  # fmt: skip
        _live_workers.add(self)
        self._process.wait_ready(self._ready_path.exists, timeout, "ready", READY_POLL_S)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL whatever is left of it."""
        process = self._process
        if process is None:
            return
        try:
            process.stop(timeout)
        finally:
            _live_workers.discard(self)
            self._process = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The main worker process, None before ``start`` and after ``stop``."""
        return self._process.proc if self._process is not None else None

    @property
    def pgid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def log_tail(self, lines: int = 30) -> str:
        return file_tail(self.log_path, lines) or "(no log)"

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


_live_workers: set[Worker] = set()


def stop_all_workers() -> None:
    for worker in list(_live_workers):
        worker.stop(timeout=10.0)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C, so ``finally`` blocks clean up."""

    def _interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


# --- broker ------------------------------------------------------------------------


def queue_depth(broker_url: str, queue: str) -> int | None:
    """Messages ready in ``queue`` (None if it cannot be read)."""
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=2) as conn:
            channel = conn.default_channel
            if broker_url.startswith(("redis://", "rediss://")):
                return int(channel.client.llen(queue))
            return int(channel.queue_declare(queue, passive=True).message_count)
    except Exception:  # noqa: BLE001 - informational only
        return None


def delete_queues(broker_url: str, queues: list[str]) -> list[str]:
    """Delete the bench queues (and the direct exchanges Celery named after them)."""
    from kombu import Connection

    deleted = []
    with Connection(broker_url, connect_timeout=5) as conn:
        for name in queues:
            try:
                channel = conn.channel()
                try:
                    channel.queue_delete(name)
                    deleted.append(name)
                except Exception:  # noqa: BLE001 - never declared (phase skipped)
                    pass
                finally:
                    _close_quietly(channel)
                channel = conn.channel()
                try:
                    channel.exchange_delete(name)
                except Exception:  # noqa: BLE001
                    pass
                finally:
                    _close_quietly(channel)
            except Exception as exc:  # noqa: BLE001
                print(f"  could not delete queue {name}: {exc}", file=sys.stderr)
        if broker_url.startswith(("redis://", "rediss://")):
            # A fresh channel does not know the queue's bindings, so kombu leaves
            # the binding sets of the exchanges named after our queues: drop them.
            client = conn.default_channel.client
            for name in queues:
                client.delete(f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    return deleted


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # closing is best effort: the broker may be gone
        channel.close()


def median(values: Any) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    mid = n // 2
    return float(ordered[mid]) if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values_sorted: Any, q: float) -> float:
    if not values_sorted:
        return float("nan")
    index = min(len(values_sorted) - 1, max(0, round(q * (len(values_sorted) - 1))))
    return float(values_sorted[index])


# --- where the CPU went --------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")
BROKER_COMMANDS = ("beam.smp", "redis-server")


@dataclass(frozen=True)
class ProcInfo:
    pgrp: int
    comm: str
    ticks: int  # utime + stime, all threads


@dataclass(frozen=True)
class CpuSnapshot:
    at: float  # time.monotonic()
    busy_ticks: int  # all CPUs, from /proc/stat
    procs: dict[int, ProcInfo]


def cpu_snapshot() -> CpuSnapshot:
    """Machine-wide busy time and every process's CPU time, from /proc (Linux)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                raw = handle.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        procs[int(entry.name)] = ProcInfo(pgrp=int(rest[2]), comm=comm, ticks=int(rest[11]) + int(rest[12]))
    return CpuSnapshot(time.monotonic(), busy, procs)


def bench_backend_pids(engine: Engine) -> set[int]:
    """PostgreSQL backends connected to the bench database (the worker's and ours)."""
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars())


def cpu_breakdown(start: CpuSnapshot, end: CpuSnapshot, groups: dict[str, set[int]]) -> tuple[float, dict[str, float]]:
    """Cores used per group of pids between two snapshots, plus 'broker', 'other' and 'idle'.

    A pid in no group (and not a broker) counts as 'other', as does the CPU of
    processes that started and ended between the snapshots (e.g. other users'
    test runs on this shared machine).
    """
    seconds = max(end.at - start.at, 1e-9)

    def used(pid: int) -> int:
        before = start.procs.get(pid)
        after = end.procs.get(pid)
        if after is None:
            return 0
        return after.ticks - (before.ticks if before else 0)

    cores: dict[str, float] = {}
    accounted = 0
    claimed: set[int] = set()
    for name, pids in groups.items():
        ticks = sum(used(pid) for pid in pids - claimed)
        claimed |= pids
        cores[name] = ticks / _CLK_TCK / seconds
        accounted += ticks
    broker = sum(used(pid) for pid, info in end.procs.items() if info.comm in BROKER_COMMANDS and pid not in claimed)
    cores["broker"] = broker / _CLK_TCK / seconds
    accounted += broker
    # Other databases' backends and the server's background processes (WAL
    # writer, checkpointer, autovacuum): partly ours, partly other users'.
    postgres = sum(used(pid) for pid, info in end.procs.items() if info.comm == "postgres" and pid not in claimed)
    cores["postgres other"] = postgres / _CLK_TCK / seconds
    accounted += postgres
    busy = end.busy_ticks - start.busy_ticks
    cores["other"] = max(busy - accounted, 0) / _CLK_TCK / seconds
    ncpu = os.cpu_count() or 1
    cores["idle"] = max(ncpu - busy / _CLK_TCK / seconds, 0.0)
    return busy / _CLK_TCK / seconds, cores


def process_group(snapshot: CpuSnapshot, pgid: int) -> set[int]:
    return {pid for pid, info in snapshot.procs.items() if info.pgrp == pgid}


def format_breakdown(cores: dict[str, float]) -> str:
    ncpu = os.cpu_count() or 1
    return f"CPU (cores of {ncpu}): " + ", ".join(f"{name} {value:.2f}" for name, value in cores.items())


def use_writer(writer: str) -> None:
    """INGEST_WRITER for this process's settings and for the workers started from now on."""
    from config import get_settings

    os.environ["INGEST_WRITER"] = writer
    get_settings.cache_clear()
