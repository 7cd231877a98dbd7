"""Alert rules and evaluation under least privilege: each process's role does its part and no more.

A database of its own is migrated with roles (a prefix unique to this run).
Connected as the web role, rules are added, listed and deleted and the history
read (alerts.rules), but the web role writes no state nor notification;
connected as the worker role, an evaluation cycle measures every kind of rule
and writes states, history and notifications, but cannot add or delete rules.
The database and roles are dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from alerts.evaluate import evaluate_all
from alerts.rules import add_rule, delete_rule, history, list_rules, parse_rule
from config import Settings
from storage.db import make_engine
from storage.migrate import migrate, migrate_with_roles
from storage.roles import OWNER, WEB, WORKER, RoleNames, drop_roles

INSUFFICIENT_PRIVILEGE = "42501"
ZERO_BUDGET = {"kind": "budget_day", "warning_threshold": "0", "critical_threshold": "0"}  # critical at once
RULES = [
    {"name": "budget", **ZERO_BUDGET},
    {"name": "month", "kind": "budget_month", "warning_threshold": "5", "critical_threshold": "9"},
    {"name": "spike", "kind": "cost_spike", "warning_threshold": "2", "critical_threshold": "5", "min_amount_usd": "1"},
    {"name": "errors", "kind": "error_rate", "window_minutes": 15, "warning_threshold": "0.1", "critical_threshold": "0.5"},
    {"name": "p95", "kind": "latency_p95", "window_minutes": 15, "warning_threshold": "1", "critical_threshold": "2"},
    *({"name": m, "kind": "ingest_health", "metric": m, "warning_threshold": "30", "critical_threshold": "60",
       **({"window_minutes": 5} if m == "dead_letters_added" else {})}
      for m in ("ingest_lag_s", "rollup_lag_s", "dead_letters_added")),
    {"name": "horizon", "kind": "ingest_health", "metric": "partition_horizon_days", "warning_threshold": "0",
     "critical_threshold": "0"},
]  # fmt: skip


@dataclass
class RolesDb:
    url: str
    names: RoleNames

    def engine_as(self, role: str) -> Engine:
        url = make_url(self.url).set(username=role).render_as_string(hide_password=False)
        return make_engine(Settings(database_url=url))


@pytest.fixture(scope="module")
def roles_db(database_url: str) -> Iterator[RolesDb]:
    url = make_url(database_url)
    name = f"{url.database}_alroles"
    names = RoleNames.from_prefix(f"a{uuid.uuid4().hex[:10]}")
    target = url.set(database=name).render_as_string(hide_password=False)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    try:
        migrate(target)
        migrate_with_roles(target, names, {OWNER: None, WORKER: None, WEB: None})
        yield RolesDb(target, names)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            drop_roles(conn, names)
        admin.dispose()


def refused(engine: Engine, sql: str) -> str:
    with pytest.raises(ProgrammingError) as error, engine.begin() as conn:
        conn.execute(text(sql))
    return getattr(error.value.orig, "pgcode", "")


def test_web_manages_rules_and_the_worker_evaluates_them(roles_db: RolesDb) -> None:
    web, worker = roles_db.engine_as(roles_db.names.web), roles_db.engine_as(roles_db.names.worker)
    tenant = f"roles-{uuid.uuid4().hex[:6]}"
    try:
        with web.begin() as conn:
            ids = {raw["name"]: add_rule(conn, tenant, parse_rule(raw), "tests").id for raw in RULES}
        report = evaluate_all(worker, Settings(), datetime.now(UTC))
        assert (report.rules, report.failed, report.skipped) == (len(RULES), 0, None)
        with web.connect() as conn:
            states = {entry.rule.name: entry.state for entry in list_rules(conn, tenant)}
            changes = [(row.rule_name, row.to_state) for row in history(conn, tenant, limit=10)]
        assert states["budget"] == "critical" and states["month"] == "ok"
        assert changes == [("budget", "critical")]
        assert refused(web, "DELETE FROM notifications") == INSUFFICIENT_PRIVILEGE
        assert refused(web, "UPDATE alert_states SET state = 'ok'") == INSUFFICIENT_PRIVILEGE
        assert refused(worker, "DELETE FROM alert_rules") == INSUFFICIENT_PRIVILEGE
        with worker.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM notifications WHERE tenant_id = :t"), {"t": tenant}).scalar()
                == 1
            )
        with web.begin() as conn:
            assert delete_rule(conn, tenant, ids["budget"])
        with web.connect() as conn:
            assert [row.rule_name for row in history(conn, tenant, limit=10)] == ["budget"]
    finally:
        for engine in (web, worker):
            engine.dispose()
