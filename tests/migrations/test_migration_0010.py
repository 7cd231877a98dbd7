"""Migration 0010: the alert tables, their constraints, and the way back.

A scratch database is brought to 0010: a rule, its state, a history row and
its notification are stored; the constraints refuse an unknown kind, an
ingest-health rule without a metric, a second notification for the same state
change and a rule name used twice in a tenant (the same name in another tenant
is fine); deleting a rule deletes its state and keeps its history and
notification. Downgrading to 0009 drops the four tables.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from devtools.scratch_db import ScratchDatabase

TENANT = "mig10"
OTHER_TENANT = "mig10-other"
ALERT_TABLES = ("alert_rules", "alert_states", "alert_history", "notifications")
TABLES = "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(:names) ORDER BY table_name"
ADD_RULE = (
    "INSERT INTO alert_rules (tenant_id, name, kind, metric, warning_threshold, critical_threshold)"
    " VALUES (:tenant, :name, :kind, :metric, 10, 20) RETURNING id"
)
ADD_NOTIFICATION = (
    "INSERT INTO notifications (tenant_id, id, rule_id, history_id, kind, state, payload)"
    " VALUES (:tenant, :id, :rule, :history, 'state_change', 'warning', '{}')"
)


def add_rule(
    conn: Connection, name: str, kind: str = "budget_day", metric: str | None = None, tenant: str = TENANT
) -> int:
    return int(
        conn.execute(text(ADD_RULE), {"tenant": tenant, "name": name, "kind": kind, "metric": metric}).scalar_one()
    )


def refused(scratch: ScratchDatabase, statement: str, **params: object) -> None:
    with pytest.raises(IntegrityError), scratch.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_upgrade_stores_alerts_enforces_the_constraints_and_downgrade_drops_them(scratch: ScratchDatabase) -> None:
    scratch.upgrade("0010")
    names = {"names": list(ALERT_TABLES)}
    assert [row[0] for row in scratch.rows(TABLES, **names)] == sorted(ALERT_TABLES)
    with scratch.engine.begin() as conn:
        rule = add_rule(conn, "daily budget")
        add_rule(conn, "daily budget", tenant=OTHER_TENANT)  # names are unique per tenant only
        add_rule(conn, "lag", kind="ingest_health", metric="rollup_lag_s")
        conn.execute(
            text(
                "INSERT INTO alert_states (tenant_id, rule_id, state, value, since, evaluated_at)"
                " VALUES (:t, :r, 'warning', 12.5, now(), now())"
            ),
            {"t": TENANT, "r": rule},
        )
        history = conn.execute(
            text(
                "INSERT INTO alert_history (tenant_id, rule_id, rule_name, from_state, to_state, value, threshold, at)"
                " VALUES (:t, :r, 'daily budget', 'ok', 'warning', 12.5, 10, now()) RETURNING id"
            ),
            {"t": TENANT, "r": rule},
        ).scalar_one()
        conn.execute(text(ADD_NOTIFICATION), {"tenant": TENANT, "id": uuid.uuid4(), "rule": rule, "history": history})

    refused(scratch, ADD_RULE, tenant=TENANT, name="x", kind="budget_week", metric=None)
    refused(scratch, ADD_RULE, tenant=TENANT, name="y", kind="ingest_health", metric=None)
    refused(scratch, ADD_RULE, tenant=TENANT, name="z", kind="budget_day", metric="rollup_lag_s")
    refused(scratch, ADD_RULE, tenant=TENANT, name="daily budget", kind="budget_day", metric=None)
    refused(scratch, ADD_NOTIFICATION, tenant=TENANT, id=uuid.uuid4(), rule=rule, history=history)

    with scratch.engine.begin() as conn:
        conn.execute(text("DELETE FROM alert_rules WHERE tenant_id = :t AND id = :r"), {"t": TENANT, "r": rule})
    assert scratch.rows("SELECT count(*) FROM alert_states") == [(0,)]
    assert scratch.rows("SELECT rule_id FROM alert_history") == [(rule,)]
    assert scratch.rows("SELECT rule_id FROM notifications") == [(rule,)]

    scratch.downgrade("0009")
    assert scratch.rows(TABLES, **names) == []
