"""The producer's disk spool: broker down, producer killed, events replayed by the next process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from config import Settings
from producer import Tracker
from tests.servers import PrivateRedis
from tests.workers import REPO_ROOT, celery_worker, wait_for

EVENTS = 3_000

PRODUCER = textwrap.dedent(
    """
    import sys, time
    from config import Settings
    from producer import Tracker

    broker, queue, spool, tenant, events, marker = sys.argv[1:7]
    tracker = Tracker(Settings(celery_broker_url=broker, ingest_queue=queue, producer_spool_dir=spool,
                               producer_flush_interval_ms=50))
    for i in range(int(events)):
        tracker.track(tenant_id=tenant, feature_name="summarization", user_id=f"u{i}", input_tokens=i)
    while tracker.stats().spooled < int(events):
        time.sleep(0.05)
    open(marker, "w").close()
    time.sleep(600)  # killed by the test
    """
)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


def stored(engine: Engine, tenant: str) -> tuple[int, int]:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM analytics_events WHERE tenant_id = :t"),
            {"t": tenant},
        ).one()


def test_spool_is_replayed_after_producer_killed_while_broker_down(
    engine: Engine, redis_server: PrivateRedis, tmp_path: Path
) -> None:
    from config import Settings
    from producer import Tracker

    queue = f"spool-{uuid.uuid4().hex[:8]}"
    tenant = f"spool-{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool"
    marker = tmp_path / "spooled"

    # 1. Broker down: the producer spools everything, then dies without warning.
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, redis_server.url, queue, str(spool), tenant, str(EVENTS), str(marker)],
        cwd=REPO_ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(marker.exists, 30, "the producer never spooled all its events")
        os.kill(producer.pid, signal.SIGKILL)
    finally:
        producer.kill()
        producer.wait()
    segments = list(spool.rglob("*.jsonl"))
    assert segments, "nothing was written to the spool"
    assert stored(engine, tenant) == (0, 0)

    # 2. Broker back; the next process to start replays the dead one's spool.
    redis_server.start()
    with celery_worker(redis_server.url, queue, log_dir=tmp_path) as worker:
        successor = Tracker(
            Settings(celery_broker_url=redis_server.url, ingest_queue=queue, producer_spool_dir=str(spool))
        )
        successor.start()
        assert successor.flush(30), f"spool not replayed: {successor.stats()}"
        wait_for(lambda: stored(engine, tenant)[0] >= EVENTS, 30,
                 lambda: f"stored {stored(engine, tenant)} of {EVENTS}\n{worker.log_tail()}")  # fmt: skip
        successor.close()

    rows, distinct = stored(engine, tenant)
    assert (rows, distinct) == (EVENTS, EVENTS), f"lost={EVENTS - distinct} duplicated={rows - distinct}"
    assert not list(spool.rglob("*.jsonl")), "replayed segments must be deleted"


CLOSE_WAIT_S = 2.0


def test_a_second_close_returns_at_once_while_the_broker_is_down(redis_server: PrivateRedis) -> None:
    """atexit closes a tracker the application closed already: that must not wait the timeout again."""
    tracker = Tracker(Settings(celery_broker_url=redis_server.url, ingest_queue=f"test-close-{uuid.uuid4().hex[:8]}",
                               producer_spool_dir="", producer_flush_interval_ms=50))  # never started: publishes fail
    assert tracker.track(tenant_id="t", feature_name="summarization", user_id="u")
    started = time.monotonic()
    tracker.close(timeout=CLOSE_WAIT_S)
    first = time.monotonic() - started
    started = time.monotonic()
    tracker.close(timeout=CLOSE_WAIT_S)
    second = time.monotonic() - started
    assert first >= CLOSE_WAIT_S, "the first close waits for the flush"
    assert second < CLOSE_WAIT_S / 10, f"the second close waited {second:.2f}s"
    assert tracker.stats().buffered + tracker.stats().in_flight == 1  # still not published, and counted
