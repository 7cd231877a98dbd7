"""Worker memory while it drains a backlog that piled up while no worker ran.

The producer publishes all the events first, with no consumer on the queue
(the broker keeps them: durable queue, persistent messages); then the worker
starts and drains it. Its peak RSS, summed over the process tree (the Celery
main process and its pool children, whatever they share), is sampled with
psutil from before it starts until the last row is committed. The events are
generated and tracked in chunks, so this process never holds the whole
backlog either.
"""

from __future__ import annotations

import random
import threading
import time
from array import array
from dataclasses import dataclass, field

import psutil
from sqlalchemy import Engine

from bench import harness
from bench.harness import BenchEnv, Reconciliation, RowMonitor, Worker
from bench.ingest import expected_sums, generate_events, track_events

CHUNK_EVENTS = 100_000  # generated and tracked at a time
RSS_SAMPLE_S = 0.1
PSS_EVERY = 10  # samples between two PSS readings (smaps: dearer than RSS)
PUBLISH_TIMEOUT_S = 600.0
DRAIN_STALL_TIMEOUT_S = 120.0
BYTES_PER_MB = 1024 * 1024


@dataclass
class BacklogResult:
    events: int
    writer: str
    publish_seconds: float | None = None
    drain_seconds: float | None = None  # worker ready .. last row committed
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None  # shared pages split between the processes that share them
    peak_processes: dict[str, float] = field(default_factory=dict)  # at the peak: name -> MB
    rss_series: list[tuple[float, float]] = field(default_factory=list)  # (seconds from worker start, MB)
    drain_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, rows)
    queue_depth_before: int | None = None
    reconciliation: Reconciliation | None = None
    refused: int = 0
    foreign_cores: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def drain_eps(self) -> float | None:
        return self.events / self.drain_seconds if self.drain_seconds else None


class RssSampler(threading.Thread):
    """Sums the RSS of a process and its descendants every ``RSS_SAMPLE_S``; keeps the peak."""

    def __init__(self, pid: int, t0: float) -> None:
        super().__init__(name="bench-rss", daemon=True)
        self._pid = pid
        self._t0 = t0
        self._stop_event = threading.Event()
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self.peak_processes: dict[str, float] = {}
        self.series: list[tuple[float, float]] = []

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        samples = 0
        while not self._stop_event.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            sizes: dict[str, float] = {}
            total = pss = 0
            with_pss = samples % PSS_EVERY == 0
            samples += 1
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    if with_pss:
                        pss += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # a pool child being replaced
                total += rss
                role = "main" if proc.pid == self._pid else f"child {proc.pid}"
                sizes[role] = rss / BYTES_PER_MB
            self.series.append((time.perf_counter() - self._t0, total / BYTES_PER_MB))
            self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, sizes
            self._stop_event.wait(RSS_SAMPLE_S)


def _publish_backlog(n: int, rng: random.Random) -> tuple[dict[str, int], int, float]:
    """Track ``n`` events and wait until all are published; returns (sums, refused, seconds)."""
    from config import get_settings
    from producer import Tracker

    tracker = Tracker(get_settings())
    sums = {"input_tokens": 0, "output_tokens": 0, "errors": 0}
    refused = 0
    tracked = [0]
    t0 = time.perf_counter()
    try:
        done = 0
        while done < n:
            chunk = generate_events(min(CHUNK_EVENTS, n - done), rng)
            for key, value in expected_sums(chunk).items():
                sums[key] += value
            refused += track_events(tracker, chunk, array("q", bytes(8 * len(chunk))), tracked).refused
            done += len(chunk)
            stats = tracker.stats()
            print(
                f"  [backlog] {time.perf_counter() - t0:6.1f}s  tracked {done:>9,}/{n:,}"
                f"  published {stats.published:,}",
                flush=True,
            )
        if not tracker.flush(timeout=PUBLISH_TIMEOUT_S):
            raise RuntimeError("the backlog was not published in time")
        refused = max(refused, tracker.stats().dropped_buffer_full)
    finally:
        tracker.close(timeout=5)
    return sums, refused, time.perf_counter() - t0


