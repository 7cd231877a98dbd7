"""End to end: producer -> broker -> real Celery worker -> PostgreSQL.

Every test runs once per broker (RabbitMQ and Redis), on a queue of its own,
with a worker subprocess started for that queue, and reconciles by counting
the rows of its own tenant in the database. Nothing is mocked.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from config import Settings
from devtools.events_db import blocked_inserts, count_events
from devtools.messages import batch_publisher, make_message, wire_rows
from devtools.processes import wait_for
from devtools.workers import PROCFILE_POOL, Worker, celery_worker, describe
from producer import Tracker
from schema import reasons

VISIBILITY_TIMEOUT_S = 5
WORKER_ENV = {"REDIS_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}

# Longest a test waits for the pipeline to reach a state it must reach.
SETTLE_TIMEOUT_S = 30
# Redis redelivers a message held by a killed worker once it is older than the
# visibility timeout, at a worker's next sweep (celeryconfig: at most 10 s apart).
REDELIVERY_TIMEOUT_S = 45


# --- fixtures ---------------------------------------------------------------


@pytest.fixture
def settings(broker_url: str, queue: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        celery_broker_url=broker_url,
        ingest_queue=queue,
        database_url=database_url,
        redis_visibility_timeout_s=VISIBILITY_TIMEOUT_S,
        producer_batch_size=50,
        producer_flush_interval_ms=50,
        producer_exit_flush_timeout_s=1,
        producer_spool_dir=str(tmp_path / "spool"),
    )


@pytest.fixture
def start_worker(broker_url: str, queue: str, database_url: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start a worker for this test's broker and queue; all are stopped at teardown."""
    with ExitStack() as stack:

        def start(concurrency: int = 1, pool: str = PROCFILE_POOL) -> Worker:
            return stack.enter_context(
                celery_worker(
                    broker_url,
                    queue,
                    log_dir=tmp_path,
                    concurrency=concurrency,
                    env=WORKER_ENV,
                    pool=pool,
                    stop_timeout=1.0,  # every test has checked its outcome before teardown
                )
            )

        yield start


# --- helpers ----------------------------------------------------------------


def processed(worker: Worker) -> int:
    """Events the worker accounted for in the batches it completed."""
    return sum(r["stored"] + r["duplicates"] + r["dead_lettered"] for r in worker.results())


def wait_for_events(engine: Engine, tenant: str, expected: int, timeout: float, worker: Worker) -> None:
    wait_for(
        lambda: count_events(engine, tenant)[0] >= expected,
        timeout,
        lambda: describe(worker, expected=expected, stored=count_events(engine, tenant)),
    )


def backends_waiting_on_lock(engine: Engine, worker: Worker) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :app AND wait_event_type = 'Lock'"),
                {"app": worker.app_name},
            ).scalars()
        )


def worker_backends(engine: Engine, worker: Worker) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :app"),
                {"app": worker.app_name},
            ).scalars()
        )


# --- a. two forked producer processes -----------------------------------------

PARENT_BEFORE_FORK = 120
PARENT_AFTER_FORK = 80
PER_CHILD = 300
CHILDREN = 2


def _child_track(tracker: Tracker, tenant: str, child: int) -> None:
    """Runs in a forked child: track, flush, exit 0 only if exactly our events went out."""
    for i in range(PER_CHILD):
        tracker.track(
            tenant_id=tenant,
            feature_name="chat",
            user_id=f"child{child}-{i}",
            input_tokens=i,
            output_tokens=1,
            latency_ms=3.7,
        )
    flushed = tracker.flush(timeout=30)
    stats = tracker.stats()
    tracker.close(timeout=1)
    if not flushed:
        sys.exit(2)
    # The parent's buffered events stay the parent's: the child publishes its own only.
    sys.exit(0 if stats.published == PER_CHILD and stats.dropped_buffer_full == 0 else 3)


