"""The operator CLI: --help everywhere, migrate and load (happy path and main error)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from cli.main import cli
from tests.workers import celery_worker, describe, wait_for

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
NOBODY_LISTENS = "postgresql+psycopg2://postgres@127.0.0.1:9/nowhere"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


@pytest.mark.parametrize("path", command_paths(cli), ids=lambda p: " ".join(p) or "cli")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_migrate_is_idempotent(database_url: str) -> None:
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "migrated to head" in result.output


def test_migrate_names_an_unreachable_database_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import get_settings

    monkeypatch.setenv("DATABASE_URL", NOBODY_LISTENS)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["migrate"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "cannot reach PostgreSQL at" in result.output and "set DATABASE_URL" in result.output
    assert "Traceback" not in result.output


def test_load_tracks_events_that_the_worker_stores(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings

    queue = f"cli-load-{uuid.uuid4().hex[:8]}"
    since = datetime.now(timezone.utc)
    monkeypatch.setenv("INGEST_QUEUE", queue)
    monkeypatch.setenv("CELERY_BROKER_URL", RABBITMQ)
    monkeypatch.setenv("PRODUCER_SPOOL_DIR", str(tmp_path / "spool"))
    get_settings.cache_clear()
    try:
        with celery_worker(RABBITMQ, queue, log_dir=tmp_path) as worker:
            result = CliRunner().invoke(cli, ["load", "--events", "2000", "--rate", "0", "--tenants", "3"])
            assert result.exit_code == 0, result.output
            assert "published 2,000 events" in result.output

            def stored() -> int:
                with engine.connect() as conn:
                    return conn.execute(
                        text("SELECT count(*) FROM analytics_events WHERE timestamp >= :s"
                             " AND tenant_id IN ('tenant-01', 'tenant-02', 'tenant-03')"),
                        {"s": since},
                    ).scalar_one()  # fmt: skip

            wait_for(lambda: stored() >= 2000, 30, lambda: describe(worker, stored=stored()))
            assert stored() == 2000
    finally:
        get_settings.cache_clear()


def test_load_with_the_broker_down_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import load as load_module
    from config import get_settings

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    monkeypatch.setenv("PRODUCER_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setattr(load_module, "FLUSH_TIMEOUT_S", 1.0)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["load", "--events", "50", "--rate", "0"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "is CELERY_BROKER_URL right and the broker up?" in result.output
    assert "Spooled events are replayed" in result.output
    assert list((tmp_path / "spool").rglob("*.jsonl")), "the events must be safe in the spool"


def test_api_keys_create_list_revoke(database_url: str) -> None:
    runner = CliRunner()
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    created = runner.invoke(cli, ["api-keys", "create", "--tenant", tenant, "--name", "ci"])
    assert created.exit_code == 0, created.output
    prefix = created.output.split()[3]
    assert created.output.splitlines()[1].startswith(f"ak_{prefix}_")
    listed = runner.invoke(cli, ["api-keys", "list", "--tenant", tenant])
    assert prefix in listed.output and "active" in listed.output
    assert runner.invoke(cli, ["api-keys", "revoke", prefix]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["api-keys", "list", "--tenant", tenant]).output
    again = runner.invoke(cli, ["api-keys", "revoke", prefix])
    assert again.exit_code == 1 and "no active key" in again.output
    neither = runner.invoke(cli, ["api-keys", "create"])
    assert neither.exit_code == 2 and "--tenant TENANT or --admin" in neither.output


def test_report_prints_the_tenants_tables(engine: Engine) -> None:
    from schema.event import WIRE_FIELDS, parse_wire_row
    from storage.events import store_batch
    from storage.rollups import run_until_idle
    from sqlalchemy.orm import Session

    tenant = f"report-{uuid.uuid4().hex[:6]}"
    now_us = int(datetime.now(timezone.utc).timestamp() * 1_000_000)
    wires = [[uuid.uuid4().hex, tenant, "forecasting", f"user-{i % 3}", None, 5, 5, None, 100, "success", None,
              now_us - i] for i in range(30)]  # fmt: skip
    with Session(engine) as session, session.begin():
        store_batch(session, [(parse_wire_row(WIRE_FIELDS, w), w) for w in wires])
    run_until_idle(engine)
    result = CliRunner().invoke(cli, ["report", "--tenant", tenant])
    assert result.exit_code == 0, result.output
    forecasting = next(line for line in result.output.splitlines() if line.startswith("forecasting"))
    assert forecasting.split()[1] == "30"
    assert "user-0" in result.output
    bad = CliRunner().invoke(cli, ["report", "--tenant", tenant, "--from", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output
