"""Least privilege (issue 12, finding 9): each process connects as its own role and everything works.

A database of its own is migrated the old way (as the superuser, like a
deployment from before the roles), then ``migrate --create-roles`` with a
prefix unique to this run: the roles are created, the schema's objects handed
to the owner, and the worker and web roles granted what they need. Then, each
connected as its role (a real login; the server trusts local connections):
the worker stores a batch whose month has no partition (the owner's function
creates it), rolls it up and dead-letters a row; the web reads a summary
through queries/ and authenticates a key; the owner runs retention. What a
role must not do is refused by PostgreSQL. The roles and the database are
dropped at the end (roles are cluster-wide and other runs share the server).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from config import Settings, get_settings
from devtools.processes import REPO_ROOT
from queries import rollups as q
from schema.event import WIRE_FIELDS, parse_wire_row
from storage.api_keys import authenticate, create_key
from storage.db import make_engine
from storage.dead_letters import Rejected, record
from storage.events import store_batch
from storage.migrate import MigrateReport, migrate, migrate_with_roles
from storage.partitions import Month, PartitionPolicy, existing_months, run_retention
from storage.roles import OWNER, WEB, WORKER, RoleNames, drop_roles, schema_tables

INSUFFICIENT_PRIVILEGE = "42501"
WORKER_PASSWORD = "worker-" + uuid.uuid4().hex  # checked never to be printed
MONTHS_BACK = 6  # a month the migrations did not create, inside the accepted window


@dataclass
class RolesDb:
    url: str  # as the superuser
    names: RoleNames
    first: MigrateReport  # the --create-roles run over a database migrated before the roles

    def engine_as(self, role: str) -> Engine:
        """The project's own engine (storage.db), logged in as ``role``."""
        url = make_url(self.url).set(username=role).render_as_string(hide_password=False)
        return make_engine(Settings(database_url=url))