def run_backlog(
    env: BenchEnv, engine: Engine, n: int, concurrency: int, rng: random.Random, writer: str
) -> BacklogResult:
    print(
        f"\n== backlog: publish {n:,} events with no consumer, then start the worker"
        f" (-c {concurrency}, writer {writer!r}) and sample its RSS until all are stored",
        flush=True,
    )
    harness.use_writer(writer)
    harness.truncate_events(engine)
    result = BacklogResult(events=n, writer=writer)
    sums, result.refused, result.publish_seconds = _publish_backlog(n, rng)
    result.queue_depth_before = harness.queue_depth(env.broker_url, env.ingest_queue)
    print(
        f"  [backlog] published in {result.publish_seconds:.1f}s; queue depth {result.queue_depth_before}"
        " messages; starting the worker",
        flush=True,
    )
    worker = Worker(env, "tasks.app", env.ingest_queue, concurrency, "backlog")
    sampler: RssSampler | None = None
    monitor: RowMonitor | None = None
    t0 = time.perf_counter()
    try:
        cpu_start = harness.cpu_snapshot()
        # The sampler starts as soon as the process exists, before it is ready.
        starter = threading.Thread(target=worker.start, name="bench-worker-start", daemon=True)
        starter.start()
        while worker.proc is None and starter.is_alive():
            time.sleep(0.01)
        if worker.proc is not None:
            sampler = RssSampler(worker.proc.pid, t0)
            sampler.start()
        starter.join()
        if not worker.alive():
            raise RuntimeError(f"backlog worker did not start:\n{worker.log_tail()}")
        ready = time.perf_counter()
        monitor = RowMonitor(
            engine, "backlog", n, ready,
            status=lambda: (f"RSS {sampler.peak_bytes / BYTES_PER_MB:,.0f} MB peak" if sampler else "")
            + ("" if worker.alive() else "  WORKER DIED"),
            stall_timeout_s=DRAIN_STALL_TIMEOUT_S,
        )  # fmt: skip
        monitor.start()
        monitor.join()
        if monitor.error:
            raise monitor.error
        end = harness.cpu_snapshot()
        groups = {
            "worker": harness.process_group(end, worker.pgid or 0),
            "postgres (bench db)": harness.bench_backend_pids(engine),
        }
        _busy, cores = harness.cpu_breakdown(cpu_start, end, groups)
        result.foreign_cores = cores["other"] + cores["postgres other"]
        result.notes.append(harness.format_breakdown(cores))
        if monitor.done_at is not None:
            result.drain_seconds = monitor.done_at - ready
        else:
            result.notes.append(f"only {monitor.last_count:,} of {n:,} rows arrived")
        result.drain_samples = [(at - ready, count) for at, count in monitor.samples]
    finally:
        if monitor is not None:
            monitor.stop()
        if sampler is not None:
            sampler.stop()
            sampler.join(timeout=2)
        worker.stop()
    if sampler is not None and sampler.peak_bytes:
        result.peak_rss_mb = sampler.peak_bytes / BYTES_PER_MB
        result.peak_processes = sampler.peak_processes
        result.peak_pss_mb = sampler.peak_pss_bytes / BYTES_PER_MB
        result.rss_series = sampler.series
    result.reconciliation = harness.reconcile(engine, n, sums)
    peak = "n/a" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.1f} MB"
    by_process = ", ".join(f"{name} {mb:.0f}" for name, mb in result.peak_processes.items())
    result.notes.insert(
        0,
        f"drained {n:,} events in {result.drain_seconds or float('nan'):.1f}s"
        f" ({result.drain_eps or 0:,.0f} events/s); peak RSS {peak} ({by_process});"
        f" peak PSS {result.peak_pss_mb or 0:.1f} MB",
    )
    for note in result.notes:
        print(f"  [backlog] {note}", flush=True)
    return result
