"""The producer's disk spool: broker down, producer killed, events replayed by the next process."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from config import Settings
from devtools.processes import REPO_ROOT, wait_for
from devtools.servers import PrivateRedis
from devtools.workers import celery_worker
from producer import Tracker

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
    tracker = Tracker(
        Settings(
            celery_broker_url=redis_server.url,
            ingest_queue=f"test-close-{uuid.uuid4().hex[:8]}",
            producer_spool_dir="",
            producer_flush_interval_ms=50,
        )
    )  # never started: publishes fail
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


# --- the spool is private and bounded (issue 12, finding 8) --------------------------------------

SPOOL_WAIT_S = 30.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _events(tracker: Tracker, tenant: str, count: int) -> None:
    for i in range(count):
        tracker.track(tenant_id=tenant, feature_name="summarization", user_id=f"u{i}", input_tokens=i)


def test_spool_is_owner_only_and_tightens_what_it_finds(redis_server: PrivateRedis, tmp_path: Path) -> None:
    """The broker is down (never started): events go to the spool, which only its owner may read."""
    queue = f"spool-perm-{uuid.uuid4().hex[:8]}"
    fresh = tmp_path / "fresh"
    old = os.umask(0o000)  # the widest: anything created with default permissions is world-readable
    try:
        tracker = Tracker(Settings(celery_broker_url=redis_server.url, ingest_queue=queue,
                                   producer_spool_dir=str(fresh), producer_flush_interval_ms=50))  # fmt: skip
        tracker.start()
        _events(tracker, "t-perm", 100)
        wait_for(lambda: tracker.stats().spooled == 100, SPOOL_WAIT_S, lambda: f"{tracker.stats()}")
        tracker.close(timeout=0)
    finally:
        os.umask(old)
    [queue_dir] = [p for p in fresh.iterdir()]
    assert _mode(fresh) == 0o700 and _mode(queue_dir) == 0o700, (oct(_mode(fresh)), oct(_mode(queue_dir)))
    segments = list(queue_dir.glob("*.jsonl"))
    assert segments and all(_mode(s) == 0o600 for s in segments), [oct(_mode(s)) for s in segments]

    # A spool left world-readable (by an older version, or a process that died): tightened
    # when a tracker takes it over, its segments replayed as usual.
    old_spool = tmp_path / "old"
    old_queue_dir = old_spool / queue
    old_queue_dir.mkdir(parents=True)
    old_queue_dir.chmod(0o777)
    orphan = old_queue_dir / segments[0].name
    orphan.write_bytes(segments[0].read_bytes())
    orphan.chmod(0o666)
    successor = Tracker(Settings(celery_broker_url=redis_server.url, ingest_queue=queue,
                                 producer_spool_dir=str(old_spool), producer_flush_interval_ms=50))  # fmt: skip
    successor.start()
    wait_for(lambda: successor.stats().spooled > 0, SPOOL_WAIT_S, lambda: f"{successor.stats()}")
    successor.close(timeout=0)
    assert _mode(old_queue_dir) == 0o700 and _mode(orphan) == 0o600, (oct(_mode(old_queue_dir)), oct(_mode(orphan)))


def test_spool_cap_keeps_events_in_memory_then_counts_drops_once_per_episode(
    redis_server: PrivateRedis, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"spool-cap-{uuid.uuid4().hex[:8]}"
    tenant = f"spool-cap-{uuid.uuid4().hex[:8]}"
    cap, buffer_max, tracked = 30_000, 1_500, 3_000
    spool = tmp_path / "spool"
    full_before = REGISTRY.get_sample_value("analytics_producer_spool_full_total") or 0.0
    settings = Settings(celery_broker_url=redis_server.url, ingest_queue=queue, producer_spool_dir=str(spool),
                        producer_spool_max_bytes=cap, producer_buffer_max_events=buffer_max,
                        producer_flush_interval_ms=50, producer_batch_size=100)  # fmt: skip
    tracker = Tracker(settings)
    tracker.start()
    with caplog.at_level(logging.WARNING, logger="producer.client"):
        for start in range(0, tracked, 100):  # a steady outage: many flush intervals hit the cap
            for i in range(start, start + 100):
                tracker.track(tenant_id=tenant, feature_name="summarization", user_id=f"u{i}", input_tokens=i)
            time.sleep(0.02)
        wait_for(lambda: tracker.stats().spool_full and tracker.stats().buffered > 0, SPOOL_WAIT_S,
                 lambda: f"{tracker.stats()}")  # fmt: skip
        time.sleep(0.5)  # more flush intervals at the cap: still one log line
        stats = tracker.stats()
        size = sum(p.stat().st_size for p in spool.rglob("*.jsonl"))
        assert 0 < size <= cap, size
        assert stats.spooled + stats.buffered + stats.in_flight + stats.dropped_buffer_full == tracked, stats
        assert stats.buffered <= buffer_max and stats.dropped_buffer_full > 0, stats
        assert stats.spool_full_episodes == 1, stats
        reached = [r for r in caplog.records if "reached PRODUCER_SPOOL_MAX_BYTES" in r.getMessage()]
        assert len(reached) == 1, [r.getMessage() for r in reached]
    assert REGISTRY.get_sample_value("analytics_producer_spool_full_total") == full_before + 1

    # The broker is back: the spool and the buffer are published, and nothing but the counted drops is missing.
    redis_server.start()
    with celery_worker(redis_server.url, queue, log_dir=tmp_path) as worker:
        assert tracker.flush(60), f"not published: {tracker.stats()}"
        expected = tracked - stats.dropped_buffer_full
        wait_for(lambda: stored(engine, tenant)[0] >= expected, 60,
                 lambda: f"stored {stored(engine, tenant)} of {expected}\n{worker.log_tail()}")  # fmt: skip
        tracker.close()
    assert stored(engine, tenant) == (expected, expected)
    assert not tracker.stats().spool_full