def _admin(database_url: str) -> Engine:
    return create_engine(make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def roles_db(database_url: str) -> Iterator[RolesDb]:
    url = make_url(database_url)
    name = f"{url.database}_roles"
    names = RoleNames.from_prefix(f"t{uuid.uuid4().hex[:10]}")
    target = url.set(database=name).render_as_string(hide_password=False)
    admin = _admin(database_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    try:
        migrate(target)  # as the superuser: the tables are postgres's, as before the roles
        first = migrate_with_roles(target, names, {OWNER: None, WORKER: WORKER_PASSWORD, WEB: None})
        yield RolesDb(target, names, first)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            drop_roles(conn, names)
        admin.dispose()


@pytest.fixture(scope="module")
def superuser(roles_db: RolesDb) -> Iterator[Engine]:
    engine = create_engine(roles_db.url)
    yield engine
    engine.dispose()


def _refused(engine: Engine, sql: str) -> str:
    """The SQLSTATE PostgreSQL answers ``sql`` with (it must refuse it)."""
    with pytest.raises(ProgrammingError) as refused, engine.begin() as conn:
        conn.execute(text(sql))
    return getattr(refused.value.orig, "pgcode", "")


def _wire(tenant: str, feature: str, moment: datetime, i: int) -> list[object]:
    return [uuid.uuid4().hex, tenant, feature, f"user-{i % 3}", "gpt-x", 10, 5, None, 100 + i, "success", None,
            int(moment.timestamp() * 1_000_000), 4, 2, 1, "openai", 40 if i % 2 else None]  # fmt: skip


def test_create_roles_hands_every_object_to_the_owner(roles_db: RolesDb, superuser: Engine) -> None:
    owner = roles_db.names.owner
    assert sorted(roles_db.first.created_roles) == sorted(roles_db.names.all())
    assert "analytics_events" in roles_db.first.transferred
    assert any(name.startswith("analytics_events_create_month") for name in roles_db.first.transferred)
    assert roles_db.first.ungranted_tables == [], "a table no role's grants name (storage.roles.TABLE_GRANTS)"
    with superuser.connect() as conn:
        not_owned = conn.execute(text(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            " AND relkind IN ('r', 'p', 'S') AND relowner <> (SELECT oid FROM pg_roles WHERE rolname = :o)"
        ), {"o": owner}).scalars().all()  # fmt: skip
        assert not_owned == []
        definer, function_owner = conn.execute(text(
            "SELECT prosecdef, proowner::regrole::text FROM pg_proc WHERE proname = 'analytics_events_create_month'"
        )).one()  # fmt: skip
        assert definer and function_owner == owner
        may_execute = {role: conn.execute(text(
            "SELECT has_function_privilege(:r, 'analytics_events_create_month(date)', 'EXECUTE')"
        ), {"r": role}).scalar_one() for role in roles_db.names.all()}  # fmt: skip
        assert may_execute == {owner: True, roles_db.names.worker: True, roles_db.names.web: False}
        assert schema_tables(conn), "the schema has tables"
        # The password went over as a SCRAM verifier and is stored as one.
        stored = conn.execute(text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"),
                              {"r": roles_db.names.worker}).scalar_one()  # fmt: skip
        assert stored.startswith("SCRAM-SHA-256$") and WORKER_PASSWORD not in stored


def test_worker_role_stores_a_new_month_rolls_up_and_dead_letters(roles_db: RolesDb, superuser: Engine) -> None:
    worker = roles_db.engine_as(roles_db.names.worker)
    tenant = f"roles-{uuid.uuid4().hex[:6]}"
    moment = datetime.now(UTC).replace(day=15, hour=12) - timedelta(days=31 * MONTHS_BACK)
    month = Month.of(moment)
    try:
        with worker.connect() as conn:
            assert month not in existing_months(conn)
        wires = [_wire(tenant, "summarization", moment, i) for i in range(20)]
        with Session(worker) as session, session.begin():
            result = store_batch(session, [(parse_wire_row(WIRE_FIELDS, w), w) for w in wires], get_settings())
            record(session, [Rejected(payload={"tenant_id": tenant, "feature_name": "x\x1b[2J"}, reason="test row")])
        assert result.stored == 20 and not result.rejected, result
        with superuser.connect() as conn:
            created_by = conn.execute(text("SELECT relowner::regrole::text FROM pg_class WHERE relname = :n"),
                                      {"n": month.table_name}).scalar_one()  # fmt: skip
            assert created_by == roles_db.names.owner  # the function made it, as the owner
            assert conn.execute(text("SELECT count(*) FROM dead_letters WHERE reason = 'test row'")).scalar_one() == 1
        from storage.rollups import run_until_idle

        assert run_until_idle(worker).events >= 20
        with superuser.connect() as conn:
            calls = conn.execute(text("SELECT sum(calls) FROM rollup_daily WHERE tenant_id = :t"), {"t": tenant})
            assert calls.scalar_one() == 20
        # What the worker may not do.
        assert _refused(worker, "DROP TABLE analytics_events") == INSUFFICIENT_PRIVILEGE
        assert _refused(worker, "ALTER TABLE analytics_events ADD COLUMN x int") == INSUFFICIENT_PRIVILEGE
        assert _refused(worker, f"ALTER TABLE analytics_events DETACH PARTITION {month.table_name}") \
            == INSUFFICIENT_PRIVILEGE  # fmt: skip
        assert _refused(worker, "SELECT key_hash FROM api_keys") == INSUFFICIENT_PRIVILEGE
        assert _refused(worker, "CREATE TABLE analytics_events_2001_01 (LIKE analytics_events)") \
            == INSUFFICIENT_PRIVILEGE  # fmt: skip
    finally:
        worker.dispose()


def test_web_role_reads_a_summary_and_authenticates_but_never_writes(roles_db: RolesDb, superuser: Engine) -> None:
    web = roles_db.engine_as(roles_db.names.web)
    tenant = f"web-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    wires = [_wire(tenant, "smart-search", now - timedelta(minutes=5), i) for i in range(7)]
    try:
        with Session(superuser) as session, session.begin():
            store_batch(session, [(parse_wire_row(WIRE_FIELDS, w), w) for w in wires], get_settings())  # pending
            _, key = create_key(session, name="roles test", tenant_id=tenant)
        with q.snapshot(web) as conn:
            summary = q.feature_summary(conn, tenant, now - timedelta(hours=1), now + timedelta(minutes=1))
        assert [(row.feature_name, row.calls) for row in summary] == [("smart-search", 7)]
        with Session(web) as session, session.begin():
            who = authenticate(session, key)
        assert who.tenant_id == tenant
        with superuser.connect() as conn:
            assert conn.execute(text("SELECT last_used_at FROM api_keys WHERE id = :i"),
                                {"i": who.key_id}).scalar_one() is not None  # fmt: skip
        with web.connect() as conn:  # what /metrics reads: dead letters counted, pending batches, partitions
            assert conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one() >= 0
            assert conn.execute(text("SELECT count(*), min(created_at) FROM rollup_pending_batches")).one()[0] >= 1
            assert Month.of(now) in existing_months(conn)
        # What the web may not do.
        assert _refused(web, "INSERT INTO analytics_events (event_id, timestamp, tenant_id, feature_name, user_id,"
                             " input_tokens, output_tokens, tokens_used, latency_ms, status, batch_id)"
                             " VALUES (gen_random_uuid(), now(), 't', 'f', 'u', 0, 0, 0, 0, 'success', 0)") \
            == INSUFFICIENT_PRIVILEGE  # fmt: skip
        assert _refused(web, "DELETE FROM rollup_daily") == INSUFFICIENT_PRIVILEGE
        assert _refused(web, "UPDATE api_keys SET revoked_at = NULL") == INSUFFICIENT_PRIVILEGE
        assert _refused(web, "SELECT payload FROM dead_letters") == INSUFFICIENT_PRIVILEGE
        assert _refused(web, "SELECT analytics_events_create_month(current_date)") == INSUFFICIENT_PRIVILEGE
    finally:
        web.dispose()


def test_retention_runs_as_the_owner_and_not_as_the_worker(roles_db: RolesDb) -> None:
    old = Month.of(datetime.now(UTC)).shift(-MONTHS_BACK - 2)
    worker = roles_db.engine_as(roles_db.names.worker)
    owner = roles_db.engine_as(roles_db.names.owner)
    policy = PartitionPolicy(retention_months=MONTHS_BACK + 1)
    try:
        from storage.partitions import ensure_partitions

        assert ensure_partitions(worker, [old], PartitionPolicy()) == [old]  # the worker may create ...
        with pytest.raises(ProgrammingError):
            run_retention(worker, policy, datetime.now(UTC))  # ... but not retire
        report = run_retention(owner, policy, datetime.now(UTC))
        assert old.table_name in report.detached and old.table_name in report.dropped
    finally:
        worker.dispose()
        owner.dispose()


def test_create_roles_again_through_the_cli_changes_nothing_and_prints_no_password(
    roles_db: RolesDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import cli

    monkeypatch.setenv("DATABASE_URL", roles_db.url)
    monkeypatch.setenv("DATABASE_WORKER_PASSWORD", WORKER_PASSWORD)
    get_settings.cache_clear()
    try:
        prefix = roles_db.names.owner.removesuffix("_owner")
        result = CliRunner().invoke(cli, ["migrate", "--create-roles", "--role-prefix", prefix])
        bad = CliRunner().invoke(cli, ["migrate", "--create-roles", "--role-prefix", "Robert'); DROP"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert f"role {roles_db.names.owner}: exists, password unchanged" in result.output
    assert f"role {roles_db.names.worker}: exists, password set" in result.output
    assert "handed" not in result.output  # everything was the owner's already
    assert WORKER_PASSWORD not in result.output and "warning" not in result.output
    assert bad.exit_code == 2 and "role prefix must match" in bad.output


def _procfile_command(name: str) -> str:
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name}: line in the Procfile")


@pytest.mark.parametrize(("process", "variable", "keeps_owner_url"), [
    ("web", "WEB_DATABASE_URL", False), ("worker", "WORKER_DATABASE_URL", False), ("rollups", "WORKER_DATABASE_URL", True),
])  # fmt: skip
def test_procfile_connects_each_process_as_its_role(
    process: str, variable: str, keeps_owner_url: bool, tmp_path: Path
) -> None:
    """The Procfile line, run as honcho runs it, with stand-ins for uvicorn/celery that print their environment."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for program in ("uvicorn", "celery", "python"):
        script = fake_bin / program
        script.write_text('#!/bin/sh\necho "url=$DATABASE_URL owner=${DATABASE_OWNER_URL-unset}"\n')
        script.chmod(0o755)
    base = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
            "DATABASE_URL": "postgresql://shared/db", "DATABASE_OWNER_URL": "postgresql://owner/db"}  # fmt: skip

    def run(env: dict[str, str]) -> str:
        done = subprocess.run(["sh", "-c", _procfile_command(process)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    owner = "postgresql://owner/db" if keeps_owner_url else "unset"
    assert run({**base, variable: "postgresql://role/db"}) == f"url=postgresql://role/db owner={owner}"
    assert run(base) == f"url=postgresql://shared/db owner={owner}"  # not set: DATABASE_URL as it was


RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
PROCESS_TIMEOUT_S = 60.0


def test_worker_and_web_processes_run_as_their_roles(roles_db: RolesDb, superuser: Engine, tmp_path: Path) -> None:
    """The real processes: a Celery ingest worker logged in as the worker role stores tracked events
    (creating their month), the web process logged in as the web role serves them and /metrics."""
    import httpx
    from kombu import Connection

    from devtools.processes import wait_for
    from devtools.web import uvicorn_server
    from devtools.workers import celery_worker, describe
    from producer import Tracker
    from tasks.broker import dead_queue_name

    names = roles_db.names
    worker_url = make_url(roles_db.url).set(username=names.worker).render_as_string(hide_password=False)
    web_url = make_url(roles_db.url).set(username=names.web).render_as_string(hide_password=False)
    queue = f"ingest-roles-{uuid.uuid4().hex[:8]}"
    tenant = f"proc-{uuid.uuid4().hex[:6]}"
    moment = datetime.now(UTC).replace(day=10, hour=8) - timedelta(days=31 * (MONTHS_BACK - 1))
    month = Month.of(moment)
    events = 40
    with Session(superuser) as session, session.begin():
        _, key = create_key(session, name="roles processes", tenant_id=tenant)
    try:
        with celery_worker(RABBITMQ, queue, log_dir=tmp_path, stop_timeout=2,
                           env={"DATABASE_URL": worker_url, "INGEST_QUEUE": queue}) as worker:  # fmt: skip
            tracker = Tracker(Settings(celery_broker_url=RABBITMQ, ingest_queue=queue, database_url=worker_url,
                                       producer_spool_dir=str(tmp_path / "spool")))  # fmt: skip
            try:
                for i in range(events):
                    assert tracker.track(tenant_id=tenant, feature_name="forecasting", user_id=f"u{i % 4}",
                                         latency_ms=50 + i, timestamp=moment + timedelta(seconds=i))  # fmt: skip
                assert tracker.flush(10)
            finally:
                tracker.close(5)

            def stored() -> int:
                with superuser.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"),
                                        {"t": tenant}).scalar_one()  # fmt: skip

            wait_for(lambda: stored() == events, PROCESS_TIMEOUT_S, lambda: describe(worker, stored=stored()))
        with superuser.connect() as conn:
            assert month in existing_months(conn)
        with uvicorn_server(tmp_path, {"DATABASE_URL": web_url}) as web:
            headers = {"Authorization": f"Bearer {key}"}
            summary = httpx.get(f"{web.url}/api/tenants/{tenant}/summary", headers=headers, timeout=10,
                                params={"start": month.start.isoformat(), "end": month.end.isoformat()})  # fmt: skip
            assert summary.status_code == 200, summary.text
            assert [(f["feature_name"], f["calls"]) for f in summary.json()["features"]] == [("forecasting", events)]
            metrics = httpx.get(f"{web.url}/metrics", timeout=10)
            assert metrics.status_code == 200
            assert "analytics_dead_letters " in metrics.text, web.log_tail()  # read as the web role
    finally:
        with Connection(RABBITMQ) as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.queue_delete(dead_queue_name(queue))  # the ingest queue's dead-letter queue
