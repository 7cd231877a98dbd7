"""The hard budget for apps: ``GET /v1/budget`` from the evaluator's last measurement, and producer.BudgetCheck.

A budget rule of a priced tenant is measured by a real evaluation cycle after
tracked calls; the endpoint answers what is left (never $0 for a spend it has
not measured in the current period) and the producer's cached check refuses
once the budget is spent, asking a real web process at most once per TTL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from alerts.evaluate import evaluate_all
from config import Settings
from devtools.web import uvicorn_server
from producer.budget import BudgetCheck, BudgetUnavailable
from storage.api_keys import create_key
from tests.alerts.conftest import CALL_FEE, store_rule, track

pytestmark = pytest.mark.usefixtures("no_rules")
SETTINGS = Settings()
TTL_S = 3600.0  # long enough that a test's second ask is always answered from the cache


def _key(engine: Engine, tenant: str) -> str:
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name=f"budget {uuid.uuid4().hex[:6]}", tenant_id=tenant)
    return key


def _spend(engine: Engine, tenant: str, calls: int, now: datetime) -> None:
    track(engine, tenant, [now - timedelta(seconds=i + 1) for i in range(calls)])
    evaluate_all(engine, SETTINGS, now)


def test_the_budget_answers_what_is_left_of_each_rule(client: TestClient, engine: Engine, priced_tenant: str) -> None:
    now = datetime.now(UTC)
    monthly = store_rule(engine, priced_tenant, name="monthly", kind="budget_month",
                         warning_threshold=str(2 * CALL_FEE), critical_threshold=str(4 * CALL_FEE))  # fmt: skip
    store_rule(engine, priced_tenant, name="search today", kind="budget_day", feature="search",
               warning_threshold="1", critical_threshold="2")  # fmt: skip
    headers = {"Authorization": f"Bearer {_key(engine, priced_tenant)}"}

    before = client.get("/v1/budget", headers=headers).json()
    assert [b["spent_usd"] for b in before["budgets"]] == [None, None]  # not measured yet: unknown, not $0
    assert before["exhausted"] is False

    _spend(engine, priced_tenant, 3, now)
    body = client.get("/v1/budget", headers=headers).json()
    first = body["budgets"][0]
    assert first["rule_id"] == monthly.id
    assert Decimal(first["spent_usd"]) == 3 * CALL_FEE
    assert Decimal(first["remaining_usd"]) == CALL_FEE and first["exhausted"] is False
    only_chat = client.get("/v1/budget", params={"feature": "chat"}, headers=headers).json()
    assert [b["name"] for b in only_chat["budgets"]] == ["monthly"]  # the search budget does not cover chat

    _spend(engine, priced_tenant, 1, now + timedelta(seconds=1))
    assert client.get("/v1/budget", headers=headers).json()["exhausted"] is True


def test_admin_keys_and_missing_keys_are_refused(client: TestClient, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="budget admin", tenant_id=None, admin=True)
    assert client.get("/v1/budget", headers={"Authorization": f"Bearer {admin}"}).status_code == 403
    assert client.get("/v1/budget").status_code == 401


def test_the_producer_check_refuses_once_spent_and_caches(engine: Engine, priced_tenant: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    store_rule(engine, priced_tenant, name="monthly", kind="budget_month",
               warning_threshold=str(CALL_FEE), critical_threshold=str(2 * CALL_FEE))  # fmt: skip
    key = _key(engine, priced_tenant)
    with uvicorn_server(tmp_path) as server:
        check = BudgetCheck(server.url, key, ttl_s=TTL_S)
        assert check.allows() is True
        _spend(engine, priced_tenant, 2, now)
        assert check.allows() is True  # the cached answer, until its TTL
        fresh = BudgetCheck(server.url, key, ttl_s=TTL_S)
        assert fresh.allows() is False and fresh.allows("chat") is False
        assert Decimal(fresh.budgets().budgets[0]["spent_usd"]) == 2 * CALL_FEE
    closed = BudgetCheck(server.url, key, ttl_s=TTL_S)
    assert closed.allows() is True  # the service is gone: fail open by default
    assert BudgetCheck(server.url, key, fail_open=False).allows() is False
    with pytest.raises(BudgetUnavailable):
        closed.budgets()