def test_events_from_forked_producers_land_exactly_once(
    start_worker: Callable[..., Worker], settings: Settings, engine: Engine, tenant: str
) -> None:
    worker = start_worker()
    tracker = Tracker(settings)
    try:
        for i in range(PARENT_BEFORE_FORK):
            assert tracker.track(tenant_id=tenant, feature_name="chat", user_id=f"parent-{i}", input_tokens=i)
        # The publishing thread exists, and (most likely) events are still buffered, at the fork.
        assert tracker._thread is not None and tracker._thread.is_alive()

        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=_child_track, args=(tracker, tenant, c)) for c in range(CHILDREN)]
        for child in children:
            child.start()
        for i in range(PARENT_AFTER_FORK):
            assert tracker.track(tenant_id=tenant, feature_name="chat", user_id=f"parent-late-{i}")
        assert tracker.flush(timeout=30), "the parent's events were not published within 30s"
        for child in children:
            child.join(timeout=60)
        for child in children:
            assert child.exitcode == 0, (
                f"child {child.pid} exited with {child.exitcode}"
                " (None: still running, 2: flush timed out, 3: published a different number of events)"
            )
            child.close()
        parent_stats = tracker.stats()
    finally:
        tracker.close(timeout=5)

    sent = PARENT_BEFORE_FORK + PARENT_AFTER_FORK + CHILDREN * PER_CHILD
    assert parent_stats.published == PARENT_BEFORE_FORK + PARENT_AFTER_FORK
    assert parent_stats.dropped_buffer_full == 0
    # Wait until the worker has accounted for every published event, then compare.
    wait_for(
        lambda: processed(worker) >= sent,
        SETTLE_TIMEOUT_S,
        lambda: describe(worker, sent=sent, processed=processed(worker), stored=count_events(engine, tenant)),
    )
    total, distinct = count_events(engine, tenant)
    assert total == sent, describe(worker, sent=sent, stored=total)
    assert distinct == total
    assert processed(worker) == sent, "the worker saw more events than were sent"
    with engine.connect() as conn:
        users = conn.execute(
            text("SELECT count(DISTINCT user_id) FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()
    assert users == sent, "every tracked call is one row with its own user_id"


# --- b. the same batch delivered twice ---------------------------------------------


def test_batch_delivered_twice_is_stored_once(
    start_worker: Callable[..., Worker], settings: Settings, engine: Engine, tenant: str
) -> None:
    # Two pool processes: the two copies may be written concurrently.
    worker = start_worker(concurrency=2)
    size = 200
    message = make_message(wire_rows(tenant, size))
    with batch_publisher(settings) as publisher:
        publisher.publish(message, size)
        publisher.publish(message, size)

    results = wait_for(
        lambda: r if len(r := worker.results()) >= 2 else None,
        SETTLE_TIMEOUT_S,
        lambda: describe(worker, results=worker.results()),
    )
    assert len(results) == 2, results
    assert sorted((r["stored"], r["duplicates"], r["dead_lettered"]) for r in results) == [
        (0, size, 0),
        (size, 0, 0),
    ]
    assert count_events(engine, tenant) == (size, size)


# --- c. SIGKILL in the middle of a batch ---------------------------------------------------

KILL_BATCHES = 3
KILL_BATCH_SIZE = 150


def _publish_and_block(
    settings: Settings, engine: Engine, worker: Worker, tenant: str, release_on_exit: ExitStack
) -> tuple[Callable[[], None], int]:
    """Publish KILL_BATCHES batches while inserts are blocked; return once the
    worker is certainly in the middle of one (its INSERT waits on our lock)."""
    release = release_on_exit.enter_context(blocked_inserts(engine))
    with batch_publisher(settings) as publisher:
        for _ in range(KILL_BATCHES):
            publisher.publish(make_message(wire_rows(tenant, KILL_BATCH_SIZE)), KILL_BATCH_SIZE)
    wait_for(
        lambda: backends_waiting_on_lock(engine, worker),
        SETTLE_TIMEOUT_S,
        lambda: describe(worker, note="no worker backend waits on the table lock"),
    )
    assert count_events(engine, tenant) == (0, 0)
    return release, KILL_BATCHES * KILL_BATCH_SIZE


@pytest.mark.parametrize("pool_kind", [PROCFILE_POOL, "prefork"])
def test_worker_killed_mid_batch_loses_nothing(
    start_worker: Callable[..., Worker], settings: Settings, engine: Engine, tenant: str, pool_kind: str
) -> None:
    first = start_worker(pool=pool_kind)
    with ExitStack() as lock:
        release, sent = _publish_and_block(settings, engine, first, tenant, lock)
        pool = first.pool_pids()
        assert pool or pool_kind != "prefork", describe(first, note="no pool child found")
        first.kill_group(signal.SIGKILL)  # main process and pool children if any, mid-INSERT
        first.proc.wait(10)
        assert first.proc.returncode == -signal.SIGKILL
        wait_for(
            lambda: not any(os.path.exists(f"/proc/{pid}") and _not_zombie(pid) for pid in pool),
            10,
            f"pool children {pool} survived SIGKILL of the group",
        )
        release()

    # The killed worker's transaction never committed.
    wait_for(lambda: not worker_backends(engine, first), SETTLE_TIMEOUT_S, "killed worker's backend still there")
    assert count_events(engine, tenant) == (0, 0)

    second = start_worker(pool=pool_kind)
    wait_for_events(engine, tenant, sent, REDELIVERY_TIMEOUT_S, second)
    wait_for(
        lambda: processed(second) >= sent,
        SETTLE_TIMEOUT_S,
        lambda: describe(second, sent=sent, processed=processed(second)),
    )
    assert count_events(engine, tenant) == (sent, sent)
    results = second.results()
    assert len(results) == KILL_BATCHES, results
    assert sum(r["stored"] for r in results) == sent, results


def test_pool_child_killed_mid_batch_loses_nothing(
    start_worker: Callable[..., Worker], settings: Settings, engine: Engine, tenant: str
) -> None:
    worker = start_worker(pool="prefork")  # the pool Celery uses by default
    with ExitStack() as lock:
        release, sent = _publish_and_block(settings, engine, worker, tenant, lock)
        (child,) = worker.pool_pids()
        os.kill(child, signal.SIGKILL)  # the main process survives: reject_on_worker_lost requeues
        wait_for(
            lambda: "WorkerLostError" in worker.log() or "exited with 'signal 9" in worker.log(),
            SETTLE_TIMEOUT_S,
            lambda: describe(worker, note="the worker did not notice the lost pool child"),
        )
        release()

    wait_for_events(engine, tenant, sent, REDELIVERY_TIMEOUT_S, worker)
    wait_for(
        lambda: processed(worker) >= sent,
        SETTLE_TIMEOUT_S,
        lambda: describe(worker, sent=sent, processed=processed(worker)),
    )
    assert worker.alive()
    assert child not in worker.pool_pids()
    assert count_events(engine, tenant) == (sent, sent)
    results = worker.results()
    assert len(results) == KILL_BATCHES, results
    assert sum(r["stored"] for r in results) == sent, results


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- d. rows the worker refuses ---------------------------------------------------------------
#
# Through the queue every row has passed the worker's validation, which mirrors
# the table's constraints, and a month without a partition is created on demand:
# what PostgreSQL itself rejects is covered row by row in test_ingest_writer.py.
# Here: a row refused by validation (sent raw, never through track()), a row
# refused by the write path (a broken clock), and a message not in our format.


def test_rejected_rows_are_dead_lettered_while_batch_mates_land(
    start_worker: Callable[..., Worker], settings: Settings, engine: Engine, tenant: str
) -> None:
    worker = start_worker()
    good = wire_rows(tenant, 60)
    far_future = wire_rows(tenant, 1, timestamp=datetime(2200, 6, 15, 12, 0, tzinfo=UTC))[0]
    negative = wire_rows(tenant, 1, input_tokens=-4)[0]
    rows = [*good[:20], far_future, *good[20:40], negative, *good[40:]]
    not_ours = f"not a batch {tenant}"
    with batch_publisher(settings) as publisher:
        publisher.publish(make_message(rows), len(rows))
        publisher.publish(not_ours, 1)  # type: ignore[arg-type]

    results = wait_for(
        lambda: r if len(r := worker.results()) >= 2 else None,
        SETTLE_TIMEOUT_S,
        lambda: describe(worker, results=worker.results()),
    )
    assert sorted((r["stored"], r["duplicates"], r["dead_lettered"]) for r in results) == [
        (0, 0, 1),
        (len(good), 0, 2),
    ]
    assert count_events(engine, tenant) == (len(good), len(good))
    with engine.connect() as conn:
        stored_ids = set(
            conn.execute(
                text("SELECT replace(event_id::text, '-', '') FROM analytics_events WHERE tenant_id = :t"),
                {"t": tenant},
            ).scalars()
        )
        letters = conn.execute(
            text("SELECT payload, reason, attempts, source FROM dead_letters WHERE payload LIKE '%' || :t || '%'"),
            {"t": tenant},
        ).all()
    assert stored_ids == {row[0] for row in good}
    assert len(letters) == 3, letters

    def letter(marker: str) -> tuple[str, int, str]:
        (found,) = [(reason, attempts, source) for payload, reason, attempts, source in letters if marker in payload]
        return found

    reason, attempts, source = letter(far_future[0])
    assert "too far in the future" in reason, reason
    assert (attempts, source) == (1, "worker")
    reason, attempts, source = letter(negative[0])
    assert "input_tokens must not be negative" in reason, reason
    assert (attempts, source) == (1, "worker")
    reason, attempts, source = letter(not_ours)
    assert reasons.NOT_AN_INGEST_MESSAGE in reason, reason
    assert (attempts, source) == (1, "worker")
