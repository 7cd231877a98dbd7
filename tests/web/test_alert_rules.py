"""Alert rules API: tenant keys manage their own tenant's rules, admin keys any; ingest_health rules are admin
only; bad input is a 422 naming the field; the history lists the state changes the evaluator recorded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from alerts.evaluate import record
from alerts.rules import get_rule
from config import Settings
from storage.api_keys import create_key

BUDGET = {"name": "monthly", "kind": "budget_month", "warning_threshold": "80", "critical_threshold": "100.50"}


@pytest.fixture(scope="module")
def tenants() -> tuple[str, str]:
    return f"ar-{uuid.uuid4().hex[:8]}", f"ar-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def keys(engine: Engine, tenants: tuple[str, str]) -> dict[str, str]:
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="alerts admin", tenant_id=None, admin=True)
        _, mine = create_key(session, name="alerts tenant", tenant_id=tenants[0], admin=False)
        _, other = create_key(session, name="alerts other", tenant_id=tenants[1], admin=False)
    return {"admin": admin, "mine": mine, "other": other}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_add_list_delete_and_history(
    client: TestClient, engine: Engine, keys: dict[str, str], tenants: tuple[str, str]
) -> None:
    tenant = tenants[0]
    base = f"/api/tenants/{tenant}/alert-rules"
    created = client.post(base, json=BUDGET, headers=auth(keys["mine"]))
    assert created.status_code == 201, created.text
    rule = created.json()
    assert (rule["tenant_id"], rule["kind"], rule["warning_threshold"], rule["critical_threshold"]) == (
        tenant, "budget_month", "80", "100.5"
    )  # fmt: skip
    assert rule["state"] is None and rule["created_by"].startswith("api key ")
    assert client.post(base, json=BUDGET, headers=auth(keys["mine"])).status_code == 409  # same name

    with engine.begin() as conn:  # what an evaluation cycle records
        stored = get_rule(conn, tenant, rule["id"])
        assert stored is not None
        record(conn, stored, Decimal("90.25"), Settings(), datetime.now(UTC))
    listed = client.get(base, headers=auth(keys["mine"])).json()
    assert [(r["id"], r["state"], r["value"]) for r in listed] == [(rule["id"], "warning", "90.25")]
    history = client.get(f"/api/tenants/{tenant}/alert-history", headers=auth(keys["admin"])).json()
    assert [(h["rule_id"], h["from_state"], h["to_state"], h["value"], h["threshold"]) for h in history] == [
        (rule["id"], "ok", "warning", "90.25", "80")
    ]

    assert client.delete(f"{base}/{rule['id']}", headers=auth(keys["other"])).status_code == 403
    assert client.delete(f"{base}/{rule['id']}", headers=auth(keys["mine"])).status_code == 204
    assert client.delete(f"{base}/{rule['id']}", headers=auth(keys["mine"])).status_code == 404
    assert client.get(base, headers=auth(keys["mine"])).json() == []
    kept = client.get(f"/api/tenants/{tenant}/alert-history", headers=auth(keys["mine"])).json()
    assert [h["rule_name"] for h in kept] == ["monthly"]  # the history outlives the rule
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alert_states WHERE tenant_id = :t"), {"t": tenant}).scalar() == 0


def test_other_tenants_and_missing_keys_are_refused(
    client: TestClient, keys: dict[str, str], tenants: tuple[str, str]
) -> None:
    base = f"/api/tenants/{tenants[0]}/alert-rules"
    assert client.get(base).status_code == 401
    assert client.get(base, headers=auth(keys["other"])).status_code == 403
    assert client.post(base, json={**BUDGET, "name": "x"}, headers=auth(keys["other"])).status_code == 403
    assert client.get(f"/api/tenants/{tenants[0]}/alert-history", headers=auth(keys["other"])).status_code == 403
    by_admin = client.post(base, json={**BUDGET, "name": "by admin"}, headers=auth(keys["admin"]))
    assert by_admin.status_code == 201 and by_admin.json()["tenant_id"] == tenants[0]


def test_ingest_health_rules_are_admin_only(client: TestClient, keys: dict[str, str], tenants: tuple[str, str]) -> None:
    base = f"/api/tenants/{tenants[1]}/alert-rules"
    rule = {"name": "lag", "kind": "ingest_health", "metric": "rollup_lag_s", "warning_threshold": 60,
            "critical_threshold": 300}  # fmt: skip
    refused = client.post(base, json=rule, headers=auth(keys["other"]))
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    created = client.post(base, json=rule, headers=auth(keys["admin"]))
    assert created.status_code == 201, created.text
    assert client.delete(f"{base}/{created.json()['id']}", headers=auth(keys["other"])).status_code == 403
    assert client.delete(f"{base}/{created.json()['id']}", headers=auth(keys["admin"])).status_code == 204


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "budget_week"}, "kind"),
        ({"warning_threshold": "-1"}, "warning_threshold"),
        ({"critical_threshold": "not a number"}, "critical_threshold"),
        ({"critical_threshold": "50"}, "critical_threshold"),  # below the warning threshold
        ({"window_minutes": 15}, "window_minutes"),  # budgets take no window
        ({"metric": "rollup_lag_s"}, "metric"),
        ({"name": ""}, "name"),
        ({"kind": "error_rate", "window_minutes": 15, "warning_threshold": "0.1", "critical_threshold": "2"},
         "critical_threshold"),  # a rate is at most 1
        ({"kind": "error_rate", "warning_threshold": "0.1", "critical_threshold": "0.5"}, "window_minutes"),
        ({"kind": "latency_p95", "window_minutes": 5, "model": "m"}, "model"),
        ({"kind": "cost_spike", "warning_threshold": "2", "critical_threshold": "5"}, "min_amount_usd"),
        ({"kind": "cost_spike", "warning_threshold": "2", "critical_threshold": "5", "min_amount_usd": "0"},
         "min_amount_usd"),
        ({"surprise": 1}, "surprise"),
    ],
)  # fmt: skip
def test_bad_rules_are_422_naming_the_field(
    client: TestClient, keys: dict[str, str], tenants: tuple[str, str], change: dict[str, object], field: str
) -> None:
    answer = client.post(
        f"/api/tenants/{tenants[0]}/alert-rules", json={**BUDGET, **change}, headers=auth(keys["mine"])
    )
    assert answer.status_code == 422, answer.text
    named = [(field in error["loc"]) or (f"'{field}'" in error["msg"]) for error in answer.json()["detail"]]
    assert any(named), answer.text  # the field is in the loc, or (an unknown kind) quoted in the message
