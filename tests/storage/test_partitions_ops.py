"""Operating the partitions: the CLI, the beat tasks, the schedule, the retention guard."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery.beat import PersistentScheduler
from click.testing import CliRunner
from sqlalchemy import Engine, text

import celeryconfig
from cli.main import cli
from config import get_settings
from config.settings import Settings
from storage.partitions import (
    RETENTION_LOCK_KEY,
    Month,
    PartitionPolicy,
    ensure_partitions,
    existing_months,
    list_partitions,
    run_retention,
)
from tasks.names import PARTITIONS_APPLY_RETENTION, PARTITIONS_ENSURE_AHEAD

UTC = UTC
# Months no other test uses; the CLI works on the real "now", so these sit
# further back than any retention below reaches... except where a test wants it.
OLD_MONTHS = [Month(1975, 1), Month(1975, 2)]
CENTURIES_OF_MONTHS = 600  # keeps 50 years: reaches 1975 but no test's other months


@pytest.fixture
def old_months(engine: Engine) -> Iterator[list[Month]]:
    ensure_partitions(engine, OLD_MONTHS, PartitionPolicy())
    yield OLD_MONTHS
    with engine.begin() as conn:
        for month in OLD_MONTHS:
            conn.execute(text(f'DROP TABLE IF EXISTS "{month.table_name}"'))


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "command",
    [[], ["partitions"], ["partitions", "list"], ["partitions", "ensure"], ["partitions", "retention"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    assert "Usage:" in run_cli(*command, "--help")


def test_cli_lists_ensures_and_retires(engine: Engine, old_months: list[Month]) -> None:
    current = Month.of(datetime.now(UTC))
    listing = run_cli("partitions", "list")
    assert f"{current} " in listing and "1975-01 " in listing and "pkey" in listing

    output = run_cli("partitions", "ensure", "--ahead", "4")
    assert "already present" in output
    with engine.connect() as conn:
        assert {current.shift(i) for i in range(5)} <= existing_months(conn)

    keep = str(CENTURIES_OF_MONTHS)
    dry = run_cli("partitions", "retention", "--dry-run", "--keep-months", keep)
    assert "would detach analytics_events_1975_01" in dry
    assert "would drop analytics_events_1975_02" in dry
    with engine.connect() as conn:
        assert set(old_months) <= existing_months(conn)

    real = run_cli("partitions", "retention", "--keep-months", keep, "--drop-detached")
    assert "did drop analytics_events_1975_01" in real
    with engine.connect() as conn:
        names = {p.name for p in list_partitions(conn)}
        assert not names & {m.table_name for m in old_months}
        assert current in existing_months(conn)


def test_cli_retention_is_off_by_default() -> None:
    assert get_settings().partition_retention_months == 0
    assert "retention is off" in run_cli("partitions", "retention", "--dry-run")


def test_beat_tasks_run_against_the_database(engine: Engine) -> None:
    from tasks.partitions import apply_retention, ensure_ahead

    ensure_ahead.apply().get()
    with engine.connect() as conn:
        current = Month.of(datetime.now(UTC))
        wanted = {current.shift(i) for i in range(get_settings().partition_months_ahead + 1)}
        assert wanted <= existing_months(conn)
    assert ensure_ahead.apply().get() == []  # idempotent
    assert apply_retention.apply().get() == {"detached": [], "dropped": [], "skipped": None}


def test_a_second_retention_run_skips_while_one_holds_the_lock(engine: Engine, old_months: list[Month]) -> None:
    policy = PartitionPolicy(retention_months=CENTURIES_OF_MONTHS)
    with engine.connect() as holder:
        lock = text("SELECT pg_try_advisory_lock(:k)")
        assert holder.execute(lock, {"k": RETENTION_LOCK_KEY}).scalar()
        try:
            report = run_retention(engine, policy, datetime.now(UTC))
        finally:
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RETENTION_LOCK_KEY})
    assert report.skipped and not report.detached
    with engine.connect() as conn:
        assert set(old_months) <= existing_months(conn)


def test_beat_schedule_survives_a_restart(tmp_path: Path) -> None:
    from tasks.app import app

    schedule = celeryconfig.build(Settings())["beat_schedule"]
    assert {entry["task"] for entry in schedule.values()} >= {PARTITIONS_ENSURE_AHEAD, PARTITIONS_APPLY_RETENTION}
    assert all(entry["options"]["expires"] > 0 for entry in schedule.values())
    app.loader.import_default_modules()  # what a worker does at start
    assert {PARTITIONS_ENSURE_AHEAD, PARTITIONS_APPLY_RETENTION} <= set(app.tasks)

    filename = str(tmp_path / "celerybeat-schedule")
    ran_at = datetime.now(UTC) - celeryconfig.PARTITION_ENSURE_EVERY * 0.75
    first = PersistentScheduler(app=app, schedule_filename=filename, lazy=True)
    first.setup_schedule()
    first.schedule["ensure-partitions"].last_run_at = ran_at  # as if it ran 45 min ago
    first.sync()
    first.close()

    restarted = PersistentScheduler(app=app, schedule_filename=filename, lazy=True)
    restarted.setup_schedule()
    entry = restarted.schedule["ensure-partitions"]
    due, next_check_s = entry.is_due()
    restarted.close()
    # A fresh schedule would wait a full hour; the restarted one remembers the
    # last run: not due now (no second run), due in the remaining quarter hour.
    assert entry.last_run_at == ran_at
    assert not due
    assert next_check_s <= celeryconfig.PARTITION_ENSURE_EVERY.total_seconds() * 0.25 + 1


BEAT_START_TIMEOUT_S = 30


def test_beat_sends_ensure_ahead_as_soon_as_it_starts(tmp_path: Path) -> None:
    """Without this, a fresh beat would wait one PARTITION_ENSURE_EVERY for its first run."""
    import json
    import os
    import subprocess
    import sys
    import time

    import redis

    from devtools.processes import REPO_ROOT
    from devtools.servers import PrivateRedis

    broker = PrivateRedis(tmp_path / "redis")
    broker.start()
    env = dict(os.environ, CELERY_BROKER_URL=broker.url)
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.app", "beat", "--schedule", str(tmp_path / "schedule")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis.from_url(broker.url)
    try:
        deadline = time.monotonic() + BEAT_START_TIMEOUT_S
        sent: list[str] = []
        while not sent and time.monotonic() < deadline:
            sent = [json.loads(raw)["headers"]["task"] for raw in client.lrange(celeryconfig.MAINTENANCE_QUEUE, 0, -1)]
            time.sleep(0.2)
        assert sent == [PARTITIONS_ENSURE_AHEAD]
    finally:
        beat.terminate()
        beat.wait(10)
        client.close()
        broker.stop()
