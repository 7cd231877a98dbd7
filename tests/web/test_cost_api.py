"""Cost API: tenant-scoped, exact decimal strings, unpriced calls beside the cost, the admin ranking for admins only.

Events go through the ingest unit of work and a rollup run (which materializes
the rates of the pairs it sees); the expected amounts are genai-prices' own
price of each event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from genai_prices import Usage, calc_price
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from storage.api_keys import create_key
from storage.rollups import run_until_idle
from tests.rollup_checks import ensure_months_for, event, ingest

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
PRICED = ("gpt-4o-mini", "openai")
UNPRICED = "acme-internal-llm"


@pytest.fixture(scope="module")
def seeded(engine: Engine) -> dict[str, str]:
    """Two tenants; the first has three priced calls (one yesterday) and one unpriced call."""
    tenant, other = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    ensure_months_for(engine, NOW - timedelta(days=3), NOW + timedelta(days=1))
    rows = [
        event(NOW - timedelta(minutes=10), tenant=tenant, feature="chat", model=PRICED[0], provider=PRICED[1],
              input_tokens=1_000, output_tokens=200, cache_read_tokens=400),
        event(NOW - timedelta(minutes=5), tenant=tenant, feature="search", model=PRICED[0], provider=PRICED[1],
              input_tokens=3_000, output_tokens=10),
        event(NOW - timedelta(days=1), tenant=tenant, feature="chat", model=PRICED[0], provider=PRICED[1],
              input_tokens=500, output_tokens=500),
        event(NOW - timedelta(minutes=1), tenant=tenant, feature="chat", model=UNPRICED, input_tokens=70,
              output_tokens=30),
        event(NOW - timedelta(minutes=1), tenant=other, feature="chat", model=PRICED[0], provider=PRICED[1]),
    ]  # fmt: skip
    ingest(engine, rows)
    run_until_idle(engine)
    with Session(engine) as session, session.begin():
        _, admin = create_key(session, name="cost admin", tenant_id=None, admin=True)
        _, key = create_key(session, name="cost tenant", tenant_id=tenant, admin=False)
    return {"tenant": tenant, "other": other, "admin": admin, "key": key}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def price(moment: datetime, **usage: int) -> Decimal:
    return calc_price(Usage(**usage), PRICED[0], provider_id=PRICED[1], genai_request_timestamp=moment).total_price


def window(days: int = 2) -> dict[str, str]:
    return {"start": (NOW - timedelta(days=days)).isoformat(), "end": (NOW + timedelta(hours=1)).isoformat()}


def test_the_cost_per_feature_is_each_event_priced_and_unpriced_calls_stand_apart(
    client: TestClient, seeded: dict[str, str]
) -> None:
    answer = client.get(f"/api/tenants/{seeded['tenant']}/cost", params=window(), headers=auth(seeded["key"]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    chat = price(NOW - timedelta(minutes=10), input_tokens=1_000, output_tokens=200, cache_read_tokens=400)
    chat += price(NOW - timedelta(days=1), input_tokens=500, output_tokens=500)
    search = price(NOW - timedelta(minutes=5), input_tokens=3_000, output_tokens=10)
    rows = {row["feature"]: row for row in body["rows"]}
    assert Decimal(rows["chat"]["cost_usd"]) == chat and Decimal(rows["search"]["cost_usd"]) == search
    assert rows["chat"]["unpriced_calls"] == 1 and rows["chat"]["unpriced_models"] == [UNPRICED]
    assert rows["chat"]["unpriced_tokens"] == 100 and rows["chat"]["priced_calls"] == 2
    assert Decimal(body["total"]["cost_usd"]) == chat + search
    assert "analytics prices set" in body["unpriced_advice"]
    assert "E" not in body["total"]["cost_usd"]  # plain decimal text, never exponent notation


def test_a_group_of_unpriced_calls_only_has_no_cost_not_zero(client: TestClient, seeded: dict[str, str]) -> None:
    params = {**window(), "group_by": "model"}
    rows = client.get(f"/api/tenants/{seeded['tenant']}/cost", params=params, headers=auth(seeded["key"])).json()
    by_model = {row["model"]: row for row in rows["rows"]}
    assert by_model[UNPRICED]["cost_usd"] is None and by_model[UNPRICED]["cost_per_call_usd"] is None
    assert by_model[PRICED[0]]["unpriced_calls"] == 0


def test_compare_gives_the_previous_period_of_the_same_length(client: TestClient, seeded: dict[str, str]) -> None:
    params = {"start": (NOW - timedelta(hours=12)).isoformat(), "end": (NOW + timedelta(hours=1)).isoformat(),
              "compare": "true", "group_by": "total"}  # fmt: skip
    body = client.get(f"/api/tenants/{seeded['tenant']}/cost", params=params, headers=auth(seeded["key"])).json()
    previous = body["previous"]
    assert datetime.fromisoformat(previous["end"]) == datetime.fromisoformat(body["start"])
    assert datetime.fromisoformat(previous["start"]) == NOW - timedelta(hours=25)
    yesterday = price(NOW - timedelta(days=1), input_tokens=500, output_tokens=500)
    assert Decimal(previous["total"]["cost_usd"]) == yesterday
    assert previous["total"]["calls"] == 1 and body["total"]["calls"] == 3


def test_a_tenant_key_reads_only_its_own_cost_and_not_the_ranking(client: TestClient, seeded: dict[str, str]) -> None:
    headers = auth(seeded["key"])
    assert client.get(f"/api/tenants/{seeded['other']}/cost", params=window(), headers=headers).status_code == 403
    assert client.get("/api/admin/cost/tenants", params=window(), headers=headers).status_code == 403
    assert client.get(f"/api/tenants/{seeded['tenant']}/cost", params=window()).status_code == 401


def test_the_admin_ranking_orders_tenants_by_cost(client: TestClient, seeded: dict[str, str]) -> None:
    body = client.get("/api/admin/cost/tenants", params={**window(), "top": 1000}, headers=auth(seeded["admin"]))
    assert body.status_code == 200, body.text
    ranking = [row["tenant_id"] for row in body.json()["tenants"]]
    assert ranking.index(seeded["tenant"]) < ranking.index(seeded["other"])
    costs = [Decimal(row["cost_usd"]) for row in body.json()["tenants"] if row["cost_usd"] is not None]
    assert costs == sorted(costs, reverse=True)


@pytest.mark.parametrize(("name", "value"), [("group_by", "tenant"), ("top", "0"), ("model", "x" * 1000)])
def test_bad_parameters_are_refused_naming_them(client: TestClient, seeded: dict[str, str], name: str,
                                                value: str) -> None:  # fmt: skip
    answer = client.get(f"/api/tenants/{seeded['tenant']}/cost", params={name: value}, headers=auth(seeded["key"]))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][-1] == name
